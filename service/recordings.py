"""Uploaded recordings on the service's side (docs/inference.md): storing an upload (validated by the engine's
reader, content-addressed, nothing stored when it is refused) and resolving an inference request against the
stored row. Mirrors ``service.uploads`` for labelled data sets and shares its :class:`UploadRejected`.
"""

from __future__ import annotations

import re
from pathlib import Path

from sqlalchemy.orm import Session

from discovery.inference.job import (
    InferenceSpec,
    RecordingRef,
    canonical_bytes,
    checksum,
    read_upload,
    summary,
)
from discovery.inference.recording import RecordingError
from service.db.models import RecordingRow
from service.db.repositories import recordings as repo
from service.settings import Settings
from service.uploads import NAME_PATTERN, UploadRejected, check_size, default_name, free_name, inserting


def recordings_dir(settings: Settings) -> Path:
    """Where the canonical recording files live: ``<dataset dir>/recordings``."""
    return settings.datasets_dir / "recordings"


def store_recording(session: Session, settings: Settings, *, data: bytes, filename: str | None, name: str | None,
                    owner: str) -> RecordingRow:
    """Validate ``data`` (NWB or npz, either layout), write its canonical file and insert its row (not
    committed); :class:`UploadRejected` (413, 422 or 409) leaves nothing behind."""
    check_size(data, settings.limits.max_upload_bytes)
    if not data:
        raise UploadRejected(422, "file: the file is empty")
    if name is not None and not re.match(NAME_PATTERN, name):
        raise UploadRejected(422, f"name: bad name {name!r}: 1 to 64 characters a-z, 0-9, '-' or '_'")
    try:
        rec, fmt = read_upload(data, filename)
    except RecordingError as exc:
        raise UploadRejected(422, f"file: {exc}") from exc
    meta = summary(rec)
    too_wide = [w for w in meta["widths"] if w > settings.limits.max_width]
    if too_wide:
        raise UploadRejected(422, f"file: a layer has {too_wide[0]} neurons; the limit is {settings.limits.max_width}")
    digest = checksum(rec)
    same = repo.by_sha256(session, digest)
    if same is not None:
        raise UploadRejected(409, f"the same recording was already uploaded as recording {same.id} ({same.name!r}, "
                                  f"checksum {same.sha256})")
    if name is not None and repo.by_name(session, name) is not None:
        raise UploadRejected(409, f"a recording named {name!r} exists; choose another name")
    final_name = name if name is not None else free_name(default_name(filename),
                                                         lambda n: repo.by_name(session, n) is not None)
    folder = recordings_dir(settings)
    existed = (folder / f"{digest}.npz").exists()
    path = canonical_bytes(rec, folder, digest)
    with inserting(session, path, existed, "recording"):
        return repo.create_recording(session, sha256=digest, name=final_name, owner=owner, fmt=fmt,
                                     filename=(filename or None) and filename[:255], upload_bytes=len(data), meta=meta)


def delete_recording(session: Session, settings: Settings, row: RecordingRow, owner: str) -> Path:
    """Delete the row (not committed; 403 for another owner, 409 while an inference job reads it); the path of
    its file, to remove once the deletion is committed."""
    if row.owner != owner:
        raise UploadRejected(403, f"recording {row.id} belongs to another token; only its owner may delete it")
    active = repo.jobs_using(session, row)
    if active:
        raise UploadRejected(409, f"recording {row.id} is read by job(s) "
                                  f"{', '.join(str(j.id) for j in active)}; delete it when they have finished")
    session.delete(row)
    session.flush()
    return recordings_dir(settings) / f"{row.sha256}.npz"


def resolve_spec(session: Session, spec: InferenceSpec) -> InferenceSpec:
    """The spec with the recording's name and checksum filled in from its row (404-like 422 when unknown)."""
    row = session.get(RecordingRow, spec.recording.id)
    if row is None:
        raise UploadRejected(422, f"recording_id: no recording {spec.recording.id} (GET /api/recordings)")
    return spec.model_copy(update={"recording": RecordingRef(id=row.id, name=row.name, sha256=row.sha256)})


def engine_spec(spec: InferenceSpec, settings: Settings) -> InferenceSpec:
    """The spec the workers receive: the recordings folder filled in (they read the file from it)."""
    return spec.model_copy(update={"recording": spec.recording.model_copy(
        update={"dir": str(recordings_dir(settings))})})
