"""``/api/datasets``: upload a labelled data set (``.npz`` with X and y, or NWB), list, inspect, delete.

An upload is validated (shapes, dtypes, NaN/∞, classes and samples per class: ``discovery.data.uploads``) and
stored content-addressed in the data folder with its checksum; a refused upload stores nothing. Jobs name a data
set ``"upload:<id>"`` (or a goal says "... on my dataset <name>").
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, HTTPException, Query, Response, UploadFile, status

from service.api.deps import IdPath, OwnerDep, SessionDep, SettingsDep
from service.api.errors import errors
from service.api.schemas import DatasetOut
from service.api.upload_resource import UploadResource
from service.db.models import DatasetRow
from service.db.repositories import datasets as repo
from service.uploads import NAME_PATTERN, delete_dataset, read_server_path, store_upload

router = APIRouter(prefix="/api/datasets", tags=["datasets"])
_RESOURCE = UploadResource(router.prefix, DatasetRow, DatasetOut, "data set")

_ERRORS = errors(400, 401, 403, 404, 409, 413, 422, 503, e400="malformed multipart body",
                 e403="a server path outside the import folder, or none configured",
                 e404="the server path names no file",
                 e409="the same content or name was uploaded before",
                 e413="the file is larger than PLASTICITY_MAX_UPLOAD_BYTES",
                 e422="the file is not a valid labelled data set; the detail says why")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=DatasetOut, responses=_ERRORS)
def upload_dataset(
    session: SessionDep,
    settings: SettingsDep,
    who: OwnerDep,
    response: Response,
    file: Annotated[UploadFile | None, File(description=".npz with arrays X (N × D) and y (N,), or .nwb")] = None,
    name: Annotated[str | None, Form(pattern=NAME_PATTERN, description="default: the file's name")] = None,
    path: Annotated[str | None, Form(max_length=4096, description=(
        "instead of a file: a file in the server's import folder (PLASTICITY_DATASET_IMPORT_DIR), for "
        "administrators"))] = None,
) -> DatasetOut:
    """Upload a labelled data set (multipart form: ``file`` and an optional ``name``).

    ``.npz``: arrays ``X`` (N × D floats or integers, or N × H × W images) and ``y`` (N integer labels). NWB: a
    ``TimeSeries`` named ``X`` in ``acquisition`` with data (N, D), and labels as a ``TimeSeries`` ``y`` in
    ``acquisition`` or a ``label`` column of the trials table. Every value finite, at least 2 classes, at least
    2 samples per class; the jobs that name it check that it has ``ways`` classes with ``shots + queries`` samples
    in both the meta-train and the held-out split.
    """
    if (file is None) == (path is None):
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT,
                            detail="send either a file (multipart field 'file') or a server path ('path')")

    def store() -> DatasetRow:
        if file is not None:
            data, filename = file.file.read(settings.limits.max_upload_bytes + 1), file.filename
        else:
            data, filename = read_server_path(settings, path or "")
        return store_upload(session, settings, data=data, filename=filename, name=name, owner=who)

    return _RESOURCE.create(session, response, store)


@router.get("", response_model=list[DatasetOut], responses=errors(422, 503))
def list_datasets(
    session: SessionDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[DatasetOut]:
    """Uploaded data sets, newest first, with N, D, classes and per-class counts, owner and checksum;
    ``X-Total-Count`` gives their number."""
    return _RESOURCE.page(response, repo.list_datasets(session, limit=limit, offset=offset))


@router.get("/{dataset_id}", response_model=DatasetOut, responses=errors(404, 422, 503, e404="no such data set"))
def get_dataset(dataset_id: IdPath, session: SessionDep) -> DatasetOut:
    """One data set's metadata."""
    return _RESOURCE.show(session, dataset_id)


@router.delete(
    "/{dataset_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
    responses=errors(401, 403, 404, 409, 422, 503, e403="another token's data set", e404="no such data set",
                     e409="a queued or running job uses it"),
)
def delete(dataset_id: IdPath, session: SessionDep, settings: SettingsDep, who: OwnerDep) -> Response:
    """Delete a data set and its file (its owner only). Refused with 409 while a queued or running job uses it;
    finished jobs keep its name and checksum in their spec."""
    return _RESOURCE.delete(session, dataset_id, lambda row: delete_dataset(session, settings, row, who))
