"""One error model for every 4xx/503 answer (``ErrorOut``), the handlers that produce it, and the ``responses``
declarations routes put in the OpenAPI document.

Every error body is ``{"detail": ...}``: a one-line reason (400, 401, 403, 404, 405, 409, 413, 429, 503), or for a
422 a list of ``{"loc", "field", "msg", "type"}`` (the field and the reason), the rule parser's
``{"field": "expression", "message", "position", "token", "context"}``, or a goal's
``{"message", "understood", "unknown_words", "vocabulary"}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match, Mount


class FieldError(BaseModel):
    """One refused field: where (``loc``: body / query / path, then the path inside it), and why."""

    loc: list[str | int] = Field(description="e.g. [\"body\", \"meta\", \"episodes\"]")
    field: str = Field(description="the field as one dotted name, e.g. meta.episodes (empty for the whole body)")
    msg: str = Field(description="the reason")
    type: str = Field(description="the kind of error (pydantic's error type, or 'limit' for a server cap)")


class ExpressionError(BaseModel):
    """A rule expression the whitelist parser refused."""

    field: str
    message: str
    position: int | None = None
    token: str | None = None
    context: str | None = Field(None, description="the expression with a caret under the position")


class GoalErrorDetail(BaseModel):
    """A goal that was not fully understood."""

    message: str
    understood: list[str] = Field(default_factory=list)
    unknown_words: list[str] = Field(default_factory=list)
    vocabulary: dict[str, Any] | list[Any] | None = None


class ErrorOut(BaseModel):
    """The body of every error answer."""

    detail: str | list[FieldError] | ExpressionError | GoalErrorDetail = Field(
        description="a one-line reason; for 422 the refused fields, an expression error or a goal error"
    )


#: What each status means wherever it is declared (routes add their own words where they know more).
REASONS: dict[int, str] = {
    400: "malformed request body (not JSON)",
    401: "missing or invalid bearer token",
    403: "forbidden",
    404: "no such resource",
    409: "conflict with the resource's state",
    413: "request body too large (PLASTICITY_MAX_BODY_BYTES)",
    422: "invalid request: the detail names each field and the reason",
    429: "too many active jobs or benchmarks for this token (PLASTICITY_MAX_CONCURRENT_JOBS)",
    503: "the database (or the rule language) is unavailable; try again later",
}


def errors(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` of a route: each code with :class:`ErrorOut`; ``described`` as ``e404="no such job"``."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorOut, "description": described.get(f"e{code}", REASONS[code])}
    return out


def _field(loc: list[Any]) -> str:
    inner = loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc
    return ".".join(str(part) for part in inner)


def field_errors(items: list[Any]) -> list[dict[str, Any]]:
    """Validation problems (pydantic's or ``service.api.limits``') as :class:`FieldError` dicts."""
    out = []
    for item in items:
        loc = list(item.get("loc") or [])
        out.append({"loc": [p if isinstance(p, int) else str(p) for p in loc], "field": _field(loc),
                    "msg": str(item.get("msg", "")), "type": str(item.get("type", "value_error"))})
    return out


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the request's path answers (the ``Allow`` header of a 405)."""
    routes = [r for r in request.app.router.routes if not isinstance(r, Mount)]
    allowed = []
    for method in _METHODS:
        scope = {**request.scope, "method": method}
        if any(route.matches(scope)[0] == Match.FULL for route in routes):
            allowed.append(method)
    return allowed


async def http_error(request: Request, exc: Exception) -> JSONResponse:
    """``HTTPException``: the detail in :class:`ErrorOut`'s shape; a 405 names every method of the path."""
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    detail: Any = exc.detail
    if exc.status_code == 405:
        allowed = _allowed_methods(request)
        if allowed:
            headers["Allow"] = ", ".join(allowed)
        detail = f"method {request.method} is not allowed here; allowed: {headers.get('Allow', '')}"
    elif exc.status_code == 400:
        detail = f"malformed request body: {exc.detail}"
    if isinstance(detail, list):
        detail = field_errors(detail)
    return JSONResponse(status_code=exc.status_code, content={"detail": jsonable_encoder(detail)},
                        headers=headers or None)


async def validation_error(request: Request, exc: Exception) -> JSONResponse:
    """A request that does not fit the schema: 422 with the field and the reason of each problem; a body that
    is not JSON at all: 400."""
    assert isinstance(exc, RequestValidationError)
    problems = list(exc.errors())
    if problems and all(p.get("type") == "json_invalid" for p in problems):
        return JSONResponse(status_code=400, content={"detail": "malformed request body: not valid JSON"})
    return JSONResponse(status_code=422, content={"detail": field_errors(problems)})
