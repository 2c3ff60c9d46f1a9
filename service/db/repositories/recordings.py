"""The recordings aggregate: uploaded recordings for rule inference (``recordings``) and the inference jobs that
read them (``jobs`` rows whose spec has ``kind = "inference"``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, selectinload

from service.db.models import ACTIVE_STATUSES, Job, RecordingRow

#: the spec kind that marks an inference job in ``jobs``
INFERENCE_KIND = "inference"


def create_recording(session: Session, *, sha256: str, name: str, owner: str, fmt: str, filename: str | None,
                     upload_bytes: int, meta: dict[str, Any]) -> RecordingRow:
    """Insert the row of a validated recording (``meta``: the engine's summary); flushes so the id is known."""
    row = RecordingRow(name=name, owner=owner, sha256=sha256, format=fmt, filename=filename,
                       upload_bytes=upload_bytes, kind=meta["kind"], widths=list(meta["widths"]),
                       n_steps=int(meta["n_steps"]), n_trials=int(meta["n_trials"]), dt=float(meta["dt"]),
                       weights_observed=bool(meta["weights_observed"]), errors_observed=bool(meta["errors_observed"]))
    session.add(row)
    session.flush()
    return row


def list_recordings(session: Session, *, limit: int = 100, offset: int = 0) -> tuple[list[RecordingRow], int]:
    """Recordings, newest first, and how many there are."""
    rows = session.scalars(select(RecordingRow).order_by(RecordingRow.id.desc()).limit(limit).offset(offset)).all()
    return list(rows), int(session.scalar(select(func.count()).select_from(RecordingRow)) or 0)


def by_name(session: Session, name: str) -> RecordingRow | None:
    return session.scalar(select(RecordingRow).where(RecordingRow.name == name))


def by_sha256(session: Session, sha256: str) -> RecordingRow | None:
    return session.scalar(select(RecordingRow).where(RecordingRow.sha256 == sha256))


def _is_inference(spec: dict[str, Any] | None) -> bool:
    return isinstance(spec, dict) and spec.get("kind") == INFERENCE_KIND


def inference_jobs(session: Session, *, limit: int = 50, offset: int = 0) -> tuple[list[Job], int]:
    """Inference jobs, newest first, and how many there are (the spec's kind is read in Python: JSON queries
    differ between SQLite and PostgreSQL, and inference jobs are few)."""
    ids = [j_id for j_id, spec in session.execute(select(Job.id, Job.spec).order_by(Job.id.desc()))
           if _is_inference(spec)]
    page = ids[offset:offset + limit]
    eager = (selectinload(Job.events), selectinload(Job.rule_links))
    rows = session.scalars(select(Job).where(Job.id.in_(page)).order_by(Job.id.desc()).options(*eager)).all() \
        if page else []
    return list(rows), len(ids)


def jobs_using(session: Session, recording: RecordingRow) -> list[Job]:
    """Queued or running inference jobs that read ``recording``."""
    rows = session.scalars(select(Job).where(Job.status.in_(ACTIVE_STATUSES)).order_by(Job.id)).all()
    return [j for j in rows if _is_inference(j.spec) and (j.spec.get("recording") or {}).get("id") == recording.id]
