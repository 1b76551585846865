"""The ``obs`` output's worker (see :mod:`.obs_control`): one thread that owns the connection to OBS, takes the
stream's events from a bounded queue, keeps OBS showing what they ask for, and reconnects with backoff.

Every OBS call runs here, so the playout thread never waits on the network. The queue holds at most
:data:`QUEUE_LIMIT` events: while the worker cannot take them (OBS hung), the oldest are dropped and counted (OBS
commands are state updates: later ones supersede them), so memory cannot grow without limit. An error the loop does
not expect ends the worker with one log line and becomes :attr:`ObsWorker.fatal`, the error the output then raises
so that the scheduler takes it off the stream. However the worker ends, it closes its connection; and
:meth:`ObsWorker.stop` closes it too when the worker does not end in time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING, Any

from anchorcast.errors import AnchorcastError, InputError
from anchorcast_plugins.outputs.obs_session import (
    STATUS_RESOURCE_NOT_FOUND,
    ObsRequestError,
    ObsSession,
    ObsUnreachable,
    _ConnectionLost,
    ensure_anchor_scene,
)

if TYPE_CHECKING:
    from anchorcast.media import Event
    from anchorcast_plugins.outputs.obs_control import AnchorState, ObsSettings

log = logging.getLogger(__name__)

HEALTH_CHECK_S = 1.0
"""An idle connection is checked this often, so that a restarted OBS is noticed (and re-set) promptly."""

BACKOFF_S = (0.25, 0.5, 1.0, 2.0, 3.0)
"""Delays between connection attempts; the last one repeats. Refused connections on loopback cost nothing."""

QUEUE_LIMIT = 1000
"""Events waiting for the worker, at most (a burst of partial captions is a few dozen)."""

ABORT_JOIN_S = 2.0
"""How long :meth:`ObsWorker.stop` waits for a stuck worker once it has dropped the connection under it."""


class EventQueue:
    """The worker's inbox: (time queued, event) pairs, bounded, the oldest dropped (``dropped`` counts them) when
    full. A stop request is a flag, never dropped."""

    def __init__(self, limit: int = QUEUE_LIMIT) -> None:
        self.limit = limit
        self.dropped = 0
        self.stopping = False
        self._items: deque[tuple[float, Event]] = deque()
        self._ready = threading.Condition()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, event: Event) -> None:
        with self._ready:
            full = len(self._items) >= self.limit
            if full:
                self._items.popleft()
                self.dropped += 1
            self._items.append((time.monotonic(), event))
            self._ready.notify()
        if full and (self.dropped in (1, 1000) or self.dropped % 100_000 == 0):
            log.warning("obs output: OBS is not taking events; %d old ones dropped so far (the latest are kept)",
                        self.dropped)  # fmt: skip

    def stop(self) -> None:
        with self._ready:
            self.stopping = True
            self._ready.notify()

    def take(self, timeout: float) -> list[tuple[float, Event]]:
        """Waits up to ``timeout`` for an event (or a stop), then takes every queued one."""
        with self._ready:
            if not self._items and not self.stopping:
                self._ready.wait(timeout)
            items = list(self._items)
            self._items.clear()
        return items


class ObsWorker:
    """What the obs output does with OBS. :meth:`reset` and :meth:`connect` (the first attempt, on the caller's
    thread: its errors are the caller's) prepare a run, :meth:`start` starts the thread, :meth:`put` hands it an
    event, :meth:`stop` ends it and always closes the connection. Counters and timings last over runs."""

    def __init__(self, settings: ObsSettings) -> None:
        self.settings = settings
        self.fatal: AnchorcastError | None = None
        self.session: ObsSession | None = None
        self.queue = EventQueue()
        self.counts = {"connects": 0, "connection_losses": 0, "failed_attempts": 0, "request_errors": 0}
        self.latencies_ms: deque[float] = deque(maxlen=500)
        self.reconnect_s: list[float] = []
        self._dropped_before = 0  # by the queues of earlier runs
        self._state: AnchorState | None = None
        self._shown_scene: str | None = None
        self._shown_caption: str | None = None
        self._shown_lower_third: str | None = None
        self._warned: set[str] = set()
        self._lost_at: float | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------------------

    def reset(self, state: AnchorState) -> None:
        """A new run: the state to show, an empty queue, no error."""
        self._dropped_before += self.queue.dropped
        self.queue = EventQueue()
        self.fatal = None
        self._state = state
        self._shown_scene = self._shown_caption = self._shown_lower_third = None

    def connect(self) -> None:
        """One attempt: connect, ensure the scene, show the current state. Raises :class:`ObsUnreachable` or
        :class:`~anchorcast.errors.InputError` (see :meth:`ObsSession.connect`)."""
        settings = self.settings
        started = time.monotonic()
        session = ObsSession.connect(settings, settings.password())
        try:
            ensure_anchor_scene(session, settings)
            self._shown_scene = self._shown_caption = self._shown_lower_third = None
            self._sync(session)
        except _ConnectionLost as error:
            session.close()
            raise ObsUnreachable(
                f"OBS at {settings.url} dropped the connection while setting up: {error}"
            ) from None
        except BaseException:
            session.close()
            raise
        self.session = session
        self.counts["connects"] += 1
        elapsed_ms = (time.monotonic() - started) * 1000
        log.info("obs output: connected to OBS at %s and set up scene %r in %.0f ms", settings.url, settings.scene,
                 elapsed_ms)  # fmt: skip

    def start(self, start_disconnected: bool) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(start_disconnected,), name="anchorcast-obs", daemon=True
        )
        self._thread.start()

    def put(self, event: Event) -> None:
        self.queue.put(event)

    def stop(self, timeout: float) -> None:
        """Ends the worker (it clears the caption line first, when connected) and closes the connection. A worker
        still busy after ``timeout`` (a request to a hung OBS) has the connection dropped under it, which ends
        the request at once; the connection is closed in any case."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self.queue.stop()
            thread.join(timeout)
            if thread.is_alive():
                session = self.session
                if session is not None:
                    session.abort()
                thread.join(ABORT_JOIN_S)
                log.warning(
                    "obs output: the worker did not stop within %g s (OBS does not answer)%s",
                    timeout,
                    "; its connection is closed anyway" if thread.is_alive() else "; connection dropped",
                )
        self._disconnect()

    @property
    def connected(self) -> bool:
        return self.session is not None

    def metrics(self) -> dict[str, Any]:
        latencies = sorted(self.latencies_ms)

        def pick(q: float) -> float | None:
            return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))], 1) if latencies else None

        return {
            **self.counts,
            "connected": self.connected,
            "event_to_obs_ms": {
                "count": len(latencies),
                "p50": pick(0.5),
                "p95": pick(0.95),
                "max": round(latencies[-1], 1) if latencies else None,
            },
            "reconnect_s": [round(s, 2) for s in self.reconnect_s],
            "queued_events": len(self.queue),
            "dropped_events": self._dropped_before + self.queue.dropped,
        }

    # --- the thread ------------------------------------------------------------------------------------------

    def _run(self, start_disconnected: bool) -> None:
        try:
            self._loop(start_disconnected)
        except BaseException as error:  # not one the loop handles: this output leaves the stream
            self.fatal = AnchorcastError(
                f"obs output: stopped on an unexpected error: {type(error).__name__}: {error}",
                hint="a bug in the obs output or in what sent it the event; the log has the traceback",
            )
            self.fatal.__cause__ = error
            log.error("obs output: the worker stopped on an unexpected error (%s: %s); the output leaves the "
                      "stream", type(error).__name__, error, exc_info=True)  # fmt: skip
        finally:
            self._disconnect()

    def _loop(self, start_disconnected: bool) -> None:
        assert self._state is not None
        attempts = 1 if start_disconnected else 0
        next_attempt = time.monotonic() + BACKOFF_S[0] if start_disconnected else 0.0
        last_contact = time.monotonic()
        pending_since: float | None = None  # when the oldest event not yet shown in OBS was queued
        while True:
            now = time.monotonic()
            clear_at = self._state.clear_at if self._state.clear_at is not None else now + 60
            wake = min(clear_at, last_contact + HEALTH_CHECK_S if self.session else next_attempt)
            stopping, queued = self._take_events(max(0.0, wake - now))
            if queued is not None and pending_since is None:
                pending_since = queued
            self._state.expire(time.monotonic())
            if stopping:
                self._state.caption = ""
                self._sync_quietly()
                return

            if self.session is None:
                if time.monotonic() < next_attempt:
                    continue
                try:
                    self.connect()
                except ObsUnreachable as error:
                    self.counts["failed_attempts"] += 1
                    level = logging.WARNING if attempts == 0 else logging.DEBUG
                    log.log(level, "obs output: %s; retrying with backoff", error)
                    next_attempt = time.monotonic() + BACKOFF_S[min(attempts, len(BACKOFF_S) - 1)]
                    attempts += 1
                    continue
                except AnchorcastError as error:
                    self.fatal = error
                    log.error("obs output: %s (no more attempts)", error)
                    return
                if self._lost_at is not None:
                    self.reconnect_s.append(time.monotonic() - self._lost_at)
                    log.info("obs output: reconnected after %.1f s", self.reconnect_s[-1])
                    self._lost_at = None
                attempts, last_contact, pending_since = 0, time.monotonic(), None  # an outage is no latency
                continue

            try:
                if self._sync(self.session):
                    last_contact = time.monotonic()
                    if pending_since is not None:
                        self.latencies_ms.append((last_contact - pending_since) * 1000)
                elif time.monotonic() - last_contact >= HEALTH_CHECK_S:
                    self.session.request("GetVersion")
                    last_contact = time.monotonic()
                pending_since = None
            except _ConnectionLost as error:
                if self.queue.stopping:  # stop() dropped the connection under a request to a hung OBS
                    return
                self.counts["connection_losses"] += 1
                self._lost_at = time.monotonic()
                log.warning("obs output: lost the connection to OBS (%s); reconnecting", error)
                self._disconnect()
                attempts, next_attempt = 0, time.monotonic()

    def _take_events(self, timeout: float) -> tuple[bool, float | None]:
        """Waits up to ``timeout`` for events, then applies every queued one to the wanted state (a burst of
        partial captions becomes one OBS call). Returns (stop requested, when the oldest event was queued)."""
        assert self._state is not None
        items = self.queue.take(timeout)
        now = time.monotonic()
        for _, event in items:
            self._state.apply(event, now, self.settings)
        return self.queue.stopping, (items[0][0] if items else None)

    def _sync(self, session: ObsSession) -> bool:
        """Sends what differs between the wanted state and what OBS was last told; True when it sent anything.
        Refusals are logged, not retried; when our own scene or caption source vanished (deleted in OBS) the
        scene is ensured again first."""
        state = self._state
        assert state is not None
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
        if state.lower_third is not None and self._shown_lower_third != state.lower_third:
            third = {
                "inputName": self.settings.lower_third_source,
                "inputSettings": {"text": state.lower_third},
                "overlay": True,
            }
            changes.append(("SetInputSettings", third, "setting the lower third"))
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
        self._shown_lower_third = state.lower_third
        return bool(changes)

    def _refused(self, error: Exception, what: str) -> None:
        """Logs a refusal once per kind of change (captions may come several times a second)."""
        self.counts["request_errors"] += 1
        level = logging.DEBUG if what in self._warned else logging.WARNING
        self._warned.add(what)
        log.log(level, "obs output: OBS refused %s: %s", what, error)

    def _sync_quietly(self) -> None:
        if self.session is None:
            return
        with contextlib.suppress(_ConnectionLost):
            self._sync(self.session)

    def _disconnect(self) -> None:
        session, self.session = self.session, None
        if session is not None:
            session.close()
