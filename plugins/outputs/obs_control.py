"""The ``obs`` output: drives OBS Studio over obs-websocket 5 (obsws-python) while the anchor is on air.

On :meth:`ObsControl.open` it connects and ensures, idempotently, a scene for the anchor holding a media source
that shows our stream (``media_url``, e.g. the RTMP URL the ``rtmp`` output pushes to) and text sources for
captions and a lower third, and makes that scene the program. Then it follows the stream's events: scenes switch on
speech started / ended and on script cues, captions follow :class:`~anchorcast.media.Caption` events (a partial ASR
result replaces the line, a final one stays until the next, and the line is cleared a few seconds after speech
ends), an interrupt clears them.

Frames are ignored (``live = False``: this output never paces the stream). Every OBS call runs on the output's own
worker thread fed by a queue, so ``event()`` returns at once and the playout thread never waits on the network.
When OBS goes away the worker reconnects with backoff and re-applies the scene, the sources and the current state.
A wrong password is one clear error and no retries: retrying cannot fix it.

```toml
[outputs.obs]                      # the password comes from $OBS_WEBSOCKET_PASSWORD, never from the profile
media_url = "rtmp://127.0.0.1:1935/live/anchor"
lower_third = "Anna Anchor, anchorcast news"
switch_on_speech = { started = "anchorcast", ended = "wide" }
```
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import AnchorcastError, InputError
from anchorcast.media import (
    AudioChunk,
    Caption,
    Cue,
    Event,
    Interrupt,
    SpeechEnded,
    SpeechStarted,
    StreamFormat,
    VideoFrame,
)

if TYPE_CHECKING:
    from anchorcast.host import Host

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 3.0
"""For the TCP connect, the websocket upgrade and every request: a hung OBS must not hang the worker."""

HEALTH_CHECK_S = 1.0
"""An idle connection is checked this often, so that a restarted OBS is noticed (and re-set) promptly."""

BACKOFF_S = (0.25, 0.5, 1.0, 2.0, 3.0)
"""Delays between connection attempts; the last one repeats. Refused connections on loopback cost nothing."""

CLOSE_TIMEOUT_S = 10.0

MEDIA_KIND = "ffmpeg_source"
TEXT_KIND = "text_ft2_source_v2"

# obs-websocket 5 WebSocketCloseCode and RequestStatus values
CLOSE_AUTHENTICATION_FAILED = 4009
CLOSE_UNSUPPORTED_RPC_VERSION = 4010
STATUS_RESOURCE_NOT_FOUND = 600

# OBS alignment flags: centre is 0
ALIGN_LEFT, ALIGN_TOP, ALIGN_BOTTOM = 1, 4, 8

SPEECH_SWITCH_KEYS = ("started", "ended")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- settings ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObsSettings:
    """The ``[outputs.obs]`` table, checked."""

    host: str = "127.0.0.1"
    port: int = 4455
    password_env: str = "OBS_WEBSOCKET_PASSWORD"
    required: bool = False
    scene: str = "anchorcast"
    media_source: str = "anchorcast media"
    media_url: str = ""
    caption_source: str = "anchorcast captions"
    lower_third_source: str = "anchorcast lower third"
    lower_third: str = ""
    font: str = "Sans Serif"
    switch_on_speech: dict[str, str] = field(default_factory=dict)
    cue_scenes: bool = True
    caption_hold_s: float = 4.0

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> ObsSettings:
        """Checks what the profile schema cannot: the speech switch table, names that must not be empty."""
        switch = settings.get("switch_on_speech") or {}
        for key, value in switch.items():
            if key not in SPEECH_SWITCH_KEYS:
                raise InputError(
                    f"obs output: switch_on_speech.{key}: unknown key; allowed: {', '.join(SPEECH_SWITCH_KEYS)}",
                    hint='e.g. switch_on_speech = { started = "anchorcast", ended = "wide" }',
                )
            if not isinstance(value, str) or not value.strip():
                raise InputError(f"obs output: switch_on_speech.{key} must be a scene name, got {value!r}")
        env = settings.get("password_env", cls.password_env)
        if env and not _ENV_NAME.fullmatch(env):
            raise InputError(
                "obs output: password_env is not an environment variable name",
                hint="password_env names the variable that holds the password (e.g. OBS_WEBSOCKET_PASSWORD); "
                "the password itself never goes in a profile",
            )
        for key in ("scene", "caption_source", "lower_third_source", "media_source"):
            if not str(settings.get(key, getattr(cls, key))).strip():
                raise InputError(f"obs output: {key} must not be empty")
        names = [
            settings.get(k, getattr(cls, k)) for k in ("media_source", "caption_source", "lower_third_source")
        ]
        if len(set(names)) != len(names) or settings.get("scene", cls.scene) in names:
            raise InputError(
                "obs output: scene, media_source, caption_source and lower_third_source must be four different "
                "names (OBS source names are unique)"
            )
        known = {name for name in cls.__dataclass_fields__}
        return cls(
            **{k: v for k, v in settings.items() if k in known and k != "switch_on_speech"},
            switch_on_speech=dict(switch),
        )

    def password(self) -> str | None:
        return os.environ.get(self.password_env) if self.password_env else None


# --- what OBS should show (pure logic) ---------------------------------------------------------------------


@dataclass
class AnchorState:
    """The program scene and caption line the events so far ask for; ``clear_at`` is when (monotonic seconds)
    the caption line is due to be cleared."""

    scene: str
    caption: str = ""
    speaking: bool = False
    clear_at: float | None = None
    cue_pts: float | None = None

    def apply(self, event: Event, now: float, settings: ObsSettings) -> None:
        switch = settings.switch_on_speech
        hold = settings.caption_hold_s
        if isinstance(event, Cue):
            if settings.cue_scenes and event.name:
                self.scene = event.name
                self.cue_pts = event.pts
        elif isinstance(event, SpeechStarted):
            self.speaking = True
            self.clear_at = None
            # a cue names the scene for its own segment: it outranks the generic speech-started scene
            if "started" in switch and not (self.cue_pts is not None and abs(self.cue_pts - event.pts) < 1e-6):
                self.scene = switch["started"]
        elif isinstance(event, SpeechEnded):
            self.speaking = False
            if "ended" in switch:
                self.scene = switch["ended"]
            self.clear_at = now + hold if hold > 0 and self.caption else None
        elif isinstance(event, Caption):
            self.caption = event.text.strip()
            self.clear_at = now + hold if hold > 0 and not self.speaking else None
        elif isinstance(event, Interrupt):
            self.caption, self.clear_at, self.speaking = "", None, False

    def expire(self, now: float) -> None:
        if self.clear_at is not None and now >= self.clear_at:
            self.caption, self.clear_at = "", None


# --- one connection ------------------------------------------------------------------------------------------


class ObsUnreachable(AnchorcastError):
    """OBS cannot be reached now; trying again later may work."""


class ObsRequestError(Exception):
    """OBS answered a request with an error status."""

    def __init__(self, request: str, code: int, comment: str) -> None:
        super().__init__(f"{request} failed (code {code}){': ' + comment if comment else ''}")
        self.request, self.code, self.comment = request, code, comment


class _ConnectionLost(Exception):
    """The websocket broke in the middle of a request."""


def _quiet_obsws_logging() -> None:
    # obsws-python's client logs a traceback for every refused connection: a retry loop would flood the log.
    # This plugin reports connection problems itself, once each. (It never hands obsws-python the password,
    # which that client would also log.)
    logging.getLogger("obsws_python.baseclient.ObsClient").setLevel(logging.CRITICAL)


def _auth_string(password: str, salt: str, challenge: str) -> str:
    """obs-websocket 5's challenge response: base64(sha256(base64(sha256(password + salt)) + challenge))."""
    secret = base64.b64encode(hashlib.sha256((password + salt).encode()).digest())
    return base64.b64encode(hashlib.sha256(secret + challenge.encode()).digest()).decode()


