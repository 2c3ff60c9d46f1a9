"""The FastAPI application: REST API under ``/api`` (OpenAPI at ``/docs``), pages, and the dispatcher's lifespan.

``create_app(settings)`` opens the database and applies the migrations (``upgrade head``) at once, loads or
generates the API token, and returns the app; the dispatcher thread starts and stops with the app's lifespan
(so with ``uvicorn`` or ``with TestClient(app)``). ``uvicorn --factory service.app:create_app`` serves it with
the settings from the environment.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from service import __version__
from service.api.auth import load_tokens
from service.api.caching import ReadCache
from service.api.errors import http_error, validation_error
from service.api.limits import BodySizeLimit
from service.api.openapi import build_openapi
from service.api.readpath import ReadFront, VersionClock
from service.api.router import api_router
from service.api.shedding import LoadShedder
from service.db.migrate import upgrade
from service.db.session import make_engine, make_session_factory
from service.runs.dispatcher import Dispatcher
from service.settings import Settings, load_settings
from service.web.apidocs import DOCS_ASSETS
from service.web.apidocs import router as apidocs_router
from service.web.datasets_page import router as datasets_pages_router
from service.web.pages import router as pages_router
from service.web.pages import warm as warm_pages

log = logging.getLogger("plasticity.service")

DESCRIPTION = """Discover, store and rank biologically plausible plasticity rules.

* **Writes** (`POST`) need `Authorization: Bearer <token>` (tokens: `PLASTICITY_API_TOKENS`, or the file
  `api_token` in the data folder, printed at start). Reads are public.
* `POST /api/jobs` takes a full spec or `{"goal": "find a rule for depth-5 online learning under feedback
  alignment with oja on mnist"}`; `GET /api/goal?text=...` shows how a goal is read without submitting it.
* `POST /api/rules` answers 201 for a new rule and 200 with the stored one when the same rule (same content hash)
  exists.
"""


def create_app(
    settings: Settings | None = None, *, workers: Any = None, dispatcher: bool | None = None
) -> FastAPI:
    """Build the app for ``settings`` (default: the environment).

    ``workers``: a stand-in for ``workers.ray_jobs`` (tests); ``dispatcher``: override
    ``settings.dispatcher_enabled``.
    """
    settings = settings or load_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(settings.database_url, settings.serving.pool)
    upgrade(engine)
    sessions = make_session_factory(engine)
    run_dispatcher = settings.dispatcher_enabled if dispatcher is None else dispatcher

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        threading.Thread(target=warm_pages, name="warm-pages", daemon=True).start()
        if run_dispatcher:
            d = Dispatcher(settings, sessions, workers)
            app.state.dispatcher = d
            d.start()
        try:
            yield
        finally:
            d = getattr(app.state, "dispatcher", None)
            if d is not None:
                d.stop()
                app.state.dispatcher = None
            app.state.version_clock.close()

    app = FastAPI(
        title="Plasticity rule discovery", version=__version__, description=DESCRIPTION, lifespan=lifespan,
        docs_url=None, redoc_url=None,
    )
    app.openapi = lambda: build_openapi(app, settings.limits)  # type: ignore[method-assign]
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = sessions
    app.state.tokens = load_tokens(settings)
    app.state.dispatcher = None

    app.add_middleware(BodySizeLimit, max_bytes=settings.limits.max_body_bytes,
                       paths={"/api/datasets": (settings.limits.max_upload_bytes, "PLASTICITY_MAX_UPLOAD_BYTES")})
    serving = settings.serving
    app.state.read_cache = ReadCache(serving.read_cache_mb * 1_048_576)
    app.state.version_clock = VersionClock(engine)
    app.state.read_builds = {}          # (URL, version) → the answer being built (service.api.readpath)
    app.state.shedder = None
    app.add_middleware(_Shedder, app_state=app.state, max_inflight=serving.max_inflight,
                       max_active=serving.max_active, queue_seconds=serving.queue_seconds)
    # outermost: a cached read is answered before admission, routing and validation (service.api.readpath)
    app.add_middleware(ReadFront, cache=app.state.read_cache, clock=app.state.version_clock)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(PoolTimeout, _pool_exhausted)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(OperationalError, _database_down)
    app.add_exception_handler(Exception, _internal_error)

    app.include_router(api_router)
    app.include_router(pages_router)
    app.include_router(apidocs_router)
    app.mount("/static/apidocs", StaticFiles(directory=str(DOCS_ASSETS)), name="apidocs")
    app.include_router(datasets_pages_router)
    app.mount(
        "/static", StaticFiles(directory=str(Path(__file__).resolve().parent / "web" / "static")), name="static"
    )
    return app


async def _database_down(request: Request, exc: Exception) -> JSONResponse:
    log.error("database error on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(status_code=503, headers={"Retry-After": "5"},
                        content={"detail": "the database is unavailable; try again later"})


class _Shedder(LoadShedder):
    """The load shedder, reachable from the app's state (``app.state.shedder``: its counters)."""

    def __init__(self, app: Any, *, app_state: Any, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        app_state.shedder = self


async def _pool_exhausted(request: Request, exc: Exception) -> JSONResponse:
    log.warning("no database connection for %s %s within the pool timeout: %s", request.method, request.url.path, exc)
    return JSONResponse(status_code=503, headers={"Retry-After": "1"},
                        content={"detail": "the server is busy (no free database connection); try again later"})


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        status_code=500, content={"detail": f"internal error ({type(exc).__name__}); see the service log"}
    )
