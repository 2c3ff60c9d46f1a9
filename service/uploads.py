"""Uploaded data sets on the service's side: storing an upload (validated, content-addressed, nothing stored when
it is refused), resolving a job spec's ``"upload:<id>"`` against the stored row, and what the workers receive.

The engine never imports this: a job's spec carries ``task.upload`` (the data set's name and checksum, filled at
submission and kept as the job's provenance) and, once handed to the workers, the folder to read the file from
(:func:`engine_spec`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from discovery.data.uploads import (
    UploadError,
    UploadInfo,
    canonical,
    episode_problem,
    read_labelled,
    save_canonical,
    upload_path,
)
from discovery.spec import DiscoverySpec, UploadSource
from service.db.models import DatasetRow
from service.db.repositories import datasets as repo
from service.settings import Settings

#: A data set's name: what a goal says after "my dataset".
NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"


class UploadRejected(Exception):
    """A refused upload or deletion: the HTTP status and the reason."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


def default_name(filename: str | None) -> str:
    """A data set name from a file name: its stem, lower case, other characters as '-'."""
    stem = Path(filename or "").stem.lower()
    name = re.sub(r"[^a-z0-9_-]+", "-", stem).strip("-_")[:64]
    return name or "dataset"


def free_name(base: str, taken: Callable[[str], bool]) -> str:
    """``base``, else ``base-2``, ``base-3``, … (cut to 64 characters): the first name that is not ``taken``."""
    name, i = base, 2
    while taken(name):
        suffix = f"-{i}"
        name, i = base[: 64 - len(suffix)] + suffix, i + 1
    return name


def check_size(data: bytes, limit: int) -> None:
    """A 413 when ``data`` has more than ``limit`` bytes (PLASTICITY_MAX_UPLOAD_BYTES)."""
    if len(data) > limit:
        raise UploadRejected(413, f"the file has {len(data)} bytes: the limit is {limit} bytes "
                                  "(PLASTICITY_MAX_UPLOAD_BYTES)")


@contextmanager
def inserting(session: Session, path: Path, existed: bool, noun: str) -> Iterator[None]:
    """Insert the row of the file just written at ``path``. A unique-constraint race (a concurrent upload of the
    same name or content won) rolls back, removes the file unless it ``existed`` before, and is a 409."""
    try:
        yield
    except IntegrityError as exc:
        session.rollback()
        if not existed:
            path.unlink(missing_ok=True)
        raise UploadRejected(409, f"a {noun} with this name or content was uploaded at the same time") from exc


def read_server_path(settings: Settings, path: str) -> tuple[bytes, str]:
    """The bytes and file name of a file an administrator placed in ``PLASTICITY_DATASET_IMPORT_DIR``."""
    root = settings.dataset_import_dir
    if root is None:
        raise UploadRejected(422, "path: server paths are not accepted: this server has no import folder "
                                  "(PLASTICITY_DATASET_IMPORT_DIR is unset); upload the file instead")
    candidate = (root / path).resolve() if not Path(path).is_absolute() else Path(path).resolve()
    if root.resolve() not in candidate.parents:
        raise UploadRejected(403, f"the path {path!r} is outside the import folder (PLASTICITY_DATASET_IMPORT_DIR)")
    if not candidate.is_file():
        raise UploadRejected(404, f"no file {path!r} in the import folder")
    size = candidate.stat().st_size
    if size > settings.limits.max_upload_bytes:
        raise UploadRejected(413, f"the file has {size} bytes: the limit is {settings.limits.max_upload_bytes} "
                                  "bytes (PLASTICITY_MAX_UPLOAD_BYTES)")
    return candidate.read_bytes(), candidate.name


def store_upload(session: Session, settings: Settings, *, data: bytes, filename: str | None, name: str | None,
                 owner: str) -> DatasetRow:
    """Validate ``data``, write its canonical file and insert its row (not committed); :class:`UploadRejected`
    (413, 422 or 409) leaves nothing behind."""
    limit = settings.limits.max_upload_bytes
    check_size(data, limit)
    if not data:
        raise UploadRejected(422, "the file is empty")
    if name is not None and not re.match(NAME_PATTERN, name):
        raise UploadRejected(422, f"bad name {name!r}: 1 to 64 characters a-z, 0-9, '-' or '_', starting with a "
                                  "letter or digit")
    try:
        x, y, fmt = read_labelled(data, filename, max_unpacked_bytes=4 * limit)
        content = canonical(x, y, max_dim=settings.limits.max_width)
    except UploadError as exc:
        raise UploadRejected(422, str(exc)) from exc
    same = repo.by_sha256(session, content.sha256)
    if same is not None:
        raise UploadRejected(409, f"the same data were already uploaded as data set {same.id} ({same.name!r}, "
                                  f"checksum {same.sha256}); use 'upload:{same.id}'")
    if name is not None and repo.by_name(session, name) is not None:
        raise UploadRejected(409, f"a data set named {name!r} exists; choose another name")
    final_name = name if name is not None else free_name(default_name(filename),
                                                         lambda n: repo.by_name(session, n) is not None)
    path = upload_path(content.sha256, settings.datasets_dir)
    existed = path.exists()
    save_canonical(settings.datasets_dir, content)
    with inserting(session, path, existed, "data set"):
        return repo.create_dataset(session, data=content, name=final_name, owner=owner, fmt=fmt,
                                   filename=(filename or None) and filename[:255], upload_bytes=len(data))


