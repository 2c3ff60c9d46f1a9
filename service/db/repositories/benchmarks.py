"""The benchmark aggregate: a run of one named suite for a rule (or the baselines alone) and its per-learner
scores (``benchmark_scores``; the entry of kind ``rule`` is the run's rule)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from discovery.benchmarks.report import BenchmarkReport
from discovery.results import jsonable
from service.db.models import ORIGIN_BASELINE, QUEUED, BenchmarkRun, BenchmarkScore, Rule
from service.db.repositories.events import add_event


def create_run(session: Session, *, suite: str, rule_id: int | None, expression: str | None, owner: str,
               tiny: bool, seed: int, retune: bool = False, reason: str | None = None) -> BenchmarkRun:
    """Insert a queued run and its first event; flushes so the id is known."""
    run = BenchmarkRun(suite=suite, rule_id=rule_id, expression=expression, owner=owner, tiny=tiny, seed=seed,
                       retune=retune, status=QUEUED, attempts=0)
    session.add(run)
    session.flush()
    what = f"rule {rule_id}" if rule_id else "the baselines"
    add_event(session, "queued", reason or f"benchmark of {what} on {suite}", benchmark_id=run.id)
    return run


def list_runs(session: Session, *, limit: int = 50, offset: int = 0) -> tuple[list[BenchmarkRun], int]:
    """Benchmark runs, newest first, and how many there are."""
    total = session.scalar(select(func.count()).select_from(BenchmarkRun)) or 0
    rows = session.scalars(select(BenchmarkRun).order_by(BenchmarkRun.id.desc()).limit(limit).offset(offset))
    return list(rows), int(total)


def add_scores(session: Session, run: BenchmarkRun, report: BenchmarkReport) -> None:
    """One ``benchmark_scores`` row per entry of the report; the entry of kind ``rule`` is the run's rule."""
    rule = session.get(Rule, run.rule_id) if run.rule_id is not None else None
    rule_index = report.rule_entry() if rule is not None else None
    for i, entry in enumerate(report.entries):
        mine = rule is not None and i == rule_index
        session.add(BenchmarkScore(
            run_id=run.id, suite=run.suite, learner=str(entry.learner or f"#{i}")[:200],
            origin=rule.origin if mine and rule is not None else ORIGIN_BASELINE,
            rule_id=rule.id if mine and rule is not None else None,
            score=jsonable(entry.score), ci95=jsonable(entry.ci95_halfwidth),
            locality=str(entry.locality)[:32] if entry.locality else None,
            cost_per_sample_ms=jsonable(entry.cost_per_sample_ms), metrics=jsonable(entry.metrics)))
