"""``/avatar3d/{session}``: the browser renders the anchor's head itself from the coefficient stream.

The page (``static/avatar3d/``: HTML, its module, and three.js, its GLTFLoader and three-vrm vendored from their
npm packages with their licences) loads a model, plays the session's sound and applies each frame's expression
coefficients on the audio's clock. What it shows:

* by default the shipped head (``GET /static/avatar3d/head.glb``): made once per server from the face3d asset by
  :func:`~anchorcast_plugins.engines.face3d.gltf_export.export_glb` with sparse morph targets (5.5 MB instead of
  18 MB; gzip-compressed for browsers that take it);
* ``?model=NAME.glb`` or ``NAME.vrm``: a file in the server's ``--profiles`` folder (``GET
  /avatar3d/{session}/models/NAME``): a glTF head with ARKit-named morph targets, or a VRM avatar (its ``aa``,
  ``ih``, ``ou``, ``ee``, ``oh`` and blink expressions, mapped from the coefficients in ``avatar3d.js``);
* ``?model=/path`` or ``?model=https://...``: any address the browser may load.

The page needs the server's token or the session's watch key (``?token=`` or ``?watch=``, as the overlay takes
it): 401 without, 404 for a session that is not on air. The vendored files and the shipped head carry no secret.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from anchorcast.server.auth import COOKIE, bearer
from anchorcast.server.coefficients import may_watch

_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".md": "text/markdown"}
_MODEL_TYPES = {".glb": "model/gltf-binary", ".vrm": "model/gltf-binary"}
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_REVALIDATE = {"Cache-Control": "no-cache"}
_VENDORED = {"Cache-Control": "public, max-age=86400"}


def _static_root() -> Any:
    return resources.files("anchorcast.server") / "static" / "avatar3d"


def _static_names(folder: Any) -> dict[str, str]:
    """The files shipped in ``folder`` that the page may load, with their media types."""
    return {entry.name: _TYPES.get(Path(entry.name).suffix, "application/octet-stream")
            for entry in folder.iterdir() if entry.is_file() and not entry.name.startswith(".")}


class ShippedHead:
    """The shipped head as a glb with sparse morph targets, made on first use and kept for the server's life."""

    def __init__(self) -> None:
        self._lock = asyncio.Lock()
        self.glb: bytes | None = None
        self.gzipped: bytes | None = None

    async def get(self) -> tuple[bytes, bytes]:
        async with self._lock:
            if self.glb is None or self.gzipped is None:
                self.glb, self.gzipped = await run_in_threadpool(self._make)
        return self.glb, self.gzipped

    @staticmethod
    def _make() -> tuple[bytes, bytes]:
        from anchorcast_plugins.engines.face3d.asset import SHIPPED_ASSET, FaceModel
        from anchorcast_plugins.engines.face3d.gltf_export import export_glb

        with tempfile.TemporaryDirectory(prefix="anchorcast-head-") as folder:
            path = Path(folder) / "head.glb"
            export_glb(FaceModel.load(SHIPPED_ASSET), path, sparse=True)
            glb = path.read_bytes()
        return glb, gzip.compress(glb, 6)


def _credential(request: Request) -> str | None:
    query = request.query_params
    return (bearer(request.headers.get("authorization")) or query.get("token") or query.get("watch")
            or request.cookies.get(COOKIE))


def mount_avatar3d(app: FastAPI, studio: Any, token: str) -> None:
    head = ShippedHead()
    root = _static_root()
    page_files = _static_names(root)
    vendor_files = _static_names(root / "vendor")

    def watched_session(request: Request, session_id: str) -> Any:
        if not may_watch(token, session_id, _credential(request)):
            raise HTTPException(401, "a valid token or watch key is required: /avatar3d/SESSION?watch=KEY (the "
                                "session's overlay address gives it) or ?token=",
                                headers={"WWW-Authenticate": "Bearer"})
        session = next((s for s in studio.list() if s.id == session_id), None)
        if session is None:
            raise HTTPException(404, f"no session {session_id!r} is on air")
        return session

    @app.get("/avatar3d/{session_id}", include_in_schema=False)
    async def avatar3d(session_id: str, request: Request) -> HTMLResponse:
        watched_session(request, session_id)
        return HTMLResponse((root / "index.html").read_bytes(), headers=_REVALIDATE)

    @app.get("/static/avatar3d/head.glb", include_in_schema=False)
    async def shipped_head(request: Request) -> Response:
        glb, gzipped = await head.get()
        if "gzip" in request.headers.get("accept-encoding", ""):
            return Response(gzipped, media_type="model/gltf-binary",
                            headers={**_VENDORED, "Content-Encoding": "gzip", "Vary": "Accept-Encoding"})
        return Response(glb, media_type="model/gltf-binary", headers={**_VENDORED, "Vary": "Accept-Encoding"})

    @app.get("/static/avatar3d/vendor/{name}", include_in_schema=False)
    async def vendored(name: str) -> Response:
        if name not in vendor_files:
            raise HTTPException(404, f"no such file: {name}")
        return Response((root / "vendor" / name).read_bytes(), media_type=vendor_files[name], headers=_VENDORED)

    @app.get("/static/avatar3d/{name}", include_in_schema=False)
    async def page_file(name: str) -> Response:
        if name not in page_files or name == "index.html":
            raise HTTPException(404, f"no such file: {name}")
        return Response((root / name).read_bytes(), media_type=page_files[name], headers=_REVALIDATE)

    @app.get("/avatar3d/{session_id}/models/{name}", include_in_schema=False)
    async def user_model(session_id: str, name: str, request: Request) -> Response:
        """A glb or VRM file from the server's profile folder (plain names only: no path leaves the folder)."""
        watched_session(request, session_id)
        folder = studio.profiles_dir
        suffix = Path(name).suffix.lower()
        if not _MODEL_NAME.match(name) or suffix not in _MODEL_TYPES:
            raise HTTPException(400, f"model {name!r}: give the name of a .glb or .vrm file in the server's "
                                "profile folder")
        path = folder / name if folder is not None else None
        if path is None or not path.is_file():
            raise HTTPException(404, f"no model {name!r} in the server's profile folder"
                                + ("" if folder is not None else " (the server was started without --profiles)"))
        return Response(await run_in_threadpool(path.read_bytes), media_type=_MODEL_TYPES[suffix],
                        headers=_REVALIDATE)
