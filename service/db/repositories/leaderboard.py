"""Leaderboard: rules and baselines ranked by score on one suite.

Named suites: the latest successful score of every stored rule and of every baseline learner in that suite,
ranked by score in the direction the suite declares (``Suite.higher_is_better``; unscored entries last). The pseudo-suite ``discovery`` ranks discovered
rules by their held-out accuracy on their own discovery task (``service.catalog.DISCOVERY_DESCRIPTION``).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, load_only

from service.catalog import DISCOVERY_DESCRIPTION, DISCOVERY_SUITE, registered_suites, suite_info
from service.db.models import (
    ORIGIN_BASELINE,
    ORIGIN_INFERRED,
    SUCCEEDED,
    BenchmarkRun,
    BenchmarkScore,
    FrontPointRow,
    Job,
    JobRule,
    Rule,
)
from service.db.repositories.rules import FEEDBACK_LOCALITY


def known_suites(session: Session) -> list[str]:
    """``discovery`` first, then every registered suite and every suite with stored scores, by name."""
    names = set(registered_suites())
    names.update(session.scalars(select(BenchmarkRun.suite).distinct()))
    return [DISCOVERY_SUITE, *sorted(n for n in names if n != DISCOVERY_SUITE)]


def default_suite(session: Session) -> str:
    """The suite of the most recent successful benchmark run, else ``discovery``."""
    latest = session.scalar(
        select(BenchmarkRun.suite)
        .where(BenchmarkRun.status == SUCCEEDED)
        .order_by(BenchmarkRun.finished_at.desc(), BenchmarkRun.id.desc())
        .limit(1)
    )
    return latest or DISCOVERY_SUITE


def _rank(entries: list[dict[str, Any]], higher_is_better: bool = True) -> list[dict[str, Any]]:
    """Sort by score in the suite's direction (unscored entries last, ties by name) and number the ranks."""
    sign = -1.0 if higher_is_better else 1.0
    entries.sort(key=lambda e: (e["score"] is None, sign * (e["score"] or 0.0), e["name"]))
    for i, entry in enumerate(entries, start=1):
        entry["rank"] = i
    return entries


def front_marks(session: Session, rule_ids: list[int]) -> dict[int, dict[str, Any]]:
    """rule id → its place on the Pareto front of the succeeded open-search jobs that stored it
    (``n_terms``, ``selected``: selected by any of them; the point of the job with the highest accuracy)."""
    marks: dict[int, dict[str, Any]] = {}
    stmt = (select(FrontPointRow).join(Job, Job.id == FrontPointRow.job_id)
            .where(Job.status == SUCCEEDED, FrontPointRow.rule_id.in_(rule_ids)))
    for point in session.scalars(stmt):
        rid, acc = point.rule_id, point.heldout_accuracy
        old = marks.get(rid)
        if old is None or (acc is not None and (old["heldout_accuracy"] is None or acc > old["heldout_accuracy"])):
            marks[rid] = {"n_terms": point.n_terms, "heldout_accuracy": acc, "heldout_ci95": point.heldout_ci95,
                          "selected": point.selected or bool(old and old["selected"])}
        elif point.selected:
            old["selected"] = True
    return marks


def _discovery_entries(session: Session) -> list[dict[str, Any]]:
    """Each discovered rule at its best job: a front rule scores its own front point, others the job's rule."""
    best: dict[int, dict[str, Any]] = {}
    stmt = (
        select(Rule, Job.id, Job.result["heldout_accuracy"].as_float(), Job.result["heldout_ci95"].as_float(),
               FrontPointRow.job_id, FrontPointRow.heldout_accuracy, FrontPointRow.heldout_ci95)
        .join(JobRule, JobRule.rule_id == Rule.id)
        .join(Job, Job.id == JobRule.job_id)
        .outerjoin(FrontPointRow, (FrontPointRow.job_id == Job.id) & (FrontPointRow.rule_id == Rule.id))
        .options(load_only(Rule.id, Rule.name, Rule.origin, Rule.feedback, Rule.family, Rule.latex,
                           Rule.expression))
        .where(Job.status == SUCCEEDED, Rule.origin != ORIGIN_INFERRED)   # an inferred rule's score is an EV
    )
    for rule, job_id, job_acc, job_ci, front_job, point_acc, point_ci in session.execute(stmt):
        on_front = front_job is not None
        score = point_acc if on_front else job_acc
        entry = {
            "name": rule.name,
            "origin": rule.origin,
            "rule_id": rule.id,
            "score": score,
            "ci": point_ci if on_front else job_ci,
            "locality": FEEDBACK_LOCALITY.get(rule.feedback or ""),
            "cost": None,
            "feedback": rule.feedback,
            "family": rule.family,
            "latex": rule.latex,
            "expression": rule.expression,
            "benchmark_id": None,
            "job_id": job_id,
        }
        old = best.get(rule.id)
        if old is None or (score is not None and (old["score"] is None or score > old["score"])):
            best[rule.id] = entry
    return list(best.values())