def delete_dataset(session: Session, settings: Settings, row: DatasetRow, owner: str) -> Path:
    """Delete the row (not committed; 403 for another owner, 409 while a job uses it); the path of its file,
    to remove once the deletion is committed."""
    if row.owner != owner:
        raise UploadRejected(403, f"data set {row.id} belongs to another token; only its owner may delete it")
    active = repo.jobs_using(session, row)
    if active:
        ids = ", ".join(f"{j.id} ({j.status})" for j in active)
        raise UploadRejected(409, f"data set {row.id} ({row.name!r}) is used by job(s) {ids}; delete it when they "
                                  "have finished or cancel them")
    session.delete(row)
    session.flush()
    return upload_path(row.sha256, settings.datasets_dir)


def goal_uploads(session: Session) -> list[UploadInfo]:
    """Every stored data set as the goal reader sees it ("on my dataset <name>")."""
    rows, _ = repo.list_datasets(session, limit=10_000)
    return [UploadInfo.model_validate(r) for r in rows]


def _problem(loc: list[str | int], msg: str) -> dict[str, Any]:
    return {"loc": ["body", *loc], "msg": msg, "type": "dataset"}


def attach_upload(session: Session, spec: DiscoverySpec) -> tuple[DiscoverySpec, list[dict[str, Any]]]:
    """For a spec on ``upload:<id>``: the spec with ``task.upload`` (name, checksum) filled from the stored row,
    and what does not fit (unknown id, a pinned checksum that differs, a server folder, the input width against
    D, too few classes or samples per class for the episodes). Other specs come back unchanged."""
    task = spec.task
    if not task.dataset.startswith("upload:"):
        return spec, []
    row = session.get(DatasetRow, int(task.dataset.split(":", 1)[1]))
    if row is None:
        return spec, [_problem(["task", "dataset"], f"no uploaded data set {task.dataset} (GET /api/datasets)")]
    problems = []
    if task.upload is not None and task.upload.sha256 != row.sha256:
        problems.append(_problem(["task", "upload", "sha256"], f"{task.dataset} ({row.name!r}) has checksum "
                                 f"{row.sha256}, not {task.upload.sha256}"))
    if task.upload is not None and task.upload.dir is not None:
        problems.append(_problem(["task", "upload", "dir"], "server paths are not accepted over the API; the "
                                 "server reads uploads from its data folder"))
    if spec.network.widths[0] != row.dim:
        problems.append(_problem(["network", "widths", 0], f"the input width must be {row.dim} for data set "
                                 f"{task.dataset} ({row.name!r}, D = {row.dim}), got {spec.network.widths[0]}"))
    if not task.remap_labels and spec.network.widths[-1] < row.n_classes:
        problems.append(_problem(["network", "widths", -1], f"output width {spec.network.widths[-1]} < the "
                                 f"{row.n_classes} classes of {task.dataset} (remap_labels off)"))
    if task.kind == "fewshot":
        why = episode_problem(list(row.class_counts), ways=task.ways, shots=task.shots, queries=task.queries,
                              heldout_fraction=task.heldout_fraction)
        if why:
            problems.append(_problem(["task"], f"{task.dataset} ({row.name!r}, {row.n_classes} classes, "
                                     f"{min(row.class_counts)}–{max(row.class_counts)} samples per class): {why}"))
    else:
        problems.append(_problem(["task", "kind"], f"uploaded data sets are for few-shot jobs, not {task.kind!r}"))
    resolved = spec.model_copy(update={"task": task.model_copy(update={
        "upload": UploadSource(name=row.name, sha256=row.sha256)})})
    return resolved, problems


def engine_spec(spec: DiscoverySpec, settings: Settings) -> DiscoverySpec:
    """The spec the workers receive: an upload's folder filled in (they read the file from it)."""
    if spec.task.upload is None:
        return spec
    upload = spec.task.upload.model_copy(update={"dir": str(settings.datasets_dir)})
    return spec.model_copy(update={"task": spec.task.model_copy(update={"upload": upload})})


def dataset_provenance(spec: dict[str, Any]) -> dict[str, Any]:
    """``{"dataset": {...}}`` for a rule from a job on an uploaded data set (its ref, name, checksum), else {}."""
    task = (spec or {}).get("task") or {}
    upload = task.get("upload")
    if not upload:
        return {}
    return {"dataset": {"ref": task.get("dataset"), "name": upload.get("name"), "sha256": upload.get("sha256")}}
