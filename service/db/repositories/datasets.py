"""The datasets aggregate: uploaded labelled data sets (``datasets``) and the jobs that use them."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from discovery.data.uploads import Canonical
from service.db.models import ACTIVE_STATUSES, DatasetRow, Job


def create_dataset(session: Session, *, data: Canonical, name: str, owner: str, fmt: str, filename: str | None,
                   upload_bytes: int) -> DatasetRow:
    """Insert the row of a validated upload; flushes so the id is known."""
    classes, counts = data.classes_and_counts
    row = DatasetRow(name=name, owner=owner, sha256=data.sha256, format=fmt, filename=filename,
                     upload_bytes=upload_bytes, n=data.n, dim=data.dim, side=data.side, n_classes=len(classes),
                     classes=classes, class_counts=counts)
    session.add(row)
    session.flush()
    return row


def list_datasets(session: Session, *, owner: str | None = None, limit: int = 100,
                  offset: int = 0) -> tuple[list[DatasetRow], int]:
    """Data sets, newest first (optionally of one owner), and how many match in all."""
    stmt, count = select(DatasetRow), select(func.count()).select_from(DatasetRow)
    if owner is not None:
        stmt, count = stmt.where(DatasetRow.owner == owner), count.where(DatasetRow.owner == owner)
    rows = session.scalars(stmt.order_by(DatasetRow.id.desc()).limit(limit).offset(offset)).all()
    return list(rows), int(session.scalar(count) or 0)


def by_name(session: Session, name: str) -> DatasetRow | None:
    return session.scalar(select(DatasetRow).where(DatasetRow.name == name))


def by_sha256(session: Session, sha256: str) -> DatasetRow | None:
    return session.scalar(select(DatasetRow).where(DatasetRow.sha256 == sha256))


def jobs_using(session: Session, dataset: DatasetRow, *, active_only: bool = True) -> list[Job]:
    """The jobs (queued or running unless ``active_only`` is False) whose spec names ``dataset``."""
    stmt = select(Job).order_by(Job.id)
    if active_only:
        stmt = stmt.where(Job.status.in_(ACTIVE_STATUSES))
    ref = dataset.ref
    return [j for j in session.scalars(stmt) if ((j.spec or {}).get("task") or {}).get("dataset") == ref
            and (((j.spec or {}).get("task") or {}).get("upload") or {}).get("sha256") in (None, dataset.sha256)]
