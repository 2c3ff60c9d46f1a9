"""Initial schema: jobs, job events, trials, rules (+ terms, job links), benchmark runs and scores.

Revision ID: 0001_initial
Revises:
Create Date: 2025-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _json(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.JSON(none_as_null=True), nullable=nullable)


def _fk(column: str, table: str, target: str, ondelete: str, nullable: bool) -> sa.Column:
    return sa.Column(
        column,
        sa.Integer,
        sa.ForeignKey(f"{target}.id", ondelete=ondelete, name=f"fk_{table}_{column}_{target}"),
        nullable=nullable,
    )


def _index(table: str, *columns: str, unique: bool = False) -> None:
    op.create_index(f"ix_{table}_{columns[0]}", table, list(columns), unique=unique)


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("started_at", True),
        _ts("finished_at", True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("name", sa.String(200), nullable=True),
        sa.Column("goal", sa.Text, nullable=True),
        _json("spec", nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        _json("progress"),
        sa.Column("error", sa.Text, nullable=True),
        _json("result"),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
    )
    _index("jobs", "status")
    _index("jobs", "owner")

    op.create_table(
        "rules",
        sa.Column("id", sa.Integer, nullable=False),
        _ts("created_at"),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("canonical", sa.Text, nullable=False),
        sa.Column("srepr", sa.Text, nullable=False),
        sa.Column("expression", sa.Text, nullable=False),
        sa.Column("latex", sa.Text, nullable=False),
        _json("coefficients", nullable=False),
        _json("terms", nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        _json("spec"),
        sa.Column("seed", sa.Integer, nullable=True),
        sa.Column("code_version", sa.String(64), nullable=False),
        _fk("job_id", "rules", "jobs", "SET NULL", True),
        sa.Column("feedback", sa.String(16), nullable=True),
        sa.Column("depth", sa.Integer, nullable=True),
        sa.Column("dataset", sa.String(32), nullable=True),
        _json("provenance"),
        sa.PrimaryKeyConstraint("id", name="pk_rules"),
        sa.UniqueConstraint("hash", name="uq_rules_hash"),
    )
    for column in ("origin", "job_id", "feedback", "depth", "dataset"):
        _index("rules", column)

    op.create_table(
        "rule_terms",
        _fk("rule_id", "rule_terms", "rules", "CASCADE", False),
        sa.Column("term", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("rule_id", "term", name="pk_rule_terms"),
    )
    _index("rule_terms", "term")

    op.create_table(
        "job_rules",
        _fk("job_id", "job_rules", "jobs", "CASCADE", False),
        _fk("rule_id", "job_rules", "rules", "CASCADE", False),
        sa.PrimaryKeyConstraint("job_id", "rule_id", name="pk_job_rules"),
    )

    op.create_table(
        "trials",
        sa.Column("id", sa.Integer, nullable=False),
        _fk("job_id", "trials", "jobs", "CASCADE", False),
        sa.Column("index", sa.Integer, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        _json("config"),
        sa.Column("heldout_accuracy", sa.Float, nullable=True),
        sa.Column("heldout_ci95", sa.Float, nullable=True),
        _json("rule"),
        _json("metrics"),
        _ts("created_at"),
        sa.PrimaryKeyConstraint("id", name="pk_trials"),
        sa.UniqueConstraint("job_id", "index", name="uq_trials_job_index"),
    )
    _index("trials", "job_id")

    op.create_table(
        "benchmark_runs",
        sa.Column("id", sa.Integer, nullable=False),
        _ts("created_at"),
        _ts("updated_at"),
        _ts("started_at", True),
        _ts("finished_at", True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("suite", sa.String(100), nullable=False),
        sa.Column("suite_version", sa.String(32), nullable=True),
        _fk("rule_id", "benchmark_runs", "rules", "SET NULL", True),
        sa.Column("expression", sa.Text, nullable=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("tiny", sa.Boolean, nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        _json("progress"),
        _json("result"),
        sa.Column("error", sa.Text, nullable=True),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_benchmark_runs"),
    )
    for column in ("status", "suite", "rule_id", "owner"):
        _index("benchmark_runs", column)

    op.create_table(
        "benchmark_scores",
        sa.Column("id", sa.Integer, nullable=False),
        _ts("created_at"),
        _fk("run_id", "benchmark_scores", "benchmark_runs", "CASCADE", False),
        sa.Column("suite", sa.String(100), nullable=False),
        sa.Column("learner", sa.String(200), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        _fk("rule_id", "benchmark_scores", "rules", "CASCADE", True),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("ci95", sa.Float, nullable=True),
        sa.Column("locality", sa.String(32), nullable=True),
        sa.Column("cost_per_sample_ms", sa.Float, nullable=True),
        _json("metrics"),
        sa.PrimaryKeyConstraint("id", name="pk_benchmark_scores"),
    )
    for column in ("run_id", "suite", "rule_id"):
        _index("benchmark_scores", column)

    op.create_table(
        "job_events",
        sa.Column("id", sa.Integer, nullable=False),
        _ts("created_at"),
        _fk("job_id", "job_events", "jobs", "CASCADE", True),
        _fk("benchmark_id", "job_events", "benchmark_runs", "CASCADE", True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        _json("data"),
        sa.PrimaryKeyConstraint("id", name="pk_job_events"),
    )
    _index("job_events", "job_id")
    _index("job_events", "benchmark_id")


def downgrade() -> None:
    for table in (
        "job_events",
        "benchmark_scores",
        "benchmark_runs",
        "trials",
        "job_rules",
        "rule_terms",
        "rules",
        "jobs",
    ):
        op.drop_table(table)
