"""The ``obs`` output: drives OBS Studio over obs-websocket 5 (obsws-python) while the anchor is on air.

On :meth:`ObsControl.open` it connects and ensures, idempotently, a scene for the anchor holding a media source
that shows our stream (``media_url``, e.g. the RTMP URL the ``rtmp`` output pushes to), text sources for captions
and a lower third and, with ``browser_source``, a Browser Source showing a studio-server session's overlay (the
anchor on a transparent background), and makes that scene the program. Then it follows the stream's events: scenes
switch on speech started / ended and on script cues, captions follow :class:`~anchorcast.media.Caption` events (a partial ASR
result replaces the line, a final one stays until the next, and the line is cleared a few seconds after speech
ends), an interrupt clears them.

Frames are ignored (``live = False``: this output never paces the stream). Every OBS call runs on the output's own
worker thread fed by a bounded queue (:mod:`.obs_worker`), so ``event()`` returns at once and the playout thread
never waits on the network. When OBS goes away the worker reconnects with backoff and re-applies the scene, the
sources and the current state. A wrong password is one clear error and no retries: retrying cannot fix it. An error
the worker does not expect fails the output (``write()`` and ``event()`` raise it: the scheduler takes the output
off the stream), and ``close()`` closes the connection even when the worker is stuck on a hung OBS.

The connection and the scene set-up are in :mod:`.obs_session`; their names are importable from here too.

```toml
[outputs.obs]                      # the password comes from $OBS_WEBSOCKET_PASSWORD, never from the profile
media_url = "rtmp://127.0.0.1:1935/live/anchor"
# browser_source = true            # under `anchorcast serve`: a Browser Source showing the session's overlay
lower_third = "Anna Anchor, anchorcast news"
switch_on_speech = { started = "anchorcast", ended = "wide" }
```
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import InputError
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
from anchorcast_plugins.outputs.obs_session import (
    ALIGN_BOTTOM,
    ALIGN_LEFT,
    ALIGN_TOP,
    CLOSE_AUTHENTICATION_FAILED,
    CLOSE_UNSUPPORTED_RPC_VERSION,
    CONNECT_TIMEOUT_S,
    MEDIA_KIND,
    STATUS_RESOURCE_NOT_FOUND,
    TEXT_KIND,
    ObsRequestError,
    ObsSession,
    ObsUnreachable,
    ensure_anchor_scene,
)
from anchorcast_plugins.outputs.obs_worker import BACKOFF_S, HEALTH_CHECK_S, QUEUE_LIMIT, ObsWorker

if TYPE_CHECKING:
    from anchorcast.host import Host

__all__ = [
    "ALIGN_BOTTOM", "ALIGN_LEFT", "ALIGN_TOP", "BACKOFF_S", "CLOSE_AUTHENTICATION_FAILED", "CLOSE_TIMEOUT_S",
    "CLOSE_UNSUPPORTED_RPC_VERSION", "CONNECT_TIMEOUT_S", "HEALTH_CHECK_S", "MEDIA_KIND", "QUEUE_LIMIT",
    "STATUS_RESOURCE_NOT_FOUND", "TEXT_KIND", "AnchorState", "ObsControl", "ObsRequestError", "ObsSession",
    "ObsSettings", "ObsUnreachable", "ObsWorker", "anchorcast_register_outputs", "ensure_anchor_scene",
]  # fmt: skip

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 10.0
"""How long ``close()`` waits for the worker before it drops the connection under it."""

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
    browser_source: bool = False
    browser_source_name: str = "anchorcast overlay"
    overlay_url: str = ""
    overlay_width: int = 1280
    overlay_height: int = 720

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
        sources = ("media_source", "caption_source", "lower_third_source", "browser_source_name")
        for key in ("scene", *sources):
            if not str(settings.get(key, getattr(cls, key))).strip():
                raise InputError(f"obs output: {key} must not be empty")
        names = [settings.get(k, getattr(cls, k)) for k in sources]
        if len(set(names)) != len(names) or settings.get("scene", cls.scene) in names:
            raise InputError(
                "obs output: scene, media_source, caption_source, lower_third_source and browser_source_name "
                "must be five different names (OBS source names are unique)"
            )
        if settings.get("browser_source") and not settings.get("overlay_url"):
            log.warning("obs output: browser_source = true adds the studio server's overlay to OBS; this run has "
                        "no server, so no Browser Source is added (run the profile with `anchorcast serve`, or "
                        "set overlay_url to a session's overlay address)")
            settings = {**settings, "browser_source": False}
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
    """The program scene, caption line and lower third the events so far ask for; ``clear_at`` is when
    (monotonic seconds) the caption line is due to be cleared. ``lower_third`` is None until a cue sets one (the
    profile's own is shown until then)."""

    scene: str
    caption: str = ""
    lower_third: str | None = None
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
            if isinstance(event.data.get("lower_third"), str):
                self.lower_third = event.data["lower_third"]
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


# --- the output ----------------------------------------------------------------------------------------------

_EVENTS = (SpeechStarted, SpeechEnded, Caption, Cue, Interrupt)


class ObsControl:
    """The ``obs`` output (see the module docstring). ``metrics()`` reports connection and latency counters."""

    live = False

    def __init__(self, settings: ObsSettings) -> None:
        self.settings = settings
        self._worker = ObsWorker(settings)

    # --- the Output protocol ---------------------------------------------------------------------------------

    def open(self, fmt: StreamFormat) -> None:
        """Connects, ensures the anchor's scene and starts the worker. OBS unreachable: an error when
        ``required``, otherwise a warning and the worker keeps trying. A rejected password is always an error."""
        self.close()
        settings = self.settings
        self._worker.reset(AnchorState(settings.scene))
        first_attempt_failed = False
        try:
            self._worker.connect()
        except ObsUnreachable as error:
            if settings.required:
                raise InputError(str(error), hint=error.hint) from None
            log.warning("%s; the stream goes on and the obs output keeps trying to connect", error)
            first_attempt_failed = True
        self._worker.start(first_attempt_failed)

    def write(self, frame: VideoFrame, audio: AudioChunk) -> None:
        self._raise_fatal()

    def event(self, event: Event) -> None:
        self._raise_fatal()
        if isinstance(event, _EVENTS):
            self._worker.put(event)

    def _raise_fatal(self) -> None:
        # found by the worker (a rejected password after a reconnect, an unexpected error): this output leaves the
        # stream
        if self._worker.fatal is not None:
            raise self._worker.fatal

    def close(self) -> None:
        """Clears the caption line (when connected) and disconnects, also when the worker is stuck (it then has
        the connection dropped under it). Safe to call more than once."""
        self._worker.stop(CLOSE_TIMEOUT_S)

    # --- figures ---------------------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._worker.connected

    def metrics(self) -> dict[str, Any]:
        """Counters and timings: connects, connection losses, failed attempts, request errors, event-to-OBS
        latency in ms (queued to acknowledged by OBS), the seconds each reconnect took after a loss, and the
        events waiting for the worker and dropped because it could not take them."""
        return self._worker.metrics()


# --- registration ------------------------------------------------------------------------------------------


def _make_output(host: Host, settings: dict[str, Any]) -> ObsControl:
    overlay = getattr(host, "overlay", None)  # a studio-server session's: {"url", "width", "height"}
    if settings.get("browser_source") and overlay and not settings.get("overlay_url"):
        settings = {**settings, "overlay_url": overlay["url"], "overlay_width": overlay["width"],
                    "overlay_height": overlay["height"]}
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
            "browser_source": Setting(
                bool,
                False,
                help="true: add (or update) a Browser Source in the scene showing the session's overlay, the "
                "anchor on a transparent background with its sound (anchorcast serve gives the address)",
            ),
            "browser_source_name": Setting(str, "anchorcast overlay", help="the Browser Source's name"),
            "overlay_url": Setting(
                str,
                "",
                help="the overlay address for the Browser Source (empty: the studio server's session's own)",
            ),
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
