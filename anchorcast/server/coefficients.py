"""``WS /v1/sessions/{id}/coefficients``: each aired frame's expression coefficients, with its media timestamp.

The face3d engine tags every picture with its 53 ARKit-named weights (:func:`anchorcast.media.tag_image`); they
reach the session's outputs as ``VideoFrame.side_data["coefficients"]``. :class:`CoefficientOutput`, an output of
every session like the preview and WebRTC ones, hands each frame's coefficients and sound to the server's event
loop (only while someone listens), which serialises them once and gives the same bytes to every listener, so a
viewer costs one WebSocket send a frame: the browser page
(``/avatar3d/{session}``) renders the head itself.

Messages, after the first ``{"type": "expressions", "names": [...], "fps": 25, "sample_rate": 16000}``:

* by default, text: ``{"type": "coefficients", "index": 12, "pts": 0.48, "weights": [53 numbers, 3 decimals]}``
  (``pts`` in seconds on the session's media clock: the frame shows at ``index / fps``);
* with ``?audio=pcm``, one binary message a frame carrying the frame's sound too, so a page can play it and
  apply the weights on the audio's own clock (little-endian; see :data:`HEADER`): ``u8 kind (1)``, ``u8
  version (1)``, ``u16 weight count (0: this frame has none)``, ``u32 index``, ``f64 pts``, ``f64 audio pts``,
  ``u32 sample rate``, ``u32 sample count``, then the weights as float32 and the samples as int16.

A listener that falls more than :data:`BACKLOG` frames behind loses the oldest (the session never waits for it).
A session whose engine tags no coefficients is closed after :data:`NO_COEFFICIENTS_FRAMES` frames with code
:data:`NO_COEFFICIENTS` and a reason naming the engine; a session that ends closes with 1000.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import struct
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

from anchorcast.media import AudioChunk, StreamFormat, VideoFrame
from anchorcast.server.auth import COOKIE, bearer, token_matches, watch_key
from anchorcast.server.websockets_common import close as _close
from anchorcast.server.websockets_common import deny as _deny

HEADER = struct.Struct("<BBHIddII")
"""The binary message's header (32 bytes, so the float32 weights after it are aligned)."""
BACKLOG = 50
"""Frames (2 s at 25 fps) a listener may fall behind before the oldest are dropped."""
NO_COEFFICIENTS_FRAMES = 25
NO_COEFFICIENTS = 4415
"""The close code when the session's engine gives no coefficients (4000-4999: the application's own)."""


@dataclass(frozen=True, slots=True)
class Packet:
    """One frame, serialised once for every listener: ``text`` is None when the frame has no coefficients;
    ``binary`` is made only while an ``?audio=pcm`` listener is connected."""

    index: int
    text: str | None
    binary: bytes | None


@functools.cache
def shipped_expression_names() -> tuple[str, ...]:
    """The face3d asset's expression names: the order the engine tags its coefficients in."""
    from anchorcast_plugins.engines.face3d.asset import SHIPPED_ASSET

    with np.load(SHIPPED_ASSET) as asset:
        return tuple(str(name) for name in asset["expression_names"])


class Listener:
    """One WebSocket's queue on the server's event loop: the newest :data:`BACKLOG` packets."""

    def __init__(self, audio: bool) -> None:
        self.audio = audio
        self.queue: collections.deque[Packet | None] = collections.deque(maxlen=BACKLOG)
        self.ready = asyncio.Event()
        self.dropped = 0

    def put(self, packet: Packet | None) -> None:
        if len(self.queue) == self.queue.maxlen and packet is not None:
            self.dropped += 1
        self.queue.append(packet)
        self.ready.set()

    async def next(self) -> Packet | None:
        """The next packet; None once the session has ended."""
        while not self.queue:
            self.ready.clear()
            await self.ready.wait()
        return self.queue.popleft()