def _suite_entries(session: Session, suite: str) -> list[dict[str, Any]]:
    stmt = (
        select(BenchmarkScore, BenchmarkRun.id, Rule)
        .join(BenchmarkRun, BenchmarkRun.id == BenchmarkScore.run_id)
        .outerjoin(Rule, Rule.id == BenchmarkScore.rule_id)
        .options(load_only(Rule.id, Rule.name, Rule.origin, Rule.feedback, Rule.family, Rule.latex,
                           Rule.expression))
        .where(BenchmarkScore.suite == suite, BenchmarkRun.status == SUCCEEDED)
        .order_by(BenchmarkScore.id)
    )
    latest: dict[tuple[str, Any], dict[str, Any]] = {}
    for score, run_id, rule in session.execute(stmt):
        if score.origin == ORIGIN_BASELINE or score.rule_id is None:
            key: tuple[str, Any] = ("baseline", score.learner)
            entry = {
                "name": score.learner,
                "origin": ORIGIN_BASELINE,
                "rule_id": None,
                "feedback": None,
                "family": None,
                "latex": None,
                "expression": None,
            }
        else:
            key = ("rule", score.rule_id)
            if rule is None:
                continue
            entry = {
                "name": rule.name,
                "origin": rule.origin,
                "rule_id": rule.id,
                "feedback": rule.feedback,
                "family": rule.family,
                "latex": rule.latex,
                "expression": rule.expression,
            }
        entry.update(
            {
                "score": score.score,
                "ci": score.ci95,
                "locality": score.locality,
                "cost": score.cost_per_sample_ms,
                "benchmark_id": run_id,
                "job_id": None,
                "vs": (score.metrics or {}).get("vs") if key[0] == "rule" else None,  # paired differences
            }
        )
        latest[key] = entry  # ordered by id: the last one wins
    return list(latest.values())


def _mark_front(session: Session, entries: list[dict[str, Any]], only_front: bool) -> list[dict[str, Any]]:
    """Tag each rule entry with its front place (``front``: None off any front); ``only_front`` drops the rest."""
    marks = front_marks(session, [e["rule_id"] for e in entries if e.get("rule_id") is not None])
    for entry in entries:
        entry["front"] = marks.get(entry["rule_id"]) if entry.get("rule_id") is not None else None
    return [e for e in entries if e["front"] is not None] if only_front else entries


def leaderboard(session: Session, suite: str | None = None, *, only_front: bool = False,
                family: str | None = None) -> dict[str, Any]:
    """The ranked entries of ``suite`` (default: :func:`default_suite`); ``only_front``: rules on a stored
    Pareto front only; ``family``: rules of that family only (``feedforward``, ``recurrent``, ``unsupervised``;
    the suite's baselines stay as the reference)."""
    name = suite or default_suite(session)
    higher_is_better = True
    if name == DISCOVERY_SUITE:
        entries, description = _discovery_entries(session), DISCOVERY_DESCRIPTION
    else:
        entries = _suite_entries(session, name)
        registered = registered_suites()
        info = suite_info(name, registered[name]) if name in registered else {}
        description = str(
            info.get("protocol_description") or info.get("description") or f"benchmark suite {name}"
        )
        higher_is_better = bool(info.get("higher_is_better", True))
    if family is not None:
        entries = [e for e in entries if e.get("rule_id") is None or e.get("family") == family]
    return {
        "suite": name,
        "higher_is_better": higher_is_better,
        "suites": known_suites(session),
        "description": description,
        "only_front": only_front,
        "family": family,
        "entries": _rank(_mark_front(session, entries, only_front), higher_is_better),
    }
