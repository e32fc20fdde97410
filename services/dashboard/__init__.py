"""The live dashboard: a static page (index.html, app.js, app.css) shipped inside the package.

`mount_dashboard(app)` serves the shell at `/dashboard` and its two assets at `/dashboard/static/<name>`.
The shell holds no data and needs no token: every number on the page comes from the `/v1` API, which the
page calls with the `Authorization: Bearer` header (the token is typed into the page or passed once in the
URL fragment `#token=...`, which browsers never send to a server). Nothing is loaded from anywhere else:
the Content-Security-Policy below allows this origin only.

This module knows nothing about runs, Redis or Ray; it only serves files.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI, HTTPException
from fastapi.responses import Response

ASSETS_DIR = Path(__file__).resolve().parent

# The only files served, with their content types: a fixed list, so no request can reach any other file.
STATIC_FILES: dict[str, str] = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
}
INDEX_FILE = "index.html"

_HEADERS = {
    # Same-origin only: no CDN, no inline script, no external fonts; data is fetched from this API alone.
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # The assets are tiny; always revalidate so a new install is picked up without a hard reload.
    "Cache-Control": "no-cache",
}


def _file_response(name: str, media_type: str) -> Response:
    path = ASSETS_DIR / name
    try:
        body = path.read_bytes()
    except FileNotFoundError as err:  # a broken install: say which file is missing
        raise HTTPException(status_code=500, detail=f"dashboard asset {name} is not installed at {path}") from err
    return Response(content=body, media_type=media_type, headers=_HEADERS)


def dashboard_router() -> APIRouter:
    """Routes of the dashboard shell; none of them appears in the OpenAPI schema."""
    router = APIRouter(include_in_schema=False)

    @router.api_route("/dashboard", methods=["GET", "HEAD"])
    @router.api_route("/dashboard/", methods=["GET", "HEAD"])
    def index() -> Response:
        return _file_response(INDEX_FILE, "text/html; charset=utf-8")

    @router.api_route("/dashboard/static/{name}", methods=["GET", "HEAD"])
    def static(name: str) -> Response:
        media_type = STATIC_FILES.get(name)
        if media_type is None:
            raise HTTPException(status_code=404, detail=f"no dashboard asset named {name!r}")
        return _file_response(name, media_type)

    return router


def mount_dashboard(app: FastAPI) -> None:
    """Serve the dashboard shell at `/dashboard` and its assets at `/dashboard/static/<name>`."""
    app.include_router(dashboard_router())
