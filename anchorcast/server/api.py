"""The ``/v1`` API on FastAPI: sessions, say, audio (HTTP and WebSocket), interrupt, cue, events, preview.

Errors are JSON ``{"detail": ...}`` (``"field"`` names the offending field where there is one): 400 for a
malformed or unknown field, 401 without the token, 403 for a path outside the server's folders, 404 for an
unknown session or profile, 409 when the session is not on air, 413 for a body, text or audio too long, 429
when a session's queue is full, 503 at the session limit.
"""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.middleware.cors import CORSMiddleware

from anchorcast import __version__
from anchorcast.errors import AnchorcastError, ProfileError
from anchorcast.server import docs
from anchorcast.server.auth import COOKIE, bearer, token_matches
from anchorcast.server.avatar3d import mount_avatar3d
from anchorcast.server.choices import add_choice_routes
from anchorcast.server.coefficients import add_coefficient_routes
from anchorcast.server.control import QueueFull
from anchorcast.server.fanout import Ended, Lagged, Subscription
from anchorcast.server.models import Created, CreateSession, CueRequest, Interrupted, Queued, Say
from anchorcast.server.pages import mount_pages
from anchorcast.server.pcm import PcmStream
from anchorcast.server.preview import BOUNDARY, multipart_part
from anchorcast.server.session import NotOnAir
from anchorcast.server.studio import AtCapacity, Conflict, Forbidden, NotFound, Studio
from anchorcast.server.websockets_common import close as _close
from anchorcast.server.websockets_common import deny as _deny
from anchorcast.server.whep import add_whep_routes

log = logging.getLogger(__name__)

SAFE_METHODS = ("GET", "HEAD")
bearer_scheme = HTTPBearer(auto_error=False, description="the token `anchorcast serve` printed")


class TooLarge(HTTPException):
    def __init__(self, detail: str) -> None:
        super().__init__(413, detail)


def _status_for(error: AnchorcastError) -> int:
    for kind, status in ((NotFound, 404), (Forbidden, 403), (Conflict, 409), (NotOnAir, 409), (AtCapacity, 503),
                         (ProfileError, 400)):
        if isinstance(error, kind):
            return status
    return 400