class ObsSession:
    """An identified obs-websocket 5 connection (obsws-python's ``ObsClient`` underneath) with typed errors."""

    def __init__(self, client: Any) -> None:
        self._client = client

    @classmethod
    def connect(cls, settings: ObsSettings, password: str | None) -> ObsSession:
        """Connects and identifies. Raises :class:`ObsUnreachable` (worth retrying) or
        :class:`~anchorcast.errors.InputError` (a wrong or missing password: retrying cannot help)."""
        import websocket
        from obsws_python.baseclient import ObsClient

        _quiet_obsws_logging()
        where = f"OBS at {settings.url}"
        try:
            client = ObsClient(host=settings.host, port=settings.port, password="", timeout=CONNECT_TIMEOUT_S)
        except ConnectionRefusedError:
            raise ObsUnreachable(
                f"{where} is not reachable (connection refused): OBS is not running or its WebSocket server is off",
                hint="start OBS and enable Tools > WebSocket Server Settings > Enable WebSocket server "
                f"(port {settings.port})",
            ) from None
        except (TimeoutError, websocket.WebSocketTimeoutException):
            raise ObsUnreachable(f"{where} did not answer within {CONNECT_TIMEOUT_S:.0f} s") from None
        except websocket.WebSocketBadStatusException as error:
            raise ObsUnreachable(
                f"{where}: something else listens there (HTTP status {error.status_code}, not obs-websocket)"
            ) from None
        except (OSError, ValueError, websocket.WebSocketException) as error:
            raise ObsUnreachable(
                f"{where} is not reachable: {getattr(error, 'strerror', None) or error}"
            ) from None
        session = cls(client)
        try:
            session._identify(settings, password)
        except BaseException:
            session.close()
            raise
        return session

    def _identify(self, settings: ObsSettings, password: str | None) -> None:
        import websocket

        where = f"OBS at {settings.url}"
        hello = self._client.server_hello
        if not isinstance(hello, dict) or hello.get("op") != 0:
            raise ObsUnreachable(f"{where} did not greet like obs-websocket 5 (OBS 28 or newer is needed)")
        payload: dict[str, Any] = {"op": 1, "d": {"rpcVersion": 1, "eventSubscriptions": 0}}
        challenge = hello.get("d", {}).get("authentication")
        if challenge:
            if not password:
                source = (
                    f"the environment variable {settings.password_env} is not set"
                    if settings.password_env
                    else "password_env is empty"
                )
                raise InputError(
                    f"{where} asks for a password, but {source}",
                    hint=f"export {settings.password_env or 'OBS_WEBSOCKET_PASSWORD'}=... with the password from "
                    "OBS's Tools > WebSocket Server Settings",
                )
            payload["d"]["authentication"] = _auth_string(password, challenge["salt"], challenge["challenge"])
        try:
            ws = self._client.ws
            ws.send(json.dumps(payload))
            opcode, data = ws.recv_data()
        except (OSError, websocket.WebSocketException) as error:
            raise ObsUnreachable(f"{where} dropped the connection while identifying: {error}") from None
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
            reason = data[2:].decode(errors="replace")
            if code == CLOSE_AUTHENTICATION_FAILED:
                raise InputError(
                    f"OBS rejected the password (close code 4009) from the environment variable "
                    f"{settings.password_env} ({where})",
                    hint="use the password shown in OBS's Tools > WebSocket Server Settings; anchorcast will not "
                    "retry with the same password",
                )
            if code == CLOSE_UNSUPPORTED_RPC_VERSION:
                raise InputError(f"{where} does not speak obs-websocket RPC version 1: {reason}")
            raise ObsUnreachable(f"{where} closed the connection while identifying (code {code}: {reason})")
        try:
            reply = json.loads(data)
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or reply.get("op") != 2:
            raise ObsUnreachable(f"{where} did not confirm the identification: {str(data)[:120]}")

    def request(self, kind: str, data: dict[str, Any] | None = None) -> dict[str, Any]:
        """One request; its response data (empty when none). Raises :class:`ObsRequestError` when OBS says no
        and :class:`_ConnectionLost` when the connection is gone."""
        try:
            reply = self._client.req(kind, data)
        except Exception as error:  # socket and websocket errors, obsws-python's timeout, EOF (an empty reply)
            raise _ConnectionLost(f"{kind}: {type(error).__name__}: {error}") from None
        if not isinstance(reply, dict) or "requestStatus" not in reply:
            raise _ConnectionLost(f"{kind}: unexpected reply {str(reply)[:120]}")
        status = reply["requestStatus"]
        if not status.get("result"):
            raise ObsRequestError(kind, int(status.get("code", 0)), str(status.get("comment") or ""))
        return reply.get("responseData") or {}

    def close(self) -> None:
        try:
            self._client.ws.close(timeout=1)
        except Exception:  # already broken: nothing left to close
            log.debug("closing the OBS websocket failed", exc_info=True)


