"""``/api/health`` and ``/api/goal`` (read a plain-language goal without submitting it)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy import text

from discovery.goal import VOCABULARY, GoalError, parse_goal
from service import __version__
from service.api.deps import SessionDep
from service.api.errors import errors
from service.api.schemas import HealthOut
from service.db.migrate import current_revision
from service.db.session import redact_url
from service.uploads import goal_uploads

router = APIRouter(tags=["service"])


def ray_health(dispatcher: Any) -> dict[str, Any]:
    """The dispatcher's view of Ray, plus the cluster's resources once connected."""
    if dispatcher is None:
        return {"state": "disabled", "detail": "the dispatcher is off (PLASTICITY_DISPATCHER=0)"}
    info = dict(dispatcher.ray_state)
    if info.get("state") == "not started" and not dispatcher.lease.held:
        return {"state": "standby", "detail": "another server process holds the dispatch lease and drives Ray"}
    if info.get("state") == "connected":
        try:
            from workers.runtime import ray_info

            info.update(ray_info())
        except Exception as exc:  # noqa: BLE001 - health must answer
            info["info_error"] = str(exc)
    return info


@router.get("/api/health", response_model=HealthOut,
            responses={503: {"model": HealthOut, "description": "database unreachable (status: degraded)"}})
def health(request: Request) -> Any:
    """Service, database and Ray status."""
    state = request.app.state
    database: dict[str, Any] = {
        "backend": state.settings.backend,
        "url": redact_url(state.settings.database_url),
    }
    ok = True
    try:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        database.update(ok=True, revision=current_revision(state.engine))
    except Exception as exc:  # noqa: BLE001
        ok = False
        database.update(ok=False, error=str(exc)[:300])
    dispatcher = getattr(state, "dispatcher", None)
    body = {
        "status": "ok" if ok else "degraded",
        "version": __version__,
        "database": database,
        "ray": ray_health(dispatcher),
        "dispatcher": dispatcher.status() if dispatcher is not None else {"enabled": False},
    }
    if not ok:
        return JSONResponse(
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            content=HealthOut.model_validate(body).model_dump(mode="json"),
        )
    return body


@router.get("/api/goal", responses=errors(422, e422=(
    "the goal is not understood (its words are meaning, not shape: see docs/http-api.md); the detail lists what "
    "was understood, the unknown words and the vocabulary")))
def read_goal(text_: Annotated[str, Query(alias="text", min_length=1, max_length=2000,
                                          pattern=r"^[^\x00-\x08\x0b-\x1f]*$")],
              session: SessionDep) -> dict[str, Any]:
    """How a goal would be read: the resolved spec, the phrases understood and the words ignored because they
    change nothing (nothing is submitted)."""
    try:
        parsed = parse_goal(text_, goal_uploads(session))
    except GoalError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=exc.to_dict()) from exc
    return {"spec": parsed.spec.model_dump(mode="json"), "understood": parsed.understood, "ignored": parsed.ignored}


@router.get("/api/goal/vocabulary", response_model=dict[str, list[str]])
def goal_vocabulary() -> dict[str, list[str]]:
    """The phrases a goal may use, by category."""
    return VOCABULARY
