"""Cached baselines: ``baseline_sets`` (one per suite, suite version, seed and size) and ``benchmark_runs.retune``.

A row holds a suite's tuned and scored baselines (``discovery.benchmarks.cache.BaselineSet`` as JSON, with the
per-episode values the paired comparison needs); every later rule benchmark on the same key reuses it. A new suite
version is a new key, so an old row is simply not found. ``retune`` on a run asks to tune again (the row is
replaced when that run succeeds).

Revision 0003_baseline_cache (after 0002_rule_family), 2026-12-02.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0003_baseline_cache", "0002_rule_family"


def upgrade() -> None:
    op.create_table(
        "baseline_sets",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("suite", sa.String(100), nullable=False),
        sa.Column("suite_version", sa.String(32), nullable=False),
        sa.Column("seed", sa.Integer, nullable=False),
        sa.Column("tiny", sa.Boolean, nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("higher_is_better", sa.Boolean, nullable=False),
        sa.Column("tuned_with", sa.String(16), nullable=False),
        sa.Column("wall_time_s", sa.Float, nullable=True),
        sa.Column(
            "run_id",
            sa.Integer,
            sa.ForeignKey("benchmark_runs.id", ondelete="SET NULL", name="fk_baseline_sets_run_id_benchmark_runs"),
            nullable=True,
        ),
        sa.Column("data", sa.JSON(none_as_null=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_baseline_sets"),
        sa.UniqueConstraint("suite", "suite_version", "seed", "tiny", name="uq_baseline_sets_suite"),
    )
    op.create_index("ix_baseline_sets_run_id", "baseline_sets", ["run_id"])
    with op.batch_alter_table("benchmark_runs") as batch:
        batch.add_column(sa.Column("retune", sa.Boolean, nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("benchmark_runs") as batch:
        batch.drop_column("retune")
    op.drop_index("ix_baseline_sets_run_id", table_name="baseline_sets")
    op.drop_table("baseline_sets")