# --- the anchor's scene ------------------------------------------------------------------------------------


def ensure_anchor_scene(session: ObsSession, settings: ObsSettings) -> None:
    """Makes sure OBS has the anchor's scene with its sources, creating only what is missing and reusing inputs
    of the same names (added to the scene when they are elsewhere). Safe to repeat: nothing is duplicated.

    Raises :class:`~anchorcast.errors.InputError` when OBS refuses, e.g. a name is taken by a source of the wrong
    kind."""
    try:
        _ensure(session, settings)
    except ObsRequestError as error:
        raise InputError(
            f"OBS refused to set up the anchor's scene {settings.scene!r}: {error}",
            hint="a source with one of the obs output's names may already exist with another kind: rename it in "
            "OBS or change scene / media_source / caption_source / lower_third_source",
        ) from None


def _ensure(session: ObsSession, settings: ObsSettings) -> None:
    video = session.request("GetVideoSettings")
    width, height = float(video.get("baseWidth") or 1920), float(video.get("baseHeight") or 1080)
    scenes = {scene["sceneName"] for scene in session.request("GetSceneList").get("scenes", [])}
    if settings.scene not in scenes:
        session.request("CreateScene", {"sceneName": settings.scene})
    inputs = {item["inputName"]: item["inputKind"] for item in session.request("GetInputList").get("inputs", [])}

    text_style = {"outline": True, "drop_shadow": False, "antialiasing": True}
    wanted: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []  # name, kind, settings, transform
    if settings.media_url:
        media = {
            "is_local_file": False, "input": settings.media_url, "restart_on_activate": False,
            "close_when_inactive": False, "clear_on_media_end": False, "buffering_mb": 1,
            "reconnect_delay_sec": 2, "hw_decode": False, "looping": False,
        }  # fmt: skip
        fill = {
            "positionX": 0.0, "positionY": 0.0, "alignment": ALIGN_LEFT | ALIGN_TOP,
            "boundsType": "OBS_BOUNDS_SCALE_INNER", "boundsAlignment": 0, "boundsWidth": width,
            "boundsHeight": height,
        }  # fmt: skip
        wanted.append((settings.media_source, MEDIA_KIND, media, fill))
    lower_third = {
        "text": settings.lower_third, **text_style,
        "font": {"face": settings.font, "size": max(12, round(height / 13)), "style": "Regular", "flags": 0},
    }  # fmt: skip
    wanted.append((settings.lower_third_source, TEXT_KIND, lower_third, {
        "positionX": width * 0.05, "positionY": height * 0.80, "alignment": ALIGN_LEFT | ALIGN_BOTTOM,
    }))  # fmt: skip
    captions = {
        "text": "", **text_style, "word_wrap": True, "custom_width": round(width * 0.9),
        "font": {"face": settings.font, "size": max(12, round(height / 16)), "style": "Regular", "flags": 0},
    }  # fmt: skip
    wanted.append((settings.caption_source, TEXT_KIND, captions, {
        "positionX": width / 2, "positionY": height * 0.95, "alignment": ALIGN_BOTTOM,
    }))  # fmt: skip

    for name, kind, input_settings, transform in wanted:
        existing = inputs.get(name)
        if existing is None:
            created = session.request("CreateInput", {
                "sceneName": settings.scene, "inputName": name, "inputKind": kind,
                "inputSettings": input_settings, "sceneItemEnabled": True,
            })  # fmt: skip
            _place(session, settings.scene, int(created["sceneItemId"]), transform)
            continue
        if kind == TEXT_KIND and not existing.startswith("text_"):
            raise InputError(
                f"OBS already has a source named {name!r} of kind {existing!r}; captions need a text source",
                hint="rename that source in OBS, or set caption_source / lower_third_source to another name",
            )
        if existing == MEDIA_KIND and kind == MEDIA_KIND:
            session.request("SetInputSettings", {
                "inputName": name, "inputSettings": {"is_local_file": False, "input": settings.media_url},
                "overlay": True,
            })  # fmt: skip
        elif kind == MEDIA_KIND:
            log.info("OBS source %r is a %s, not a media source: left as it is", name, existing)
        try:
            session.request("GetSceneItemId", {"sceneName": settings.scene, "sourceName": name})
        except ObsRequestError as error:
            if error.code != STATUS_RESOURCE_NOT_FOUND:
                raise
            added = session.request("CreateSceneItem", {
                "sceneName": settings.scene, "sourceName": name, "sceneItemEnabled": True,
            })  # fmt: skip
            _place(session, settings.scene, int(added["sceneItemId"]), transform)
    if settings.lower_third and settings.lower_third_source in inputs:
        session.request("SetInputSettings", {
            "inputName": settings.lower_third_source, "inputSettings": {"text": settings.lower_third},
            "overlay": True,
        })  # fmt: skip
    missing = set(settings.switch_on_speech.values()) - scenes - {settings.scene}
    if missing:
        log.warning(
            "OBS has no scene named %s (switch_on_speech): switches to it are skipped",
            ", ".join(repr(s) for s in sorted(missing)),
        )


