"""Read fields on ``rules``: what lists and pages show, computed at write time (service.db.read_fields).

``display_latex`` (θ rounded), ``formula_svg`` (that LaTeX as SVG), ``read_scores`` (the rule's discovery and
benchmark scores as the API lists them) and ``read_updated_at`` (indexed: the lists' version stamp). The upgrade
backfills every stored rule; the downgrade drops the columns (nothing else is lost: they are derived).

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
    op.add_column("rules", sa.Column("read_updated_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_rules_read_updated_at", "rules", ["read_updated_at"])
    from service.db.read_fields import backfill

    backfill(op.get_bind())


def downgrade() -> None:
    op.drop_index("ix_rules_read_updated_at", table_name="rules")
    for column in ("read_updated_at", "read_scores", "formula_svg", "display_latex"):
        op.drop_column("rules", column)
