"""``/docs`` (Swagger UI) and ``/redoc`` served without a CDN: the assets (JS, CSS, favicon) come from the
installed ``fastapi-offline`` package and are mounted at ``/static/apidocs``; no page names another host."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response

#: The folder of the bundled Swagger UI and ReDoc assets.
DOCS_ASSETS = Path(fastapi_offline.__file__).resolve().parent / "static"
_PREFIX = "/static/apidocs"

router = APIRouter(include_in_schema=False)


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} - Swagger UI",
        swagger_js_url=f"{_PREFIX}/swagger-ui-bundle.js",
        swagger_css_url=f"{_PREFIX}/swagger-ui.css",
        swagger_favicon_url=f"{_PREFIX}/favicon.png",
    )


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url="/openapi.json",
        title=f"{request.app.title} - ReDoc",
        redoc_js_url="/apidocs/redoc.standalone.js",
        redoc_favicon_url=f"{_PREFIX}/favicon.png",
        with_google_fonts=False,
    )


@router.get("/favicon.ico")
def favicon() -> FileResponse:
    return FileResponse(DOCS_ASSETS / "favicon.png", media_type="image/png")


#: the one outside address inside the ReDoc bundle (its "API docs by Redocly" logo), served locally instead
_REDOC_LOGO = "https://cdn.redoc.ly/redoc/logo-mini.svg"


@lru_cache(maxsize=1)
def _offline_redoc() -> str:
    """The bundled ReDoc script with its one CDN address replaced by the local favicon."""
    text = (DOCS_ASSETS / "redoc.standalone.js").read_text(encoding="utf-8")
    return text.replace(_REDOC_LOGO, f"{_PREFIX}/favicon.png")


@router.get("/apidocs/redoc.standalone.js")
def redoc_script() -> Response:
    return Response(_offline_redoc(), media_type="application/javascript",
                    headers={"Cache-Control": "public, max-age=86400"})

