"""The dashboard: three static files from the package, no build step and no CDN.

The page holds no data; it reads the API with the browser's cookie (``taskwarden_token``)
when tokens are configured, so the page and its assets are served without auth.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response

__all__ = ["web_router"]

web_router = APIRouter(include_in_schema=False)

_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}


@cache
def _asset(name: str) -> bytes:
    return resources.files("taskwarden.web").joinpath(name).read_bytes()


@web_router.get("/", response_model=None)
async def dashboard(request: Request) -> Response:
    """The dashboard page (a mounted app redirects ``/mount`` to ``/mount/`` first, so the
    page's relative URLs resolve under the mount)."""
    if not request.url.path.endswith("/"):
        return RedirectResponse(request.url.replace(path=request.url.path + "/"), 307)
    return HTMLResponse(_asset("index.html"), headers={"Cache-Control": "no-cache"})


@web_router.get("/static/{name}", response_model=None)
async def asset(name: str) -> Response:
    """One of the dashboard's assets, from an allow-list."""
    media_type = _ASSETS.get(name)
    if media_type is None:
        return PlainTextResponse("not found", status_code=404)
    return Response(_asset(name), media_type=media_type, headers={"Cache-Control": "no-cache"})
