"""Uploaded recordings for rule inference: ``recordings`` (one row per recording, unique on its name and on its
content checksum).

The file lives in the data folder (``<dataset dir>/recordings/<sha256>.npz``, the canonical layout of
docs/inference.md); the row keeps its metadata (kind, widths, steps, trials, time step, what was observed), its
owner and the checksum. Inference jobs are rows of ``jobs`` (spec ``kind = "inference"``) that keep the
recording's id, name and checksum in their spec, so deleting the row leaves a finished job's provenance intact.

Revision 0007_recordings (after 0006_read_fields), 2026-12-07.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0007_recordings", "0006_read_fields"

_json = sa.JSON(none_as_null=True)


def upgrade() -> None:
    op.create_table(
        "recordings",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("filename", sa.String(255), nullable=True),
        sa.Column("upload_bytes", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("widths", _json, nullable=False),
        sa.Column("n_steps", sa.Integer, nullable=False),
        sa.Column("n_trials", sa.Integer, nullable=False),
        sa.Column("dt", sa.Float, nullable=False),
        sa.Column("weights_observed", sa.Boolean, nullable=False),
        sa.Column("errors_observed", sa.Boolean, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_recordings"),
        sa.UniqueConstraint("name", name="uq_recordings_name"),
        sa.UniqueConstraint("sha256", name="uq_recordings_sha256"),
    )
    op.create_index("ix_recordings_owner", "recordings", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_recordings_owner", table_name="recordings")
    op.drop_table("recordings")
