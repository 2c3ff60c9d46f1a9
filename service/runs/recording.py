"""What a finished job or benchmark leaves in the database (the dispatcher's domain work, without Ray or threads).

A job's result arrives as :class:`workers.progress.JobResult` (the engine's DiscoveryResult plus a sweep's
trials): every trial becomes a ``trials`` row, an open search's front and the discovered rule are stored
(once per content hash) with their provenance and family. A benchmark's result arrives as
:class:`discovery.benchmarks.suite.BenchmarkReport`: one ``benchmark_scores`` row per entry, the rule under test
being the entry of kind ``rule``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from discovery.benchmarks.suite import BenchmarkReport
from discovery.results import jsonable
from service.db.models import (
    ORIGIN_BASELINE,
    ORIGIN_DISCOVERED,
    QUEUED,
    SUCCEEDED,
    BenchmarkRun,
    BenchmarkScore,
    Job,
    Rule,
    Trial,
)
from service.db.repositories.store import add_event, link_job_rule, store_front, upsert_rule
from service.rulebook import record_from_result
from workers.progress import JobResult

#: the result keys of a single run kept as the metrics of its one trial row
SINGLE_RUN_METRICS = ("diverged_episodes", "skipped_steps", "wall_time_s", "device", "heldout_episodes")


def rule_name(job: Job) -> str:
    """The display name of a job's rule: job id, feedback, data set and depth."""
    net = (job.spec or {}).get("network") or {}
    task = (job.spec or {}).get("task") or {}
    widths = net.get("widths") or []
    return f"job {job.id} · {net.get('feedback', '?')} · {task.get('dataset', '?')} · depth {max(len(widths) - 1, 0)}"


def _store_trials(s: Session, job: Job, result: JobResult) -> None:
    """One ``trials`` row per sweep trial, or one for a single run (its seed, lr and l1)."""
    if result.trials:
        for i, trial in enumerate(result.trials):
            s.add(Trial(job_id=job.id, index=trial.index if trial.index is not None else i,
                        status=str(trial.status or SUCCEEDED)[:16], config=jsonable(trial.config),
                        heldout_accuracy=jsonable(trial.heldout_accuracy),
                        heldout_ci95=jsonable(trial.heldout_ci95), rule=jsonable(trial.rule),
                        metrics=jsonable(trial.metrics())))
        return
    meta = (job.spec or {}).get("meta") or {}
    dumped = result.model_dump()
    s.add(Trial(job_id=job.id, index=0, status=SUCCEEDED,
                config={"seed": meta.get("seed"), "lr": meta.get("lr"), "l1": meta.get("l1")},
                heldout_accuracy=jsonable(result.heldout_accuracy), heldout_ci95=jsonable(result.heldout_ci95),
                rule=jsonable(result.rule), metrics=jsonable({k: dumped.get(k) for k in SINGLE_RUN_METRICS})))


def _store_rule(s: Session, job: Job, result: JobResult) -> Rule:
    """Store (or find) the job's rule with its provenance and link it to the job."""
    spec = job.spec or {}
    seed = result.best_seed()
    seed = seed if seed is not None else (spec.get("meta") or {}).get("seed")
    row, created = upsert_rule(
        s, record_from_result(result.rule), name=rule_name(job), origin=ORIGIN_DISCOVERED, spec=spec, seed=seed,
        job_id=job.id,
        provenance={"job_id": job.id, "goal": job.goal, "best_trial": result.best_trial,
                    "heldout_accuracy": result.heldout_accuracy, "heldout_ci95": result.heldout_ci95,
                    "heldout_episodes": result.heldout_episodes, "wall_time_s": result.wall_time_s,
                    "device": result.device, "coefficients_raw": result.rule.get("coefficients_raw")},
    )
    link_job_rule(s, job, row)
    add_event(s, "rule", ("stored rule" if created else "the rule was already stored as rule") + f" {row.id}",
              job_id=job.id, data={"rule_id": row.id, "hash": row.hash})
    return row


def record_job_result(s: Session, job: Job, raw: dict[str, Any]) -> tuple[dict[str, Any], Rule | None]:
    """Store the trials, the front and the rule of a succeeded job; return the summary to keep as the job's
    ``result`` (everything but the trials) and the stored rule (None when the result has none)."""
    result = JobResult.model_validate(raw)
    _store_trials(s, job, result)
    spec = job.spec or {}
    if result.front:   # open discovery: every rule of the front is stored (the entries gain their rule_id)
        front = [p.model_dump() for p in result.front]
        ids = store_front(s, job, front, name=rule_name(job), spec=spec, seed=(spec.get("meta") or {}).get("seed"))
        add_event(s, "front", f"stored the front: rules {', '.join(map(str, ids))}", job_id=job.id,
                  data={"rule_ids": ids})
        raw = {**raw, "front": front}
    rule_row = _store_rule(s, job, result) if result.rule else None
    return jsonable({k: v for k, v in raw.items() if k != "trials"}), rule_row


def queue_benchmarks(s: Session, job: Job, rule: Rule, suites: list[str], *, tiny: bool) -> None:
    """Queue a benchmark of a newly discovered rule on each of ``suites`` (``settings.auto_benchmark_suites``)."""
    for suite in suites:
        run = BenchmarkRun(suite=suite, rule_id=rule.id, owner=job.owner, tiny=tiny, seed=0, status=QUEUED)
        s.add(run)
        s.flush()
        add_event(s, "queued", f"automatic benchmark of rule {rule.id} from job {job.id}", benchmark_id=run.id)


def record_benchmark_result(s: Session, run: BenchmarkRun, raw: dict[str, Any]) -> BenchmarkReport:
    """One ``benchmark_scores`` row per entry of the report; the entry of kind ``rule`` is the run's rule."""
    report = BenchmarkReport.model_validate(raw)
    rule = s.get(Rule, run.rule_id) if run.rule_id is not None else None
    rule_index = report.rule_entry() if rule is not None else None
    for i, entry in enumerate(report.entries):
        mine = rule is not None and i == rule_index
        s.add(BenchmarkScore(
            run_id=run.id, suite=run.suite, learner=str(entry.learner or f"#{i}")[:200],
            origin=rule.origin if mine else ORIGIN_BASELINE, rule_id=rule.id if mine else None,
            score=jsonable(entry.score), ci95=jsonable(entry.ci95_halfwidth),
            locality=str(entry.locality)[:32] if entry.locality else None,
            cost_per_sample_ms=jsonable(entry.cost_per_sample_ms), metrics=jsonable(entry.metrics)))
    return report
