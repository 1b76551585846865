"""One session: a profile on air until it is deleted, with its own host, scheduler, clock and outputs.

The profile's ``[source]`` is replaced by the session's :class:`~anchorcast.server.control.ControlSource` (what
the API says), its voice by a :class:`~anchorcast.server.voices.VoiceRouter`, and a preview output is added. The
run happens on the session's own thread; the API's calls (say, audio, interrupt, cue) only queue work for it.
"""

from __future__ import annotations

import glob
import logging
import threading
import time
from pathlib import Path
from typing import Any, Literal

from anchorcast import hookimpl
from anchorcast.errors import AnchorcastError
from anchorcast.host import Host
from anchorcast.media import Cue, Event, FloatAudio, Interrupt, UtteranceEnded, UtteranceStarted
from anchorcast.profile import Profile
from anchorcast.scheduler import Scheduler
from anchorcast.server.choices import profile_scenes
from anchorcast.server.coefficients import CoefficientOutput
from anchorcast.server.control import ControlSource, QueueFull, Utterance
from anchorcast.server.engines import EnginePool
from anchorcast.server.fanout import Fanout
from anchorcast.server.preview import PreviewOutput
from anchorcast.server.voices import VoiceRouter, voice_stage
from anchorcast_plugins.outputs.webrtc.output import WebRtcOutput

log = logging.getLogger(__name__)

SessionState = Literal["starting", "idle", "speaking", "stopping", "stopped", "failed"]

STOP_TIMEOUT_S = 60.0
"""How long a delete waits for the outputs to finish (an MP4's index, an RTMP stream's end)."""


class NotOnAir(AnchorcastError):
    """409: the session is starting, stopping or has ended."""


class _SessionPlugin:
    """The session's own hook implementations on its host: events and metrics reach the session from there,
    exactly as they reach any plugin."""

    def __init__(self, session: Session) -> None:
        self._session = session

    @hookimpl
    def anchorcast_event(self, host: Host, event: Event) -> None:
        self._session._on_event(event)

    @hookimpl
    def anchorcast_metrics(self, host: Host, report: dict[str, Any]) -> None:
        self._session._on_metrics(report)


def event_json(event: Event, session: str) -> dict[str, Any]:
    """An event as the WebSocket sends it: ``type``, the session, the wall-clock ``time`` and its fields."""
    body: dict[str, Any] = {"type": event.kind, "session": session, "time": time.time()}
    for name in type(event).__dataclass_fields__:
        value = getattr(event, name)
        if isinstance(value, tuple):
            value = [{"label": t.label, "start": t.start, "end": t.end} for t in value]
        body[name] = value
    return body


