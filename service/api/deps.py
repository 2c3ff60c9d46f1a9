"""FastAPI dependencies: the database session, the settings, the dispatcher, the caller's token."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Path, Request, Security, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BeforeValidator
from sqlalchemy.orm import Session

from service.api.auth import require_token
from service.db.models import BenchmarkRun, Job
from service.db.repositories.jobs import active_count
from service.settings import Settings

_bearer = HTTPBearer(auto_error=False, description="a token from PLASTICITY_API_TOKENS or DATA_DIR/api_token")


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; handlers commit explicitly, anything uncommitted is rolled back."""
    session: Session = request.app.state.sessions()
    try:
        yield session
    finally:
        session.close()


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_dispatcher(request: Request) -> Any:
    """The running dispatcher, or None when it is disabled."""
    return getattr(request.app.state, "dispatcher", None)


def owner(
    request: Request, _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)] = None
) -> str:
    """The caller's token fingerprint (401 without a valid token). ``Security`` documents it in OpenAPI."""
    return require_token(request)


SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
DispatcherDep = Annotated[Any, Depends(get_dispatcher)]
OwnerDep = Annotated[str, Depends(owner)]
#: A row id in a path (bounded: PostgreSQL integers are 32-bit).
def _decimal_id(value: object) -> object:
    """A path id is written in ASCII digits: Python's ``int`` would also read "\x855" or "٥" as 5."""
    if isinstance(value, str) and not (value.isascii() and value.isdigit()):
        raise ValueError("an id is a positive decimal number written in the digits 0-9")
    return value


IdPath = Annotated[int, Path(ge=1, le=2**31 - 1), BeforeValidator(_decimal_id)]


def wake(dispatcher: Any) -> None:
    """Tell the dispatcher there is new work (no-op when disabled)."""
    if dispatcher is not None:
        dispatcher.wake()


RowT = TypeVar("RowT")


def get_or_404(session: Session, model: type[RowT], row_id: int, what: str, options: Sequence[Any] = ()) -> RowT:
    """The row ``row_id`` of ``model`` (loader ``options``); a 404 naming ``what`` ("job", "rule", …) when there is
    none."""
    row = session.get(model, row_id, options=options)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"{what} {row_id} does not exist")
    return row


def check_active_cap(session: Session, model: type[Job | BenchmarkRun], who: str, settings: Settings,
                     what: str, advice: str) -> None:
    """A 429 when the token already has ``PLASTICITY_MAX_CONCURRENT_JOBS`` queued or running ``what``."""
    cap = settings.limits.max_concurrent_jobs
    if active_count(session, model, who) >= cap:
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            detail=f"this token already has {cap} queued or running {what} (the limit, "
            f"PLASTICITY_MAX_CONCURRENT_JOBS); {advice}",
        )
