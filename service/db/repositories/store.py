"""Database operations shared by the routes, the dispatcher and the CLI (no HTTP, no Ray here).

The central one is :func:`upsert_rule`: a rule is stored once per content hash; storing it again returns the
existing row (``created=False``) — also when two writers race, thanks to the unique index and a savepoint.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from discovery.results import jsonable
from discovery.spec import DiscoverySpec
from service.db.models import (
    ACTIVE_STATUSES,
    CANCELLED,
    ORIGIN_DISCOVERED,
    QUEUED,
    BenchmarkRun,
    Job,
    JobEvent,
    JobRule,
    Rule,
    RuleTerm,
    utcnow,
)
from service.rulebook import RuleRecord, code_version, record_from_result


def add_event(
    session: Session,
    kind: str,
    message: str = "",
    *,
    job_id: int | None = None,
    benchmark_id: int | None = None,
    data: dict[str, Any] | None = None,
) -> JobEvent:
    """Append an event to a job's (or a benchmark run's) history."""
    event = JobEvent(
        job_id=job_id,
        benchmark_id=benchmark_id,
        kind=kind,
        message=message,
        data=jsonable(data) if data is not None else None,
    )
    session.add(event)
    return event


def create_job(
    session: Session,
    spec: DiscoverySpec,
    owner: str,
    goal: str | None = None,
    understood: list[str] | None = None,
) -> Job:
    """Insert a queued job for ``spec`` and its first event; flushes so the id is known."""
    job = Job(
        status=QUEUED, spec=spec.model_dump(mode="json"), name=spec.name, goal=goal, owner=owner, attempts=0
    )
    session.add(job)
    session.flush()
    data = {"understood": understood} if understood else None
    add_event(session, "queued", "job created" + (" from a goal" if goal else ""), job_id=job.id, data=data)
    return job


def active_count(session: Session, model: type[Job | BenchmarkRun], owner: str) -> int:
    """How many jobs (or benchmark runs) of ``owner`` are queued or running."""
    stmt = (
        select(func.count()).select_from(model).where(model.owner == owner, model.status.in_(ACTIVE_STATUSES))
    )
    return int(session.scalar(stmt) or 0)


def find_rule_by_hash(session: Session, digest: str) -> Rule | None:
    """The stored rule with this content hash, if any."""
    return session.scalar(select(Rule).where(Rule.hash == digest))


def upsert_rule(
    session: Session,
    record: RuleRecord,
    *,
    name: str,
    origin: str,
    spec: dict[str, Any] | None = None,
    seed: int | None = None,
    job_id: int | None = None,
    provenance: dict[str, Any] | None = None,
) -> tuple[Rule, bool]:
    """Store the rule unless its hash is already stored; returns (row, created)."""
    existing = find_rule_by_hash(session, record.hash)
    if existing is not None:
        return existing, False
    network = (spec or {}).get("network") or {}
    task = (spec or {}).get("task") or {}
    widths = network.get("widths")
    rule = Rule(
        name=name[:200],
        hash=record.hash,
        canonical=record.canonical,
        srepr=record.srepr,
        expression=record.expression,
        latex=record.latex,
        coefficients=jsonable(record.coefficients),
        terms=list(record.terms),
        family=record.family,
        origin=origin,
        spec=spec,
        seed=seed,
        code_version=code_version()[:64],
        job_id=job_id,
        feedback=network.get("feedback"),
        depth=len(widths) - 1 if widths else None,
        dataset=task.get("dataset"),
        provenance=jsonable(provenance) if provenance else None,
    )
    rule.term_links = [RuleTerm(term=t) for t in dict.fromkeys(record.terms)]
    try:
        with session.begin_nested():
            session.add(rule)
            session.flush()
    except IntegrityError:
        existing = find_rule_by_hash(session, record.hash)
        if existing is None:
            raise
        return existing, False
    return rule, True


def link_job_rule(session: Session, job: Job, rule: Rule) -> None:
    """Record that ``job`` produced ``rule`` (idempotent)."""
    if rule.id not in job.rule_ids:
        job.rule_links.append(JobRule(job_id=job.id, rule_id=rule.id))


def store_front(session: Session, job: Job, front: list[dict[str, Any]], *, name: str, spec: dict[str, Any] | None,
                seed: int | None) -> list[int]:
    """Store every rule of an open search's front (deduplicated by hash), link it to the job and write its id
    into the front entry (``rule_id``); returns the ids in front order."""
    ids = []
    for point in front:
        rule_dict = point.get("rule") or {}
        if not rule_dict:
            continue
        n = point.get("n_terms")
        row, _ = upsert_rule(
            session, record_from_result(rule_dict), name=f"{name} ({n} terms)", origin=ORIGIN_DISCOVERED,
            spec=spec, seed=seed, job_id=job.id,
            provenance={"job_id": job.id, "goal": job.goal, "front": {k: point.get(k) for k in (
                "n_terms", "complexity", "heldout_accuracy", "heldout_ci95", "heldout_episodes", "selected",
                "stage")}, "coefficients_raw": point.get("theta")})
        link_job_rule(session, job, row)
        point["rule_id"] = row.id
        ids.append(row.id)
    return ids


def cancel_run(session: Session, row: Job | BenchmarkRun) -> str:
    """Cancel a queued or running job or benchmark: 'cancelled' (now), 'already' (it was cancelled before) or
    'finished' (it ended otherwise: nothing to cancel, the API's 409)."""
    if row.status == CANCELLED:
        return "already"
    model = type(row)
    result = session.execute(
        update(model)
        .where(model.id == row.id, model.status.in_(ACTIVE_STATUSES))
        .values(status=CANCELLED, error=None, finished_at=utcnow())
    )
    if not result.rowcount:
        session.rollback()
        session.refresh(row)
        return "already" if row.status == CANCELLED else "finished"
    owner = {"job_id": row.id} if isinstance(row, Job) else {"benchmark_id": row.id}
    add_event(session, "cancelled", "cancelled through the API", **owner)
    session.commit()
    session.refresh(row)
    return "cancelled"
