"""The rule family as a column: ``rules.family`` (feedforward | recurrent), indexed.

Existing rows are upgraded from what marks a recurrent rule in them: its canonical text starts with
``recurrent/`` (rules.recurrent.CANONICAL_PREFIX); every other stored rule is feedforward.

Revision 0002_rule_family (after 0001_initial), 2026-12-02.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0002_rule_family", "0001_initial"


def upgrade() -> None:
    with op.batch_alter_table("rules") as batch:
        batch.add_column(sa.Column("family", sa.String(16), nullable=False, server_default="feedforward"))
        batch.create_index("ix_rules_family", ["family"])
    rules = sa.table("rules", sa.column("family", sa.String), sa.column("canonical", sa.Text))
    op.execute(rules.update().where(rules.c.canonical.like("recurrent/%")).values(family="recurrent"))


def downgrade() -> None:
    with op.batch_alter_table("rules") as batch:
        batch.drop_index("ix_rules_family")
        batch.drop_column("family")
