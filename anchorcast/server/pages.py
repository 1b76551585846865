"""The pages the server serves to browsers (plain HTML, CSS and JavaScript inside the package: no CDN, no build
step): ``/console``, the operator console, and ``/overlay/{session}``, the anchor cut out on a transparent page for
an OBS Browser Source.

The page and its files carry no secret, so they load without the token; everything they show comes from the API,
which asks for it. The console takes the token in its sign-in form (or ``/console?token=``, removed from the
address bar at once) and keeps it for the browser tab only (``sessionStorage``). The overlay's address carries the
session's watch key instead (``?watch=``), which watches that session and does nothing else.
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI, HTTPException
from fastapi.responses import HTMLResponse, Response

_CONSOLE = {"console.js": "text/javascript", "whep.js": "text/javascript", "console.css": "text/css"}
_OVERLAY = {"overlay.js": "text/javascript", "overlay.css": "text/css"}
_REVALIDATE = {"Cache-Control": "no-cache"}


def static_file(folder: str, name: str) -> bytes:
    """A file the package ships under ``anchorcast/server/static/FOLDER``."""
    return (resources.files("anchorcast.server") / "static" / folder / name).read_bytes()


def mount_pages(app: FastAPI) -> None:
    @app.get("/console", include_in_schema=False)
    async def console() -> HTMLResponse:
        return HTMLResponse(static_file("console", "index.html"), headers=_REVALIDATE)

    @app.get("/static/console/{name}", include_in_schema=False)
    async def console_asset(name: str) -> Response:
        if name not in _CONSOLE:
            raise HTTPException(404, f"no such file: {name}")
        return Response(static_file("console", name), media_type=_CONSOLE[name], headers=_REVALIDATE)

    @app.get("/overlay/{session_id}", include_in_schema=False)
    async def overlay(session_id: str) -> HTMLResponse:
        return HTMLResponse(static_file("overlay", "index.html"), headers=_REVALIDATE)

    @app.get("/static/overlay/{name}", include_in_schema=False)
    async def overlay_asset(name: str) -> Response:
        if name not in _OVERLAY:
            raise HTTPException(404, f"no such file: {name}")
        return Response(static_file("overlay", name), media_type=_OVERLAY[name], headers=_REVALIDATE)
