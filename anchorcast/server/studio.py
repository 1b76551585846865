"""The sessions of one server, the limits they live under and the folders they may read and write.

A profile named over the API is a bundled profile or a ``NAME.toml`` in the configured profile folder, never a
path. Files a session writes (an output's ``path``) land in its own folder under the output folder; a path that
would leave it is refused, as is a ``set`` that points a component at a file outside the folders the server
was given.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anchorcast.errors import AnchorcastError, ProfileError
from anchorcast.host import Host
from anchorcast.profile import Profile, bundled_profiles, read_toml
from anchorcast.server.engines import EnginePool
from anchorcast.server.session import Session

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class NotFound(AnchorcastError):
    """404: no such session (or profile)."""


class Forbidden(AnchorcastError):
    """403: a path outside the folders the server may use."""


class Conflict(AnchorcastError):
    """409: a session with that id exists (or is starting)."""


class AtCapacity(AnchorcastError):
    """503: the server already runs as many sessions as it may."""


@dataclass(frozen=True)
class ServerLimits:
    """What one client request may ask for (every limit answers with a clear JSON error)."""

    max_sessions: int = 8
    max_queue: int = 32
    max_text_chars: int = 5000
    max_audio_seconds: float = 300.0
    max_body_bytes: int = 32 * 1024 * 1024


@dataclass
class StudioConfig:
    profiles_dir: Path | None = None
    """A folder of extra profiles clients may name (besides the bundled ones)."""
    outputs_dir: Path = field(default_factory=lambda: Path("anchorcast-sessions"))
    limits: ServerLimits = field(default_factory=ServerLimits)
    preview_fps: float = 10.0
    share_engines: bool = True
    """Sessions with the same engine, settings and stream format share one loaded engine."""
    ice_servers: list[str] = field(default_factory=list)
    """STUN/TURN servers for WebRTC viewers; none: host candidates only (enough on a LAN)."""


class Studio:
    """Creates, lists and deletes sessions; thread-safe."""

    def __init__(self, config: StudioConfig) -> None:
        self.config = config
        self.outputs_dir = config.outputs_dir.expanduser().resolve()
        self.profiles_dir = config.profiles_dir.expanduser().resolve() if config.profiles_dir else None
        self._sessions: dict[str, Session] = {}
        self.engines = EnginePool()
        self._starting: set[str] = set()  # ids of sessions being created
        self._voice_names: list[str] | None = None
        self.overlay_for: Callable[[str], str] | None = None
        """A session's overlay address with its watch key: set by the server once it knows its address and token
        (an ``obs`` output with ``browser_source = true`` puts it into OBS)."""
        self._lock = threading.Lock()

    # --- profiles ------------------------------------------------------------------------------------------

    def profile_names(self) -> list[str]:
        names = set(bundled_profiles())
        if self.profiles_dir and self.profiles_dir.is_dir():
            names |= {p.stem for p in self.profiles_dir.glob("*.toml")}
        return sorted(names)

    def voice_names(self) -> list[str]:
        """The voice plugins a session may use (those a profile without a ``[plugins]`` table may load)."""
        if self._voice_names is None:
            self._voice_names = Host.for_profile(None, {}).plugins.names("voice")
        return self._voice_names

    def find_profile(self, name: str) -> Path:
        """A bundled profile or one in the profile folder, by name: never an arbitrary path."""
        if not _NAME.match(name) or (name.endswith(".toml") and not _NAME.match(name[:-5])):
            raise ProfileError(f"profile {name!r}: give a profile's name (letters, digits, - _ .), not a path")
        stem = name[:-5] if name.endswith(".toml") else name
        if self.profiles_dir is not None:
            candidate = self.profiles_dir / f"{stem}.toml"
            if candidate.is_file():
                return candidate
        bundled = bundled_profiles()
        if stem in bundled:
            return bundled[stem]
        raise NotFound(f"profile {name!r}: no such profile; available: {', '.join(self.profile_names())}")

    def load(self, session_id: str, name: str, assignments: dict[str, Any]) -> tuple[Profile, Host]:
        """The validated profile for a new session, its output paths moved into the session's folder, and the
        host (with the profile's plugin policy) that validated it and will run it."""
        path = self.find_profile(name)
        raw = read_toml(path)
        folder = self.outputs_dir / session_id
        overrides = list(assignments.items())
        for key in assignments:
            if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
                raise ProfileError(f"set: {key!r} is not a dotted key such as engine.use")
        host = Host.for_profile(path, raw)
        profile = host.load_profile(path, raw=raw, overrides=overrides)
        self._check_read_paths(profile, assignments)
        for label, stage in profile.outputs.items():
            value = stage.settings.get("path")
            if isinstance(value, (str, Path)):
                stage.settings["path"] = self._output_path(folder, f"outputs.{label}.path", str(value))
        return profile, host

    def _output_path(self, folder: Path, key: str, value: str) -> str:
        candidate = Path(value).expanduser()
        if candidate.is_absolute() or ".." in candidate.parts:
            raise Forbidden(f"{key}: {value!r}: a session writes only inside its own folder; give a plain "
                            "file name (it goes to the server's output folder)")
        target = (folder / candidate).resolve()
        if not target.is_relative_to(self.outputs_dir):
            raise Forbidden(f"{key}: {value!r} leaves the server's output folder")
        target.parent.mkdir(parents=True, exist_ok=True)
        return str(target)

    def _check_read_paths(self, profile: Any, assignments: dict[str, Any]) -> None:
        """A file or folder setting that came from the request must lie inside the folders the server was
        given (the profile folder, the output folder): the API is no way to read the server's files."""
        roots = [root for root in (self.profiles_dir, self.outputs_dir) if root is not None]
        for stage in profile.stages:
            for name, value in stage.settings.items():
                key = f"{stage.table}.{name}"
                if key not in assignments or not isinstance(value, Path):
                    continue
                resolved = value.resolve()
                if not any(resolved.is_relative_to(root) for root in roots):
                    raise Forbidden(f"set {key}: {assignments[key]!r} is outside the folders this server may read")

    # --- sessions ----------------------------------------------------------------------------------------

    def create(self, profile_name: str, assignments: dict[str, Any], session_id: str | None = None) -> Session:
        limits = self.config.limits
        with self._lock:
            if len(self._sessions) + len(self._starting) >= limits.max_sessions:
                raise AtCapacity(f"this server already runs {len(self._sessions)} sessions (at most "
                                 f"{limits.max_sessions}); delete one or start the server with --max-sessions")
            session_id = session_id or secrets.token_hex(4)
            if session_id in self._sessions or session_id in self._starting:
                raise Conflict(f"session {session_id!r} already exists")
            self._starting.add(session_id)
        try:
            profile, host = self.load(session_id, profile_name, assignments)
            profile.pace = "realtime"
            if self.overlay_for is not None:
                host.overlay = {"url": self.overlay_for(session_id), "width": profile.stream.width,
                                "height": profile.stream.height}
            session = Session(session_id, profile, host, max_queue=limits.max_queue,
                              preview_fps=self.config.preview_fps, ice_servers=self.config.ice_servers,
                              engines=self.engines if self.config.share_engines else None)
            session.start()
            with self._lock:
                self._sessions[session_id] = session
        finally:
            with self._lock:
                self._starting.discard(session_id)
        log.info("session %s started (%s)", session_id, profile_name)
        return session

    def get(self, session_id: str) -> Session:
        with self._lock:
            session = self._sessions.get(session_id)
        if session is None:
            raise NotFound(f"no session {session_id!r}")
        return session

    def list(self) -> list[Session]:
        with self._lock:
            return list(self._sessions.values())

    def delete(self, session_id: str) -> dict[str, Any]:
        session = self.get(session_id)
        try:
            return session.stop()
        finally:
            with self._lock:
                self._sessions.pop(session_id, None)
            log.info("session %s stopped", session_id)

    def close(self) -> None:
        """Stops every session (the server is shutting down)."""
        for session in self.list():
            try:
                self.delete(session.id)
            except AnchorcastError as error:
                log.error("%s", error)
