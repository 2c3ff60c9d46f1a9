"""Read fields on ``rules``: what lists and pages show, computed at write time (service.db.read_fields).

``display_latex`` (θ rounded), ``formula_svg`` (that LaTeX as SVG), ``read_scores`` (the rule's discovery and
benchmark scores as the API lists them), ``read_json`` (the API's whole answer for the rule) and ``read_updated_at`` (indexed: the lists' version stamp). The upgrade
backfills every stored rule; ``jobs.read_plots`` keeps a succeeded job's plots (θ, accuracy, front), drawn once
for the pages of its rules. ``read_version`` (one row) counts the changes of what
reads show (the server's read cache compares it). The upgrade fills them all; the downgrade drops the columns (nothing else is lost: they are derived).

Revision 0006_read_fields (after 0005_datasets), 2026-12-07.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0006_read_fields", "0005_datasets"


def upgrade() -> None:
    # plain ALTER TABLE (no batch copy): on SQLite a batch would drop and recreate ``rules``, and with foreign keys
    # on, dropping it would null the front points' and benchmark scores' rule ids
    op.add_column("rules", sa.Column("display_latex", sa.Text, nullable=True))
    op.add_column("rules", sa.Column("formula_svg", sa.Text, nullable=True))
    op.add_column("rules", sa.Column("read_scores", sa.JSON(none_as_null=True), nullable=True))
    op.add_column("rules", sa.Column("read_json", sa.Text, nullable=True))
    op.add_column("rules", sa.Column("read_updated_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_rules_read_updated_at", "rules", ["read_updated_at"])
    op.add_column("jobs", sa.Column("read_plots", sa.JSON(none_as_null=True), nullable=True))
    version = op.create_table("read_version", sa.Column("id", sa.Integer, nullable=False),
                              sa.Column("n", sa.BigInteger, nullable=False),
                              sa.PrimaryKeyConstraint("id", name="pk_read_version"))
    op.bulk_insert(version, [{"id": 1, "n": 0}])
    from service.db.read_fields import backfill

    backfill(op.get_bind())


def downgrade() -> None:
    op.drop_table("read_version")
    op.drop_column("jobs", "read_plots")
    op.drop_index("ix_rules_read_updated_at", table_name="rules")
    for column in ("read_updated_at", "read_json", "read_scores", "formula_svg", "display_latex"):
        op.drop_column("rules", column)
