"""FastAPI dependencies: the database session, the settings, the dispatcher, the caller's token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import Depends, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from service.api.auth import require_token
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
IdPath = Annotated[int, Path(ge=1, le=2**31 - 1)]


def wake(dispatcher: Any) -> None:
    """Tell the dispatcher there is new work (no-op when disabled)."""
    if dispatcher is not None:
        dispatcher.wake()
