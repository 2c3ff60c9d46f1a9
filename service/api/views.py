"""ORM rows → the API's JSON shapes (``service.api.schemas``), shared by the REST routes and the HTML pages."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from service.api.schemas import FrontEntry
from service.db.models import FINAL_STATUSES, SUCCEEDED, BenchmarkRun, Job, JobEvent, JobRule, Rule

#: What a feedback mode says about locality (the vocabulary of the suites' ``locality`` field).
FEEDBACK_LOCALITY: dict[str, str] = {
    "bp": "weight transport",
    "dfa": "global error",
    "fa": "global error",
    "sign": "weight transport",
}


#: event data keys that only the server log may show (rows written by earlier versions carried them)
PRIVATE_EVENT_KEYS = frozenset({"traceback", "detail"})


def event_out(event: JobEvent) -> dict[str, Any]:
    """An event as the API shows it: no traceback text, even in rows written by earlier versions."""
    data = event.data
    if isinstance(data, dict) and PRIVATE_EVENT_KEYS & set(data):
        data = {k: v for k, v in data.items() if k not in PRIVATE_EVENT_KEYS} or None
    return {
        "id": event.id,
        "created_at": event.created_at,
        "kind": event.kind,
        "message": event.message.split("\nTraceback (most recent call last)", 1)[0],
        "data": data,
    }


def front_entries(front: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The API's view of a stored front (``FrontEntry`` fields) from the job result's front points."""
    return [FrontEntry.model_validate({**p, "expression": (p.get("rule") or {}).get("expression")}).model_dump()
            for p in front]


def job_out(job: Job, *, events: bool = False) -> dict[str, Any]:
    """A job as ``GET /api/jobs/{id}`` shows it (``events=True`` adds the history)."""
    result = job.result or {}
    progress = dict(job.progress) if job.progress else None
    if progress is not None:
        progress.setdefault("theta", {})
        progress["theta"] = progress.get("theta") or {}
    out: dict[str, Any] = {
        "id": job.id,
        "status": job.status,
        "name": job.name,
        "goal": job.goal,
        "progress": progress,
        "error": job.error,
        "rule_ids": job.rule_ids,
        "spec": job.spec,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "started_at": job.started_at,
        "finished_at": job.finished_at,
        "attempts": job.attempts,
        "heldout_accuracy": result.get("heldout_accuracy"),
        "heldout_ci95": result.get("heldout_ci95"),
        "resumed_from_episode": result.get("resumed_from_episode"),
        "trials": len(job.trials),
        "front": front_entries(result.get("front") or []),
    }
    if events:
        out["events"] = [event_out(e) for e in job.events]
    return out


def discovery_scores(session: Session, rule: Rule) -> list[dict[str, Any]]:
    """Held-out accuracy of ``rule`` on the task of each succeeded job that produced it."""
    stmt = (
        select(Job)
        .join(JobRule, JobRule.job_id == Job.id)
        .where(JobRule.rule_id == rule.id, Job.status == SUCCEEDED)
        .order_by(Job.id)
    )
    out = []
    for job in session.scalars(stmt):
        result = job.result or {}
        feedback = ((job.spec or {}).get("network") or {}).get("feedback")
        out.append(
            {
                "suite": "discovery",
                "score": result.get("heldout_accuracy"),
                "ci95": result.get("heldout_ci95"),
                "job_id": job.id,
                "benchmark_id": None,
                "locality": FEEDBACK_LOCALITY.get(feedback or ""),
                "cost_per_sample_ms": None,
                "created_at": job.finished_at,
            }
        )
    return out


def rule_out(session: Session, rule: Rule, *, created: bool | None = None) -> dict[str, Any]:
    """A rule as ``GET /api/rules/{id}`` shows it, with its scores on every suite."""
    scores = discovery_scores(session, rule)
    for s in rule.scores:
        if s.run is not None and s.run.status == SUCCEEDED:
            scores.append(
                {
                    "suite": s.suite,
                    "score": s.score,
                    "ci95": s.ci95,
                    "benchmark_id": s.run_id,
                    "job_id": None,
                    "locality": s.locality,
                    "cost_per_sample_ms": s.cost_per_sample_ms,
                    "created_at": s.created_at,
                }
            )
    provenance = {
        **(rule.provenance or {}),
        "job_id": rule.job_id,
        "seed": rule.seed,
        "code_version": rule.code_version,
        "created_at": rule.created_at.isoformat(),
        "canonical": rule.canonical,
        "srepr": rule.srepr,
    }
    out: dict[str, Any] = {
        "id": rule.id,
        "name": rule.name,
        "expression": rule.expression,
        "latex": rule.latex,
        "coefficients": rule.coefficients,
        "terms": rule.terms,
        "origin": rule.origin,
        "hash": rule.hash,
        "spec": rule.spec,
        "provenance": provenance,
        "scores": scores,
        "feedback": rule.feedback,
        "depth": rule.depth,
        "dataset": rule.dataset,
        "family": rule.family,
        "created_at": rule.created_at,
    }
    if created is not None:
        out["created"] = created
    return out


def benchmark_out(run: BenchmarkRun) -> dict[str, Any]:
    """A benchmark run with its per-learner scores and the suite's diagnostics."""
    diagnostics = None
    if run.result:
        diagnostics = {k: v for k, v in run.result.items() if k != "entries"}
    elif run.progress and run.status not in FINAL_STATUSES:
        diagnostics = {"progress": run.progress}
    return {
        "id": run.id,
        "status": run.status,
        "suite": run.suite,
        "suite_version": run.suite_version,
        "rule_id": run.rule_id,
        "expression": run.expression,
        "tiny": run.tiny,
        "seed": run.seed,
        "error": run.error,
        "scores": [
            {
                "learner": s.learner,
                "origin": s.origin,
                "rule_id": s.rule_id,
                "score": s.score,
                "ci95": s.ci95,
                "locality": s.locality,
                "cost_per_sample_ms": s.cost_per_sample_ms,
                "metrics": s.metrics,
            }
            for s in run.scores
        ],
        "diagnostics": diagnostics,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        **benchmark_extras(run),
    }


def benchmark_extras(run: BenchmarkRun) -> dict[str, Any]:
    """``retune``, ``progress`` (a :class:`~discovery.benchmarks.progress.BenchmarkProgress`, None when the
    workers sent another shape), ``baselines`` ("cached" | "tuned") and the rule's paired differences ``vs``."""
    from pydantic import ValidationError

    from discovery.benchmarks.progress import BenchmarkProgress

    progress = None
    if run.progress:
        try:
            progress = BenchmarkProgress.model_validate(run.progress)
        except ValidationError:
            progress = None
    result = run.result or {}
    return {"retune": bool(run.retune), "progress": progress, "baselines": result.get("baselines"),
            "vs": result.get("vs") or None}


def vs_delta(delta: float | None, metric: str | None = None) -> str:
    """A paired difference in words: accuracy in percentage points ("+1.2 points"), other metrics signed in
    their own unit ("−0.031")."""
    if delta is None:
        return "—"
    if metric is None or "accuracy" in metric:
        return f"{delta * 100:+.1f} points"
    return f"{delta:+.3g}"
