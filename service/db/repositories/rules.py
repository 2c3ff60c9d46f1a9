"""The rules aggregate: a rule is stored once per content hash (``rules.hash`` is unique), with its term index
(``rule_terms``); its discovery scores come from the front point (or the job) that stored it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.sql.base import ExecutableOption

from discovery.results import jsonable
from service.db.models import SUCCEEDED, FrontPointRow, Job, JobRule, Rule, RuleTerm
from service.rulebook import RuleRecord, code_version

#: What a feedback mode says about locality (the vocabulary of the suites' ``locality`` field).
FEEDBACK_LOCALITY: dict[str, str] = {
    "bp": "weight transport",
    "dfa": "global error",
    "fa": "global error",
    "sign": "weight transport",
}


@dataclass(frozen=True)
class DiscoveryScore:
    """A rule's held-out accuracy on the task of one succeeded job that stored it (suite ``discovery``): a front
    rule's own front point, else the job's result."""

    score: float | None
    ci95: float | None
    job_id: int
    locality: str | None
    created_at: dt.datetime | None
    suite: str = "discovery"
    benchmark_id: int | None = None
    cost_per_sample_ms: float | None = None


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
    """Store the rule unless its hash is already stored; returns (row, created). Two writers racing on one hash
    keep one row (the unique index and a savepoint)."""
    existing = find_rule_by_hash(session, record.hash)
    if existing is not None:
        return existing, False
    network = (spec or {}).get("network") or {}
    task = (spec or {}).get("task") or {}
    widths = network.get("widths")
    rule = Rule(
        name=name[:200], hash=record.hash, canonical=record.canonical, srepr=record.srepr,
        expression=record.expression, latex=record.latex, coefficients=jsonable(record.coefficients),
        terms=list(record.terms), family=record.family, origin=origin, spec=spec, seed=seed,
        code_version=code_version()[:64], job_id=job_id, feedback=network.get("feedback"),
        depth=len(widths) - 1 if widths else None, dataset=task.get("dataset"),
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


@dataclass(frozen=True)
class RuleFilters:
    """The filters of ``GET /api/rules`` (None: any)."""

    feedback: str | None = None
    depth: int | None = None
    dataset: str | None = None
    origin: str | None = None
    term: str | None = None


def _matching(stmt: Select[Any], filters: RuleFilters) -> Select[Any]:
    for column, value in ((Rule.feedback, filters.feedback), (Rule.depth, filters.depth),
                          (Rule.dataset, filters.dataset), (Rule.origin, filters.origin)):
        if value is not None:
            stmt = stmt.where(column == value)
    if filters.term is not None:
        stmt = stmt.where(Rule.id.in_(select(RuleTerm.rule_id).where(RuleTerm.term == filters.term)))
    return stmt


def _page(session: Session, stmt: Select[Any], filters: RuleFilters, limit: int, offset: int,
          after: int | None) -> tuple[list[Any], int, int | None]:
    """Keyset then offset page of ``stmt`` (newest first), the number of matches, the next page's cursor."""
    total = session.scalar(select(func.count()).select_from(_matching(select(Rule.id), filters).subquery())) or 0
    stmt = _matching(stmt, filters)
    if after is not None:
        stmt = stmt.where(Rule.id < after)
    rows = list(session.execute(stmt.order_by(Rule.id.desc()).limit(limit + 1).offset(offset)).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, int(total), (rows[-1][0].id if isinstance(rows[-1][0], Rule) else rows[-1][0]) if more else None


def list_rules(session: Session, *, feedback: str | None = None, depth: int | None = None,
               dataset: str | None = None, origin: str | None = None, term: str | None = None, limit: int = 50,
               offset: int = 0, after: int | None = None,
               options: Sequence[ExecutableOption] = ()) -> tuple[list[Rule], int, int | None]:
    """Stored rules matching the filters, newest first (ids below ``after`` when given: keyset pagination, then
    ``offset`` skipped); how many match in all; the cursor of the next page (None on the last page)."""
    filters = RuleFilters(feedback=feedback, depth=depth, dataset=dataset, origin=origin, term=term)
    rows, total, cursor = _page(session, select(Rule).options(*options), filters, limit, offset, after)
    return [r[0] for r in rows], total, cursor


def list_rule_json(session: Session, filters: RuleFilters, *, limit: int = 50, offset: int = 0,
                   after: int | None = None) -> tuple[list[str], int, int | None]:
    """Like :func:`list_rules`, but each rule's stored answer (``rules.read_json``, ``service.db.read_fields``):
    a list is read as texts, with no per-row work."""
    rows, total, cursor = _page(session, select(Rule.id, Rule.read_json), filters, limit, offset, after)
    missing = [rid for rid, text in rows if text is None]     # written before the read fields existed: build them
    built = {r.id: rule_answer(r) for r in session.scalars(select(Rule).where(Rule.id.in_(missing)))} if missing else {}
    return [text if text is not None else built[rid] for rid, text in rows], total, cursor


def stored_answer(session: Session, rule_id: int) -> str | None:
    """Rule ``rule_id``'s API answer as JSON (its stored ``read_json``, one column read; built from the row when
    it predates the read fields); None when there is no such rule."""
    row = session.execute(select(Rule.read_json).where(Rule.id == rule_id)).first()
    if row is None:
        return None
    return row[0] if row[0] is not None else rule_answer(session.get_one(Rule, rule_id))


def rule_answer(rule: Rule) -> str:
    """The rule's API answer as JSON: the stored one, else built from the row."""
    from service.api.schemas import RuleOut

    return rule.read_json or RuleOut.of(rule).model_dump_json()


def discovery_scores(session: Session, rule: Rule) -> list[DiscoveryScore]:
    """Held-out accuracy of ``rule`` on the task of each succeeded job that produced it: its own front point
    when the job stored it on a front, else the job's result."""
    stmt = (
        select(Job, FrontPointRow)
        .join(JobRule, JobRule.job_id == Job.id)
        .outerjoin(FrontPointRow, (FrontPointRow.job_id == Job.id) & (FrontPointRow.rule_id == rule.id))
        .where(JobRule.rule_id == rule.id, Job.status == SUCCEEDED)
        .order_by(Job.id, FrontPointRow.position)
    )
    out: list[DiscoveryScore] = []
    seen: set[int] = set()
    for job, point in session.execute(stmt):
        if job.id in seen or (job.spec or {}).get("kind") == "inference":   # its score is an explained variance
            continue
        seen.add(job.id)
        result = job.result or {}
        score = point.heldout_accuracy if point is not None else result.get("heldout_accuracy")
        ci95 = point.heldout_ci95 if point is not None else result.get("heldout_ci95")
        feedback = ((job.spec or {}).get("network") or {}).get("feedback")
        out.append(DiscoveryScore(score=score, ci95=ci95, job_id=job.id, created_at=job.finished_at,
                                  locality=FEEDBACK_LOCALITY.get(feedback or "")))
    return out
