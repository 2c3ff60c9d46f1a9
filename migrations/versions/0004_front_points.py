"""The Pareto front of an open search in its own table, ``front_points``, one row per front rule.

Before, a job's front lived as a JSON list in ``jobs.result["front"]`` and a copy of each point in the rule's
``provenance["front"]``, and the rule's discovery score was the job's. The upgrade moves every stored front into
rows (each front rule keeps its own held-out accuracy) and drops the JSON copies; the downgrade writes them back.

Revision 0004_front_points (after 0003_baseline_cache), 2026-12-06.
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0004_front_points", "0003_baseline_cache"

#: the fields of a front point kept in a rule's provenance before this revision
PROVENANCE_KEYS = ("n_terms", "complexity", "heldout_accuracy", "heldout_ci95", "heldout_episodes", "selected", "stage")

_json = sa.JSON(none_as_null=True)
jobs = sa.table("jobs", sa.column("id", sa.Integer), sa.column("result", _json))
rules = sa.table("rules", sa.column("id", sa.Integer), sa.column("provenance", _json))
front_points = sa.table(
    "front_points", *(sa.column(n, t) for n, t in (
        ("job_id", sa.Integer), ("position", sa.Integer), ("rule_id", sa.Integer), ("n_terms", sa.Integer),
        ("complexity", sa.Integer), ("heldout_accuracy", sa.Float), ("heldout_ci95", sa.Float),
        ("heldout_episodes", sa.Integer), ("selected", sa.Boolean), ("stage", sa.String), ("terms", _json),
        ("theta", _json))),
)


def _loaded(value: Any) -> Any:
    """A JSON column's value as Python data (some drivers hand back the text)."""
    return json.loads(value) if isinstance(value, str) else value


def upgrade() -> None:
    op.create_table(
        "front_points",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("job_id", sa.Integer,
                  sa.ForeignKey("jobs.id", ondelete="CASCADE", name="fk_front_points_job_id_jobs"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("rule_id", sa.Integer,
                  sa.ForeignKey("rules.id", ondelete="SET NULL", name="fk_front_points_rule_id_rules"), nullable=True),
        sa.Column("n_terms", sa.Integer, nullable=False),
        sa.Column("complexity", sa.Integer, nullable=False),
        sa.Column("heldout_accuracy", sa.Float, nullable=True),
        sa.Column("heldout_ci95", sa.Float, nullable=True),
        sa.Column("heldout_episodes", sa.Integer, nullable=False),
        sa.Column("selected", sa.Boolean, nullable=False),
        sa.Column("stage", sa.String(64), nullable=False),
        sa.Column("terms", _json, nullable=False),
        sa.Column("theta", _json, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_front_points"),
        sa.UniqueConstraint("job_id", "position", name="uq_front_points_job_position"),
    )
    op.create_index("ix_front_points_job_id", "front_points", ["job_id"])
    op.create_index("ix_front_points_rule_id", "front_points", ["rule_id"])
    conn = op.get_bind()
    known_rules = set(conn.execute(sa.select(rules.c.id)).scalars())
    for job_id, raw in conn.execute(sa.select(jobs.c.id, jobs.c.result)).all():
        result = _loaded(raw)
        if not isinstance(result, dict) or "front" not in result:
            continue
        for position, point in enumerate(result.get("front") or []):
            rule_id = point.get("rule_id")
            conn.execute(front_points.insert().values(
                job_id=job_id, position=position, rule_id=rule_id if rule_id in known_rules else None,
                n_terms=int(point.get("n_terms") or len(point.get("terms") or [])),
                complexity=int(point.get("complexity") or 0), heldout_accuracy=point.get("heldout_accuracy"),
                heldout_ci95=point.get("heldout_ci95"), heldout_episodes=int(point.get("heldout_episodes") or 0),
                selected=bool(point.get("selected")), stage=str(point.get("stage") or "")[:64],
                terms=list(point.get("terms") or []), theta=dict(point.get("theta") or {})))
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(
            result={k: v for k, v in result.items() if k != "front"}))
    for rule_id, raw in conn.execute(sa.select(rules.c.id, rules.c.provenance)).all():
        provenance = _loaded(raw)
        if isinstance(provenance, dict) and "front" in provenance:
            rest = {k: v for k, v in provenance.items() if k != "front"}
            conn.execute(rules.update().where(rules.c.id == rule_id).values(provenance=rest or None))


def downgrade() -> None:
    conn = op.get_bind()
    rows = conn.execute(sa.select(front_points).order_by(front_points.c.job_id, front_points.c.position)).all()
    by_job: dict[int, list[dict[str, Any]]] = {}
    for row in rows:
        point = dict(row._mapping)
        by_job.setdefault(point.pop("job_id"), []).append(point)
    for job_id, points in by_job.items():
        raw = conn.execute(sa.select(jobs.c.result).where(jobs.c.id == job_id)).scalar()
        result = _loaded(raw) or {}
        front = [{k: v for k, v in p.items() if k != "position"} for p in points]
        conn.execute(jobs.update().where(jobs.c.id == job_id).values(result={**result, "front": front}))
        for point in front:
            if point.get("rule_id") is None:
                continue
            raw = conn.execute(sa.select(rules.c.provenance).where(rules.c.id == point["rule_id"])).scalar()
            provenance = _loaded(raw) or {}
            if "front" not in provenance:  # the first job that stored the rule wrote its point, as before
                conn.execute(rules.update().where(rules.c.id == point["rule_id"]).values(
                    provenance={**provenance, "front": {k: point.get(k) for k in PROVENANCE_KEYS}}))
    op.drop_index("ix_front_points_rule_id", table_name="front_points")
    op.drop_index("ix_front_points_job_id", table_name="front_points")
    op.drop_table("front_points")