def create_app(studio: Studio, token: str, *, default_profile: str = "default",
               cors_origins: tuple[str, ...] = ()) -> FastAPI:
    limits = studio.config.limits
    app = FastAPI(title="anchorcast studio", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url=None, description=__doc__)
    app.state.studio = studio
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["*"],
                           allow_headers=["Authorization", "Content-Type"])

    # --- errors ----------------------------------------------------------------------------------------

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        first = error.errors()[0] if error.errors() else {}
        where = ".".join(str(part) for part in first.get("loc", ()) if part not in ("body", "query", "path"))
        kind = first.get("type", "")
        if kind == "json_invalid":
            message = f"malformed JSON: {first.get('ctx', {}).get('error', first.get('msg', ''))}"
        elif kind == "extra_forbidden":
            message = f"unknown field {where!r}"
        elif kind == "missing":
            message = f"{where}: required"
        else:
            message = f"{where}: {first.get('msg', 'invalid')}" if where else first.get("msg", "invalid request")
        return JSONResponse({"detail": message, "field": where or None}, status_code=400)

    @app.exception_handler(AnchorcastError)
    async def refused(request: Request, error: AnchorcastError) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(error)}
        if error.hint:
            body["hint"] = error.hint
        return JSONResponse(body, status_code=_status_for(error))

    @app.exception_handler(QueueFull)
    async def queue_full(request: Request, error: QueueFull) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, status_code=429)

    # --- the token -------------------------------------------------------------------------------------

    def offered_token(headers: Any, query: Any, cookies: Any, safe: bool) -> str | None:
        offered = bearer(headers.get("authorization"))
        if offered is None and safe:
            offered = query.get("token") or cookies.get(COOKIE)
        return offered

    def require_token(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer_scheme)) -> None:  # noqa: B008
        if not token_matches(token, offered_token(request.headers, request.query_params, request.cookies,
                                                  request.method in SAFE_METHODS)):
            raise HTTPException(401, "a valid bearer token is required (Authorization: Bearer TOKEN)",
                                headers={"WWW-Authenticate": "Bearer"})

    async def websocket_allowed(websocket: WebSocket) -> bool:
        if token_matches(token, offered_token(websocket.headers, websocket.query_params, websocket.cookies, True)):
            return True
        await _deny(websocket, 401, "a valid token is required (Authorization: Bearer TOKEN or ?token=)")
        return False

    authorized = [Depends(require_token)]

    # --- body size -------------------------------------------------------------------------------------

    @app.middleware("http")
    async def limit_body(request: Request, call_next: Any) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limits.max_body_bytes:
            return JSONResponse({"detail": f"the request body is {int(length)} bytes; at most "
                                 f"{limits.max_body_bytes} are accepted"}, status_code=413)
        return await call_next(request)

    async def read_body(request: Request) -> bytes:
        body = bytearray()
        async for block in request.stream():
            body += block
            if len(body) > limits.max_body_bytes:
                raise TooLarge(f"the request body is over {limits.max_body_bytes} bytes")
        return bytes(body)

    # --- routes ----------------------------------------------------------------------------------------

    @app.get("/v1/health", tags=["server"])
    async def health() -> dict[str, Any]:
        """Is the server up (no token needed)."""
        return {"status": "ok", "version": __version__}

    @app.post("/v1/sessions", status_code=201, response_model=Created, dependencies=authorized, tags=["sessions"])
    async def create_session(body: CreateSession, request: Request) -> Created:
        """Puts a profile on air as a new session: the idle anchor until something is said."""
        session = await run_in_threadpool(studio.create, body.profile or default_profile, dict(body.set), body.id)
        return Created(id=session.id, url=str(request.url_for("get_session", session_id=session.id)))

    @app.get("/v1/engines", dependencies=authorized, tags=["server"])
    async def engines() -> dict[str, Any]:
        """The loaded engines, how many sessions share each and how their frames were batched."""
        return {"engines": studio.engines.stats()}

    @app.get("/v1/sessions", dependencies=authorized, tags=["sessions"])
    async def list_sessions() -> dict[str, Any]:
        return {"sessions": [session.summary() for session in studio.list()]}

    @app.get("/v1/sessions/{session_id}", dependencies=authorized, tags=["sessions"])
    async def get_session(session_id: str) -> dict[str, Any]:
        """State, utterance queue, outputs and metrics (frames, fps, overruns, latency p50/p95)."""
        return studio.get(session_id).detail()

    @app.delete("/v1/sessions/{session_id}", dependencies=authorized, tags=["sessions"])
    async def delete_session(session_id: str) -> dict[str, Any]:
        """Stops the session and answers once every output is finalised (a playable file, a closed stream)."""
        session = studio.get(session_id)
        report = await run_in_threadpool(studio.delete, session_id)
        return {"id": session_id, "state": session.state, "error": session.error, "frames": report.get("frames"),
                "files": [str(p) for p in session.files()]}

    @app.post("/v1/sessions/{session_id}/say", status_code=202, response_model=Queued, dependencies=authorized,
              tags=["speech"])
    async def say(session_id: str, body: Say) -> Queued:
        """Queues text for the session's voice; ``interrupt`` drops what is queued and speaks now."""
        session = studio.get(session_id)
        if len(body.text) > limits.max_text_chars:
            raise TooLarge(f"text is {len(body.text)} characters; at most {limits.max_text_chars} in one say")
        utterance = session.say(body.text, body.voice, body.interrupt)
        return Queued(utterance=utterance.id, queue=len(session.pending()))

    @app.post("/v1/sessions/{session_id}/audio", status_code=202, response_model=Queued, dependencies=authorized,
              tags=["speech"], openapi_extra={"requestBody": {"required": True, "content": {
                  "audio/wav": {"schema": {"type": "string", "format": "binary"}}}}})
    async def post_audio(session_id: str, request: Request, interrupt: bool = False) -> Queued:
        """A WAV body (any rate, mono or stereo; other formats ffmpeg reads work too) that the anchor lip-syncs."""
        session = studio.get(session_id)
        data = await read_body(request)
        if not data:
            raise HTTPException(400, "the body is empty: send the audio file as the request body")
        samples = await run_in_threadpool(_decode_audio, session, data, limits.max_audio_seconds)
        utterance = session.play(samples, interrupt)
        return Queued(utterance=utterance.id, queue=len(session.pending()),
                      seconds=round(len(samples) / session.profile.stream.sample_rate, 3))

    @app.post("/v1/sessions/{session_id}/interrupt", response_model=Interrupted, dependencies=authorized,
              tags=["speech"])
    async def interrupt(session_id: str) -> Interrupted:
        """Silence and the idle anchor from the next frame; the queue is emptied."""
        dropped = studio.get(session_id).interrupt("api")
        return Interrupted(dropped=[u.id for u in dropped])

    @app.post("/v1/sessions/{session_id}/cue", status_code=202, dependencies=authorized, tags=["speech"])
    async def cue(session_id: str, body: CueRequest) -> dict[str, Any]:
        """The event a script's ``[cue: Scene]`` line makes: the OBS output switches scenes on it."""
        if body.scene is None and body.lower_third is None and not body.data:
            raise HTTPException(400, "give a scene, a lower_third or data")
        studio.get(session_id).cue(body.scene, body.lower_third, body.data)
        return {"queued": True}

    add_whep_routes(app, studio, token, authorized, read_body)
    add_choice_routes(app, studio, authorized, default_profile)

    @app.get("/v1/sessions/{session_id}/preview.mjpeg", dependencies=authorized, tags=["watch"])
    async def preview(session_id: str) -> StreamingResponse:
        """The anchor as multipart JPEG (no audio): open it in a browser or VLC."""
        session = studio.get(session_id)
        subscription = session.preview.frames.subscribe()

        async def parts() -> Any:
            try:
                async for jpeg in subscription:
                    yield multipart_part(jpeg)
            finally:
                subscription.close()

        return StreamingResponse(parts(), media_type=f"multipart/x-mixed-replace; boundary={BOUNDARY}",
                                 headers={"Cache-Control": "no-store"})

    @app.websocket("/v1/sessions/{session_id}/events")
    async def events(websocket: WebSocket, session_id: str) -> None:
        """JSON events as they air: utterance queued/started/ended, interrupt, cue, caption, overrun, outputs."""
        if not await websocket_allowed(websocket):
            return
        session = await _session_or_deny(websocket, studio, session_id)
        if session is None:
            return
        subscription = session.events.subscribe()
        await websocket.accept()
        await _pump(websocket, subscription)

    @app.websocket("/v1/sessions/{session_id}/audio")
    async def audio_stream(websocket: WebSocket, session_id: str, rate: int = Query(16000, ge=8000, le=96000),
                           channels: int = Query(1, ge=1, le=2), interrupt: bool = False) -> None:
        """Raw PCM s16le in binary messages (``?rate=``, ``?channels=``): one utterance while the socket is open."""
        if not await websocket_allowed(websocket):
            return
        session = await _session_or_deny(websocket, studio, session_id)
        if session is None:
            return
        try:
            utterance = session.open_stream(interrupt)
        except (AnchorcastError, QueueFull) as error:
            await _deny(websocket, 429 if isinstance(error, QueueFull) else 409, str(error))
            return
        await websocket.accept()
        await websocket.send_json({"type": "utterance", "utterance": utterance.id})
        pcm = PcmStream(rate, channels, session.profile.stream.sample_rate)
        try:
            while utterance.state in ("queued", "speaking"):
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                if message.get("bytes"):
                    utterance.push(pcm.convert(message["bytes"]))
                elif message.get("text") and _is_end(message["text"]):
                    break
        except WebSocketDisconnect:
            pass
        finally:
            if len(tail := pcm.flush()):
                utterance.push(tail)
            utterance.end_stream()
        if utterance.state == "interrupted":
            await _close(websocket, 1000, "the utterance was interrupted")
        else:
            await _close(websocket, 1000, "done")

    add_coefficient_routes(app, studio, token)
    docs.mount(app, authorized)
    mount_pages(app)
    mount_avatar3d(app, studio, token)
    return app