def _place(session: ObsSession, scene: str, item: int, transform: dict[str, Any]) -> None:
    session.request(
        "SetSceneItemTransform", {"sceneName": scene, "sceneItemId": item, "sceneItemTransform": transform}
    )


# --- the output ----------------------------------------------------------------------------------------------

_STOP = object()


class ObsControl:
    """The ``obs`` output (see the module docstring). ``metrics()`` reports connection and latency counters."""

    live = False

    def __init__(self, settings: ObsSettings) -> None:
        self.settings = settings
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._worker: threading.Thread | None = None
        self._fatal: AnchorcastError | None = None
        self._session: ObsSession | None = None
        self._state = AnchorState(settings.scene)
        self._shown_scene: str | None = None
        self._shown_caption: str | None = None
        self._warned: set[str] = set()
        self._counts = {"connects": 0, "connection_losses": 0, "failed_attempts": 0, "request_errors": 0}
        self._latencies_ms: deque[float] = deque(maxlen=500)
        self._lost_at: float | None = None
        self._reconnect_s: list[float] = []

    # --- the Output protocol ---------------------------------------------------------------------------------

    def open(self, fmt: StreamFormat) -> None:
        """Connects, ensures the anchor's scene and starts the worker. OBS unreachable: an error when
        ``required``, otherwise a warning and the worker keeps trying. A rejected password is always an error."""
        self.close()
        settings = self.settings
        self._fatal = None
        self._state = AnchorState(settings.scene)
        self._shown_scene = self._shown_caption = None
        self._queue = queue.SimpleQueue()
        first_attempt_failed = False
        try:
            self._connect_and_apply()
        except ObsUnreachable as error:
            if settings.required:
                raise InputError(str(error), hint=error.hint) from None
            log.warning("%s; the stream goes on and the obs output keeps trying to connect", error)
            first_attempt_failed = True
        self._worker = threading.Thread(
            target=self._run, args=(first_attempt_failed,), name="anchorcast-obs", daemon=True
        )
        self._worker.start()

    def write(self, frame: VideoFrame, audio: AudioChunk) -> None:
        if self._fatal is not None:  # found by the worker after a reconnect: this output leaves the stream
            raise self._fatal

    def event(self, event: Event) -> None:
        if isinstance(event, (SpeechStarted, SpeechEnded, Caption, Cue, Interrupt)):
            self._queue.put((time.monotonic(), event))

    def close(self) -> None:
        """Clears the caption line (when connected) and disconnects. Safe to call more than once."""
        worker, self._worker = self._worker, None
        if worker is not None:
            self._queue.put(_STOP)
            worker.join(CLOSE_TIMEOUT_S)
            if worker.is_alive():
                log.warning("the obs output's worker did not stop within %.0f s", CLOSE_TIMEOUT_S)
                return
        self._disconnect()

    # --- figures ---------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._session is not None

    def metrics(self) -> dict[str, Any]:
        """Counters and timings: connects, connection losses, failed attempts, request errors, event-to-OBS
        latency in ms (queued to acknowledged by OBS) and the seconds each reconnect took after a loss."""
        latencies = sorted(self._latencies_ms)

        def pick(q: float) -> float | None:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

        return {
            **self._counts,
            "connected": self.connected,
            "event_to_obs_ms": {
                "count": len(latencies),
                "p50": pick(0.5),
                "p95": pick(0.95),
                "max": round(latencies[-1], 1) if latencies else None,
            },
            "reconnect_s": [round(s, 2) for s in self._reconnect_s],
        }

    # --- the worker ------------------------------------------------------------------------------------------

    def _connect_and_apply(self) -> None:
        """One attempt: connect, ensure the scene, show the current state."""
        settings = self.settings
        started = time.monotonic()
        session = ObsSession.connect(settings, settings.password())
        try:
            ensure_anchor_scene(session, settings)
            self._shown_scene = self._shown_caption = None
            self._sync(session)
        except _ConnectionLost as error:
            session.close()
            raise ObsUnreachable(
                f"OBS at {settings.url} dropped the connection while setting up: {error}"
            ) from None
        except BaseException:
            session.close()
            raise
        self._session = session
        self._counts["connects"] += 1
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info("obs output: connected to OBS at %s and set up scene %r in %.0f ms", settings.url, settings.scene,
                 elapsed_ms)  # fmt: skip

    def _run(self, start_disconnected: bool) -> None:
        attempts = 1 if start_disconnected else 0
        next_attempt = time.monotonic() + BACKOFF_S[0] if start_disconnected else 0.0
        last_contact = time.monotonic()
        pending_since: float | None = None  # when the oldest event not yet shown in OBS was queued
        while True:
            now = time.monotonic()
            clear_at = self._state.clear_at if self._state.clear_at is not None else now + 60
            wake = min(clear_at, last_contact + HEALTH_CHECK_S if self._session else next_attempt)
            stopping, queued = self._take_events(max(0.0, wake - now))
            if queued is not None and pending_since is None:
                pending_since = queued
            self._state.expire(time.monotonic())
            if stopping:
                self._state.caption = ""
                self._sync_quietly()
                return

            if self._session is None:
                if time.monotonic() < next_attempt:
                    continue
                try:
                    self._connect_and_apply()
                except ObsUnreachable as error:
                    self._counts["failed_attempts"] += 1
                    level = logging.WARNING if attempts == 0 else logging.DEBUG
                    log.log(level, "obs output: %s; retrying with backoff", error)
                    next_attempt = time.monotonic() + BACKOFF_S[min(attempts, len(BACKOFF_S) - 1)]
                    attempts += 1
                    continue
                except AnchorcastError as error:
                    self._fatal = error
                    log.error("obs output: %s (no more attempts)", error)
                    return
                if self._lost_at is not None:
                    self._reconnect_s.append(time.monotonic() - self._lost_at)
                    log.info("obs output: reconnected after %.1f s", self._reconnect_s[-1])
                    self._lost_at = None
                attempts, last_contact, pending_since = 0, time.monotonic(), None  # an outage is no latency
                continue

            try:
                if self._sync(self._session):
                    last_contact = time.monotonic()
                    if pending_since is not None:
                        self._latencies_ms.append((last_contact - pending_since) * 1000)
                elif time.monotonic() - last_contact >= HEALTH_CHECK_S:
                    self._session.request("GetVersion")
                    last_contact = time.monotonic()
                pending_since = None
            except _ConnectionLost as error:
                self._counts["connection_losses"] += 1
                self._lost_at = time.monotonic()
                log.warning("obs output: lost the connection to OBS (%s); reconnecting", error)
                self._disconnect()
                attempts, next_attempt = 0, time.monotonic()

    def _take_events(self, timeout: float) -> tuple[bool, float | None]:
        """Waits up to ``timeout`` for events, then applies every queued one to the wanted state (a burst of
        partial captions becomes one OBS call). Returns (stop requested, when the oldest event was queued)."""
        items: list[Any] = []
        try:
            items.append(self._queue.get(timeout=timeout))
            while True:
                items.append(self._queue.get_nowait())
        except queue.Empty:
            pass
        stopping, oldest = False, None
        now = time.monotonic()
        for item in items:
            if item is _STOP:
                stopping = True
                continue
            queued, event = item
            self._state.apply(event, now, self.settings)
            oldest = queued if oldest is None else oldest
        return stopping, oldest

    def _sync(self, session: ObsSession) -> bool:
        """Sends what differs between the wanted state and what OBS was last told; True when it sent anything.
        Refusals are logged, not retried; when our own scene or caption source vanished (deleted in OBS) the
        scene is ensured again first."""
        state = self._state
        changes: list[tuple[str, dict[str, Any], str]] = []
        if self._shown_scene != state.scene:
            changes.append(
                ("SetCurrentProgramScene", {"sceneName": state.scene}, f"switching to scene {state.scene!r}")
            )
        if self._shown_caption != state.caption:
            text = {
                "inputName": self.settings.caption_source,
                "inputSettings": {"text": state.caption},
                "overlay": True,
            }
            changes.append(("SetInputSettings", text, "setting the caption"))
        for kind, data, what in changes:
            try:
                session.request(kind, data)
            except ObsRequestError as error:
                ours = kind == "SetInputSettings" or data.get("sceneName") == self.settings.scene
                if error.code != STATUS_RESOURCE_NOT_FOUND or not ours:
                    self._refused(error, what)
                    continue
                try:
                    ensure_anchor_scene(session, self.settings)
                    session.request(kind, data)
                except (ObsRequestError, InputError) as again:
                    self._refused(again, what)
        self._shown_scene, self._shown_caption = state.scene, state.caption
        return bool(changes)

    def _refused(self, error: Exception, what: str) -> None:
        """Logs a refusal once per kind of change (captions may come several times a second)."""
        self._counts["request_errors"] += 1
        level = logging.DEBUG if what in self._warned else logging.WARNING
        self._warned.add(what)
        log.log(level, "obs output: OBS refused %s: %s", what, error)

    def _sync_quietly(self) -> None:
        if self._session is None:
            return
        with contextlib.suppress(_ConnectionLost):
            self._sync(self._session)

    def _disconnect(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            session.close()


# --- registration ------------------------------------------------------------------------------------------


def _make_output(host: Host, settings: dict[str, Any]) -> ObsControl:
    return ObsControl(ObsSettings.from_settings(settings))


@hookimpl
def anchorcast_register_outputs(host: Host, register: Any) -> None:
    register(
        "obs",
        _make_output,
        settings={
            "host": Setting(str, "127.0.0.1", help="where OBS's WebSocket server runs"),
            "port": Setting(
                int,
                4455,
                help="obs-websocket port (OBS: Tools > WebSocket Server Settings)",
                minimum=1,
                maximum=65535,
            ),
            "password_env": Setting(
                str,
                "OBS_WEBSOCKET_PASSWORD",
                help="the environment variable holding the obs-websocket password (never the password itself)",
            ),
            "required": Setting(
                bool,
                False,
                help="true: OBS unreachable at start is an error; false: the stream goes on and the output keeps "
                "trying to connect",
            ),
            "scene": Setting(str, "anchorcast", help="the anchor's scene, created when missing"),
            "media_source": Setting(str, "anchorcast media", help="the media source showing the anchor's stream"),
            "media_url": Setting(
                str,
                "",
                help="what the media source plays, e.g. the rtmp output's URL rtmp://127.0.0.1:1935/live/anchor "
                "(empty: no media source is made or changed)",
            ),
            "caption_source": Setting(str, "anchorcast captions", help="the text source for captions"),
            "lower_third_source": Setting(
                str, "anchorcast lower third", help="the text source for the lower third"
            ),
            "lower_third": Setting(str, "", help="the lower third's text (a name, a title)"),
            "font": Setting(
                str,
                "Sans Serif",
                help="font face for new text sources (pick one with your captions' script, e.g. Noto "
                "Sans CJK KR for Korean)",
            ),
            "switch_on_speech": Setting(
                dict,
                {},
                help='scenes to switch to when speech starts / ends, e.g. { started = "anchorcast", '
                'ended = "wide" }',
            ),
            "cue_scenes": Setting(bool, True, help="a script cue names the scene to switch to"),
            "caption_hold_s": Setting(
                float,
                4.0,
                help="seconds a caption stays after speech ends (0: until the next caption)",
                minimum=0,
                maximum=3600,
            ),
        },
        summary="controls OBS Studio over obs-websocket 5: the anchor's scene, captions, scene switches",
    )
