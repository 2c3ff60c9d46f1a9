"""The jobs aggregate: a job row with its events, trials, the rules it produced and its Pareto front
(``front_points``, one row per front rule with its own held-out score)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from discovery.results import FrontPoint, jsonable
from discovery.spec import DiscoverySpec
from service.db.models import ACTIVE_STATUSES, QUEUED, BenchmarkRun, FrontPointRow, Job, JobRule, Rule
from service.db.repositories.events import add_event


def create_job(session: Session, spec: DiscoverySpec, owner: str, goal: str | None = None,
               understood: list[str] | None = None) -> Job:
    """Insert a queued job for ``spec`` and its first event; flushes so the id is known."""
    job = Job(status=QUEUED, spec=spec.model_dump(mode="json"), name=spec.name, goal=goal, owner=owner, attempts=0)
    session.add(job)
    session.flush()
    data = {"understood": understood} if understood else None
    add_event(session, "queued", "job created" + (" from a goal" if goal else ""), job_id=job.id, data=data)
    return job


def active_count(session: Session, model: type[Job | BenchmarkRun], owner: str) -> int:
    """How many jobs (or benchmark runs) of ``owner`` are queued or running."""
    stmt = select(func.count()).select_from(model).where(model.owner == owner, model.status.in_(ACTIVE_STATUSES))
    return int(session.scalar(stmt) or 0)


def list_jobs(session: Session, *, status: str | None = None, limit: int = 50,
              offset: int = 0) -> tuple[list[Job], int]:
    """Jobs, newest first (optionally of one status), and how many match in all."""
    stmt = select(Job)
    count = select(func.count()).select_from(Job)
    if status is not None:
        stmt, count = stmt.where(Job.status == status), count.where(Job.status == status)
    # the answer reads each job's events (how its goal was read), rules, front and trial count: one query each
    eager = (selectinload(Job.events), selectinload(Job.rule_links), selectinload(Job.trials),
             selectinload(Job.front).selectinload(FrontPointRow.rule))
    rows = session.scalars(stmt.order_by(Job.id.desc()).limit(limit).offset(offset).options(*eager)).all()
    return list(rows), int(session.scalar(count) or 0)


def link_job_rule(session: Session, job: Job, rule: Rule) -> None:
    """Record that ``job`` produced ``rule`` (idempotent)."""
    if rule.id not in job.rule_ids:
        job.rule_links.append(JobRule(job_id=job.id, rule_id=rule.id))


def add_front_point(session: Session, job: Job, point: FrontPoint, *, position: int, rule: Rule) -> FrontPointRow:
    """One row of the job's front: the point's support, complexity and held-out score, linked to its rule."""
    row = FrontPointRow(
        job_id=job.id, position=position, rule_id=rule.id, n_terms=point.n_terms, complexity=point.complexity,
        heldout_accuracy=jsonable(point.heldout_accuracy), heldout_ci95=jsonable(point.heldout_ci95),
        heldout_episodes=point.heldout_episodes, selected=point.selected, stage=point.stage[:64],
        terms=list(point.terms), theta=jsonable(point.theta))
    job.front.append(row)
    return row
