"""Uploaded data sets: ``datasets`` (one row per labelled set, unique on its name and on its content checksum).

The file itself lives in the data folder (``<dataset dir>/<sha256>.npz``); the row keeps its metadata (N, D,
classes and per-class counts), its owner and the checksum. Jobs name a data set ``upload:<id>`` in their spec and
keep its name and checksum there, so deleting the row leaves a finished job's provenance intact.

Revision 0005_datasets (after 0004_front_points), 2026-12-10.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision, down_revision = "0005_datasets", "0004_front_points"

_json = sa.JSON(none_as_null=True)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("format", sa.String(8), nullable=False),
        sa.Column("filename", sa.String(255), nullable=True),
        sa.Column("upload_bytes", sa.Integer, nullable=False),
        sa.Column("n", sa.Integer, nullable=False),
        sa.Column("dim", sa.Integer, nullable=False),
        sa.Column("side", sa.Integer, nullable=True),
        sa.Column("n_classes", sa.Integer, nullable=False),
        sa.Column("classes", _json, nullable=False),
        sa.Column("class_counts", _json, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
        sa.UniqueConstraint("name", name="uq_datasets_name"),
        sa.UniqueConstraint("sha256", name="uq_datasets_sha256"),
    )
    op.create_index("ix_datasets_owner", "datasets", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_datasets_owner", table_name="datasets")
    op.drop_table("datasets")
