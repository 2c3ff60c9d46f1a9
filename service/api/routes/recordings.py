"""``/api/recordings``: upload a recording of a circuit learning (NWB or ``.npz``; layout in docs/inference.md),
list, inspect, delete.

An upload is validated by the engine's reader (``discovery.inference``: series present, shapes, dtypes, NaN/∞,
timing, trials) and stored content-addressed with its checksum; a refused upload stores nothing. Inference jobs
(``POST /api/inferences``) name a recording by id.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, Form, Query, Response, UploadFile, status

from service.api.deps import IdPath, OwnerDep, SessionDep, SettingsDep
from service.api.errors import errors
from service.api.inference_schemas import RecordingOut
from service.api.upload_resource import UploadResource
from service.db.models import RecordingRow
from service.db.repositories import recordings as repo
from service.recordings import delete_recording, store_recording
from service.uploads import NAME_PATTERN

router = APIRouter(prefix="/api/recordings", tags=["recordings"])
_RESOURCE = UploadResource(router.prefix, RecordingRow, RecordingOut, "recording")

_ERRORS = errors(400, 401, 409, 413, 422, 503, e400="malformed multipart body",
                 e409="the same content or name was uploaded before",
                 e413="the file is larger than PLASTICITY_MAX_UPLOAD_BYTES",
                 e422="the file is not a valid recording; the detail says which series and why")


@router.post("", status_code=status.HTTP_201_CREATED, response_model=RecordingOut, responses=_ERRORS)
def upload_recording(
    session: SessionDep,
    settings: SettingsDep,
    who: OwnerDep,
    response: Response,
    file: Annotated[UploadFile, File(description="NWB or .npz: pre, post (optional weights), or y_ℓ, e_ℓ, W_ℓ")],
    name: Annotated[str | None, Form(pattern=NAME_PATTERN, description="default: the file's name")] = None,
) -> RecordingOut:
    """Upload a recording (multipart form: ``file`` and an optional ``name``).

    One layer: ``pre`` (T × m), ``post`` (T × n), optional ``weights`` (T × n × m). Layered (error-driven
    feed-forward rules): ``y_0`` … ``y_L``, ``e_0`` … ``e_L``, ``W_1`` … ``W_L``. Timing from ``dt`` or the NWB
    series' rate, trials from ``trial_starts`` or the NWB trials table (docs/inference.md).
    """
    data = file.file.read(settings.limits.max_upload_bytes + 1)
    return _RESOURCE.create(session, response, lambda: store_recording(
        session, settings, data=data, filename=file.filename, name=name, owner=who))


@router.get("", response_model=list[RecordingOut], responses=errors(422, 503))
def list_recordings(
    session: SessionDep,
    response: Response,
    limit: Annotated[int, Query(ge=1, le=200)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> list[RecordingOut]:
    """Uploaded recordings, newest first; ``X-Total-Count`` gives their number."""
    return _RESOURCE.page(response, repo.list_recordings(session, limit=limit, offset=offset))


@router.get("/{recording_id}", response_model=RecordingOut,
            responses=errors(404, 422, 503, e404="no such recording"))
def get_recording(recording_id: IdPath, session: SessionDep) -> RecordingOut:
    """One recording's metadata."""
    return _RESOURCE.show(session, recording_id)


@router.delete("/{recording_id}", status_code=status.HTTP_204_NO_CONTENT, response_class=Response,
               responses=errors(401, 403, 404, 409, 422, 503, e403="another token's recording",
                                e404="no such recording", e409="a queued or running inference reads it"))
def delete(recording_id: IdPath, session: SessionDep, settings: SettingsDep, who: OwnerDep) -> Response:
    """Delete a recording and its file (its owner only); finished jobs keep its name and checksum."""
    return _RESOURCE.delete(session, recording_id, lambda row: delete_recording(session, settings, row, who))