def _decode_audio(session: Any, data: bytes, max_seconds: float) -> np.ndarray:
    """The posted audio as mono float32 at the session's rate, through the audio-file source's decoder."""
    rate = session.profile.stream.sample_rate
    with tempfile.TemporaryDirectory(prefix="anchorcast-upload-") as folder:
        path = Path(folder) / "upload"
        path.write_bytes(data)
        factory = session.host.plugins.component("source", "audio-file").factory
        source = factory(session.host, {"path": path})
        try:
            source.open(session.profile.stream)
            pieces, total = [], 0
            for chunk in source.items():
                pieces.append(chunk.samples)
                total += len(chunk.samples)
                if total > max_seconds * rate:
                    raise TooLarge(f"the audio is longer than {max_seconds:g} s, the most one request may carry")
        except AnchorcastError as error:
            raise HTTPException(400, str(error).replace(str(path), "the posted audio")) from None
        finally:
            source.close()
    return np.concatenate(pieces) if pieces else np.zeros(0, np.float32)


def _is_end(text: str) -> bool:
    """``{"type": "end"}``: the client has sent all its audio."""
    try:
        return json.loads(text).get("type") == "end"
    except (ValueError, AttributeError):
        return False


async def _session_or_deny(websocket: WebSocket, studio: Studio, session_id: str) -> Any:
    try:
        return studio.get(session_id)
    except NotFound as error:
        await _deny(websocket, 404, str(error))
        return None


async def _pump(websocket: WebSocket, subscription: Subscription[dict[str, Any]]) -> None:
    """Sends the subscription's items until it ends or the client leaves (noticed even while idle)."""
    receiver = asyncio.ensure_future(websocket.receive())
    try:
        while True:
            item = asyncio.ensure_future(subscription.next())
            done, _ = await asyncio.wait({item, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:
                item.cancel()
                message = receiver.result()
                if message["type"] == "websocket.disconnect":
                    return
                receiver = asyncio.ensure_future(websocket.receive())  # clients may ping with text
                continue
            try:
                await websocket.send_json(item.result())
            except Ended:
                await _close(websocket, 1000, "the session ended")
                return
            except Lagged:
                await _close(websocket, 1013, "too slow: more than 2000 events behind")
                return
    except (WebSocketDisconnect, RuntimeError):
        return
    finally:
        receiver.cancel()
        subscription.close()