class CoefficientOutput:
    """Serialises each frame's coefficients once and hands them to the listeners (see the module docstring)."""

    live = False

    def __init__(self) -> None:
        self.fmt: StreamFormat | None = None
        self.names: tuple[str, ...] = ()
        self.engine_gives_coefficients: bool | None = None
        self.serialised = 0
        self._listeners: list[Listener] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._closed = False

    # --- the Output protocol (the playout thread) -----------------------------------------------------

    def open(self, fmt: StreamFormat) -> None:
        self.fmt = fmt

    def write(self, frame: VideoFrame, audio: AudioChunk) -> None:
        """Hands the frame's coefficients and sound (references, no copy) to the event loop, which serialises
        them: the playout thread spends microseconds here, as it does on the preview."""
        listeners, loop = self._listeners, self._loop
        if not listeners or loop is None:
            return
        weights = frame.side_data.get("coefficients")
        names = frame.side_data.get("expression_names")
        with contextlib.suppress(RuntimeError):  # the loop closed: the server is going
            loop.call_soon_threadsafe(self._serialise, frame.index, frame.pts, weights, names, audio)

    def _serialise(self, index: int, pts: float, weights: Any, names: Any, audio: AudioChunk) -> None:
        """On the event loop: one text (and, for ``?audio=pcm`` listeners, one binary) message for everyone."""
        listeners = self._listeners
        self.engine_gives_coefficients = weights is not None or bool(self.engine_gives_coefficients)
        text = None
        if weights is not None:
            weights = np.asarray(weights, np.float32).reshape(-1)
            self.names = tuple(names or self.names or (shipped_expression_names() if len(weights) == 53 else ()))
            text = json.dumps({"type": "coefficients", "index": index, "pts": round(pts, 6),
                               "weights": np.round(weights.astype(np.float64), 3).tolist()}, separators=(",", ":"))
        binary = self._binary(index, pts, audio, weights) if any(lst.audio for lst in listeners) else None
        self.serialised += 1
        self._deliver(Packet(index, text, binary))

    def close(self) -> None:
        self._closed = True
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._deliver, None)

    @staticmethod
    def _binary(index: int, pts: float, audio: AudioChunk, weights: np.ndarray | None) -> bytes:
        pcm = (np.clip(audio.samples, -1.0, 1.0) * 32767).astype("<i2")
        values = np.zeros(0, "<f4") if weights is None else weights.astype("<f4")
        head = HEADER.pack(1, 1, len(values), index, pts, audio.pts, audio.sample_rate, len(pcm))
        return head + values.tobytes() + pcm.tobytes()

    # --- listeners (the server's event loop) ----------------------------------------------------------------

    def _deliver(self, packet: Packet | None) -> None:
        for listener in self._listeners:
            listener.put(packet)

    def listen(self, audio: bool) -> Listener:
        listener = Listener(audio)
        self._loop = asyncio.get_running_loop()
        if self._closed:
            listener.put(None)
        with self._lock:
            self._listeners = [*self._listeners, listener]  # copy on write: the playout thread reads it unlocked
        return listener

    def forget(self, listener: Listener) -> None:
        with self._lock:
            self._listeners = [other for other in self._listeners if other is not listener]

    @property
    def listeners(self) -> int:
        return len(self._listeners)


def offered_credential(websocket: WebSocket) -> str | None:
    """The token or watch key a WebSocket handshake carries (header, ``?token=``, ``?watch=`` or the cookie)."""
    query = websocket.query_params
    return (bearer(websocket.headers.get("authorization")) or query.get("token") or query.get("watch")
            or websocket.cookies.get(COOKIE))


def may_watch(token: str, session_id: str, offered: str | None) -> bool:
    """The server's token, or the session's watch key, which lets its holder watch that session only."""
    return token_matches(token, offered) or token_matches(watch_key(token, session_id), offered)


def add_coefficient_routes(app: FastAPI, studio: Any, token: str) -> None:
    @app.websocket("/v1/sessions/{session_id}/coefficients")
    async def coefficients(websocket: WebSocket, session_id: str, audio: str | None = None) -> None:
        """Each aired frame's expression coefficients (see :mod:`anchorcast.server.coefficients`)."""
        if not may_watch(token, session_id, offered_credential(websocket)):
            await _deny(websocket, 401, "a valid token or watch key is required (?token= or ?watch=)")
            return
        if audio not in (None, "pcm"):
            await _deny(websocket, 400, f"audio={audio!r}: the only audio form is pcm (int16 in binary messages)")
            return
        session = next((s for s in studio.list() if s.id == session_id), None)
        if session is None:
            await _deny(websocket, 404, f"no session {session_id!r}")
            return
        await websocket.accept()
        output: CoefficientOutput = session.coefficients
        listener = output.listen(audio == "pcm")
        try:
            await _stream(websocket, session, output, listener)
        finally:
            output.forget(listener)


async def _stream(websocket: WebSocket, session: Any, output: CoefficientOutput, listener: Listener) -> None:
    """Sends the listener's packets until the session ends or the client leaves (noticed even between frames)."""
    receiver = asyncio.ensure_future(websocket.receive())
    introduced, without = False, 0
    try:
        while True:
            item = asyncio.ensure_future(listener.next())
            done, _ = await asyncio.wait({item, receiver}, return_when=asyncio.FIRST_COMPLETED)
            if receiver in done:
                item.cancel()
                if receiver.result()["type"] == "websocket.disconnect":
                    return
                receiver = asyncio.ensure_future(websocket.receive())  # clients may ping with text
                continue
            packet = item.result()
            if packet is None:
                await _close(websocket, 1000, "the session ended")
                return
            if packet.text is None:
                without += 1
                if without >= NO_COEFFICIENTS_FRAMES and not introduced:
                    reason = (f"session {session.id}'s engine ({session.profile.engine.use}) gives no expression "
                              "coefficients: use the face3d engine")
                    await websocket.send_json({"type": "error", "detail": reason})
                    await _close(websocket, NO_COEFFICIENTS, reason)
                    return
                if not listener.audio:
                    continue
            if not introduced and packet.text is not None:
                assert output.fmt is not None
                introduced = True
                await websocket.send_json({"type": "expressions", "names": list(output.names),
                                           "fps": float(output.fmt.fps), "sample_rate": output.fmt.sample_rate})
            if listener.audio:
                if introduced and packet.binary is not None:
                    await websocket.send_bytes(packet.binary)
            elif packet.text is not None:
                await websocket.send_text(packet.text)
    except (WebSocketDisconnect, RuntimeError):
        return
    finally:
        receiver.cancel()