class Session:
    """A running profile. Create with :meth:`start`; :meth:`stop` finalises every output."""

    def __init__(self, session_id: str, profile: Profile, host: Host, *, max_queue: int = 32,
                 preview_fps: float = 10.0, engines: EnginePool | None = None,
                 ice_servers: list[str] | None = None) -> None:
        self.id = session_id
        self.profile = profile
        self.created_at = time.time()
        self.state: SessionState = "starting"
        self.error: str | None = None
        self.events: Fanout[dict[str, Any]] = Fanout(maxsize=2000)
        self.source = ControlSource()
        self.max_queue = max_queue
        self.preview = PreviewOutput(preview_fps)
        self.webrtc = WebRtcOutput(ice_servers)
        self.coefficients = CoefficientOutput()
        self.report: dict[str, Any] = {}
        self.engines = engines
        self.utterances: dict[str, Utterance] = {}
        self._history: list[Utterance] = []
        self._say_latencies: list[float] = []  # ms from queued to first frame on air, recent utterances
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._done = threading.Event()
        self._scheduler: Scheduler | None = None
        self.host = host
        host.plugins.register_module(_SessionPlugin(self))
        self.host.session = session_id
        self._thread = threading.Thread(target=self._run, name=f"anchorcast-session-{session_id}", daemon=True)

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> None:
        """Starts the run and waits until the outputs are open and the first frame is due; a session that
        cannot start raises :class:`AnchorcastError` with the reason."""
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop()
            raise AnchorcastError(f"session {self.id} did not start within {timeout:.0f} s")
        if self.state == "failed":
            self._thread.join()
            raise AnchorcastError(f"session could not start: {self.error}")

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> dict[str, Any]:
        """Ends the session: queued speech is dropped, every output is closed (a file is finalised, an RTMP
        stream ended). Returns the final metrics report. Safe to call twice."""
        with self._lock:
            if self.state not in ("stopped", "failed"):
                self.state = "stopping"
            scheduler = self._scheduler
        self.source.interrupt()
        for utterance in self.pending():
            self._finish(utterance, "interrupted")
        self.source.close()
        if scheduler is not None:
            scheduler.stop()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        if self._thread.is_alive():
            raise AnchorcastError(f"session {self.id}: its outputs did not close within {timeout:.0f} s")
        return self.report

    @property
    def running(self) -> bool:
        return self.state in ("idle", "speaking")

    def _run(self) -> None:
        profile = self.profile
        try:
            voice = VoiceRouter(self.host, profile.voice or voice_stage(self.host, "espeak"), self.source.voice_for)
            engine = self.engines.acquire(self.host, profile.engine, profile.stream) if self.engines else None
            if engine is not None:
                self.webrtc.matte_source = lambda: engine.matte
            try:
                self.host.run(
                    profile, source=self.source, voice=voice, engine=engine,
                    extra_outputs=[("preview", self.preview), ("webrtc", self.webrtc), ("coefficients", self.coefficients)],
                    on_ready=self._on_ready,
                )
            finally:
                if engine is not None:
                    engine.close()  # the host has closed it already unless the run failed before opening it
        except AnchorcastError as error:
            self.error = str(error)
            log.warning("session %s: %s", self.id, error)
        except Exception as error:
            self.error = f"{type(error).__name__}: {error}"
            log.exception("session %s failed", self.id)
        finally:
            self.report = self.host.last_report or self.report
            with self._lock:
                self.state = "failed" if self.error else "stopped"
            self._ready.set()
            self._done.set()
            self.preview.close()
            self.webrtc.close()  # the host closed it already unless the run failed before opening it
            self.coefficients.close()
            self.events.publish({"type": "session_ended", "session": self.id, "time": time.time(),
                                 "state": self.state, "error": self.error})
            self.events.close()

    def _on_ready(self, scheduler: Scheduler) -> None:
        with self._lock:
            self._scheduler = scheduler
            if self.state == "starting":
                self.state = "idle"
        self._ready.set()

    # --- what the API asks -----------------------------------------------------------------------------

    def say(self, text: str, voice: str | None = None, interrupt: bool = False) -> Utterance:
        if voice:
            voice_stage(self.host, voice)  # an unknown voice is refused now, not when it would speak
        return self._queue(Utterance(self.source.new_id(), "text", text=text, voice=voice), interrupt)

    def play(self, samples: FloatAudio, interrupt: bool = False) -> Utterance:
        return self._queue(Utterance(self.source.new_id(), "audio", samples=samples), interrupt)

    def open_stream(self, interrupt: bool = False) -> Utterance:
        return self._queue(Utterance(self.source.new_id(), "stream"), interrupt)

    def pending(self) -> list[Utterance]:
        """The utterances not yet aired to their end, in the order they play (on air first)."""
        with self._lock:
            return [u for u in self.utterances.values() if u.state in ("queued", "speaking")]

    def interrupt(self, reason: str = "api") -> list[Utterance]:
        """Silence and the idle anchor from the next frame; every queued utterance is dropped."""
        self.source.interrupt()
        dropped = self.pending()
        for utterance in dropped:
            self._finish(utterance, "interrupted")
        scheduler = self._scheduler
        if scheduler is not None:
            scheduler.interrupt(reason)
        self._refresh_state()
        return dropped

    def cue(self, scene: str | None, lower_third: str | None, data: dict[str, Any] | None = None) -> None:
        """The event a script's ``[cue: ...]`` line makes, from the next frame to air."""
        extra = dict(data or {})
        if lower_third is not None:
            extra["lower_third"] = lower_third
        self.host.post_event(Cue(self.host.next_pts, scene or "", extra))

    def _queue(self, utterance: Utterance, interrupt: bool) -> Utterance:
        if not self.running:
            raise NotOnAir(f"session {self.id} is {self.state}: it takes no more speech")
        if interrupt:
            self.interrupt("say")
        elif len(waiting := self.pending()) >= self.max_queue:
            raise QueueFull(f"session {self.id} already has {len(waiting)} utterances waiting to air "
                            f"(at most {self.max_queue})")
        self.source.enqueue(utterance)
        with self._lock:
            self.utterances[utterance.id] = utterance
            self._history.append(utterance)
            del self._history[:-200]
            self.state = "speaking"
        self.events.publish({"type": "utterance_queued", "session": self.id, "time": time.time(),
                             "utterance": utterance.id, "kind": utterance.kind, "text": utterance.text})
        return utterance

    # --- from the playout thread -------------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if isinstance(event, (UtteranceStarted, UtteranceEnded)):
            utterance = self.utterances.get(event.utterance)
            if utterance is not None:
                if isinstance(event, UtteranceStarted):
                    utterance.state, utterance.started_at, utterance.start_pts = "speaking", time.time(), event.pts
                    self._say_latencies.append((utterance.started_at - utterance.queued_at) * 1000)
                    del self._say_latencies[:-500]
                else:
                    utterance.end_pts = event.pts
                    self._finish(utterance, "done")
        body = event_json(event, self.id)
        if isinstance(event, UtteranceEnded) and (utterance := self.utterances.get(event.utterance)):
            body["duration"] = utterance.duration
        self.events.publish(body)
        if isinstance(event, (UtteranceEnded, Interrupt)):
            self._refresh_state()

    def _on_metrics(self, report: dict[str, Any]) -> None:
        self.report = report

    def _finish(self, utterance: Utterance, state: Literal["done", "interrupted"]) -> None:
        if utterance.state in ("done", "interrupted"):
            return
        utterance.state = state
        utterance.ended_at = time.time()
        if state == "interrupted":
            self.events.publish({"type": "utterance_interrupted", "session": self.id, "time": utterance.ended_at,
                                 "utterance": utterance.id})
        self._refresh_state()

    def _refresh_state(self) -> None:
        with self._lock:
            if self.state in ("idle", "speaking"):
                busy = any(u.state in ("queued", "speaking") for u in self.utterances.values())
                self.state = "speaking" if busy else "idle"
            for finished in [k for k, u in self.utterances.items() if u.state in ("done", "interrupted")
                             and u not in self._history]:
                del self.utterances[finished]

    # --- what the API shows ----------------------------------------------------------------------------------

    def files(self) -> list[Path]:
        """The files the session's outputs write (those that exist), with the parts a recording went on in
        after a full disk (``NAME-part2.mp4``, ...)."""
        paths = [Path(str(stage.settings["path"])) for stage in self.profile.outputs.values()
                 if isinstance(stage.settings.get("path"), (str, Path))]
        parts = [part for path in paths
                 for part in sorted(path.parent.glob(f"{glob.escape(path.stem)}-part*{glob.escape(path.suffix)}"),
                                    key=lambda p: (len(p.name), p.name))]
        return [path for path in [*paths, *parts] if path.exists()]

    def summary(self) -> dict[str, Any]:
        return {"id": self.id, "profile": str(self.profile.path.stem if self.profile.path else ""),
                "state": self.state, "created_at": self.created_at}

    def detail(self) -> dict[str, Any]:
        scheduler = self._scheduler
        report = scheduler.report() if scheduler is not None and self.running else self.report
        latency = report.get("stages", {}).get("audio_to_air", {})
        outputs = []
        failed = set(report.get("failed_outputs", {})) - set(report.get("resumed_outputs", {}))
        for label, stage in self.profile.outputs.items():
            outputs.append({"name": label, "use": stage.use, "state": "failed" if label in failed else
                            ("open" if self.running else self.state),
                            "metrics": report.get("outputs", {}).get(label, {})})
        return {
            **self.summary(),
            "error": self.error,
            "stream": {"width": self.profile.stream.width, "height": self.profile.stream.height,
                       "fps": float(self.profile.stream.fps), "sample_rate": self.profile.stream.sample_rate},
            "engine": self.profile.engine.use,
            "scenes": profile_scenes(self.profile),
            "queue": [u.summary() for u in self.pending()],
            "outputs": outputs,
            "webrtc": self.webrtc.describe(),
            "metrics": {
                "frames": report.get("frames", 0),
                "fps": report.get("frames_per_second", 0.0),
                "overruns": report.get("overruns", 0),
                "latency_p50_ms": latency.get("p50_ms"),
                "latency_p95_ms": latency.get("p95_ms"),
                "interrupts": report.get("interrupts", 0),
                "dropped_frames": report.get("dropped_frames", 0),
                "say_to_air_p50_ms": _percentile(self._say_latencies, 50),
                "say_to_air_p95_ms": _percentile(self._say_latencies, 95),
            },
            "report": report,
        }


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))], 1)

