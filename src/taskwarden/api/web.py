"""The dashboard: static files from the package, no build step and no CDN.

``index.html`` is the page; its scripts (ES modules) and stylesheet are served under
``static/`` from an allow-list: the package's own ``*.js`` and ``*.css`` files, by exact
name. The page holds no data; it reads the API with the session cookie that
``POST /api/session`` sets when tokens are configured, so the page and its assets are
served without auth. Each answer carries an ``ETag``, so a reload revalidates with a 304.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import resources

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, RedirectResponse, Response

__all__ = ["web_router"]

web_router = APIRouter(include_in_schema=False)

_MEDIA_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
}


@cache
def _assets() -> dict[str, str]:
    """The allow-list: each static file's name and media type."""
    files = resources.files("taskwarden.web")
    assets: dict[str, str] = {}
    for entry in files.iterdir():
        suffix = entry.name[entry.name.rfind(".") :] if "." in entry.name else ""
        if entry.is_file() and suffix in _MEDIA_TYPES:
            assets[entry.name] = _MEDIA_TYPES[suffix]
    return assets


@cache
def _asset(name: str) -> tuple[bytes, str]:
    """A file's bytes and its ETag."""
    content = resources.files("taskwarden.web").joinpath(name).read_bytes()
    return content, f'"{hashlib.sha256(content).hexdigest()[:20]}"'


def _answer(request: Request, name: str, media_type: str) -> Response:
    content, etag = _asset(name)
    headers = {"Cache-Control": "no-cache", "ETag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(content, media_type=media_type, headers=headers)


@web_router.get("/", response_model=None)
async def dashboard(request: Request) -> Response:
    """The dashboard page (a mounted app redirects ``/mount`` to ``/mount/`` first, so the
    page's relative URLs resolve under the mount)."""
    if not request.url.path.endswith("/"):
        return RedirectResponse(request.url.replace(path=request.url.path + "/"), 307)
    return _answer(request, "index.html", "text/html; charset=utf-8")


@web_router.get("/static/{name}", response_model=None)
async def asset(request: Request, name: str) -> Response:
    """One of the dashboard's assets, from the allow-list."""
    media_type = _assets().get(name)
    if media_type is None:
        return PlainTextResponse("not found", status_code=404)
    return _answer(request, name, media_type)
