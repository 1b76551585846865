"""The latency-budgeted scheduler: a feeder fills the timeline, a renderer draws frames ahead of air time, and the
playout loop airs frame after frame on the audio clock.

- Audio is the master: frame ``i`` airs with the samples the :class:`~anchorcast.clock.MediaClock` gives it, and
  audio is never delayed or dropped. In live mode frame ``i`` airs at ``start + i / fps`` on the wall clock, where
  ``start`` is when the first audio entered the host plus ``latency_budget_ms``.
- The renderer forms batches sized from the engine's measured per-frame latency so that the first frame of a batch
  still meets its deadline; a frame that cannot is left to the overrun policy.
- At air time, a frame that is not ready is replaced by the overrun policy: ``repeat`` (the last frame),
  ``idle`` (the avatar at rest) or ``fallback`` (a cheaper engine). Rendered frames that arrive too late are
  counted as dropped.
- Offline (file outputs only) there are no deadlines: playout waits for every frame and runs as fast as the engine.

The feeder's and the renderer's methods live in :mod:`anchorcast.feeder` and :mod:`anchorcast.renderer` (the
scheduler holds the state the three threads share); batch sizing and the settings in :mod:`anchorcast.pacing`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from anchorcast.clock import MediaClock
from anchorcast.components import LipEngine, Output, Source, Voice
from anchorcast.delivery import Delivering
from anchorcast.errors import AnchorcastError
from anchorcast.feeder import Feeding
from anchorcast.media import (
    AudioChunk,
    Event,
    Image,
    Interrupt,
    Overrun,
    StreamFormat,
    VideoFrame,
)
from anchorcast.metrics import RunMetrics
from anchorcast.output_recovery import OutputRecovery
from anchorcast.pacing import (
    POLL_S,
    BatchLatency,
    OverrunPolicy,
    SchedulerConfig,
    budget_for_source,
    choose_batch,
)
from anchorcast.renderer import Rendering
from anchorcast.resampling import Resampler
from anchorcast.timeline import Timeline

__all__ = ["BatchLatency", "OverrunPolicy", "Resampler", "Scheduler", "SchedulerConfig", "choose_batch"]

log = logging.getLogger(__name__)

WORKER_JOIN_S = 60.0
"""How long the end of a run waits for a stage still at work (a voice finishing its sentence, an engine its
batch); a stage still busy then is left running, and the host does not close what it uses."""


class Scheduler(Feeding, Rendering, Delivering):
    """Runs one stream: ``source -> voice -> timeline -> engine -> outputs``.

    ``emit`` receives events as they air; ``on_metrics`` about once a second; ``on_progress(aired, total)``
    after every frame (``total`` is None until the timeline is complete).
    """

    def __init__(
        self,
        fmt: StreamFormat,
        config: SchedulerConfig,
        source: Source,
        voice: Voice | None,
        engine: LipEngine,
        outputs: Sequence[tuple[str, Output]],
        *,
        fallback: LipEngine | None = None,
        voice_fallback: Voice | None = None,
        names: Mapping[int, str] | None = None,
        emit: Callable[[Event], None] = lambda event: None,
        on_metrics: Callable[[dict], None] = lambda report: None,
        on_progress: Callable[[int, int | None], None] = lambda aired, total: None,
    ) -> None:
        if config.overrun == "fallback" and fallback is None:
            raise AnchorcastError("overrun policy 'fallback' needs a fallback engine (scheduler.fallback)")
        self.fmt = fmt
        # a live source's own delay (a denoising microphone, opened by now) is spent out of the budget
        self.config = budget_for_source(config, source)
        self.clock = MediaClock(fmt.fps, fmt.sample_rate)
        self.timeline = Timeline(fmt.sample_rate)
        self.metrics = RunMetrics(float(fmt.fps), fmt.sample_rate)
        self.source = source
        self.voice, self.voice_fallback = voice, voice_fallback
        self._failed_voice = None
        self._names = names or {}  # component_name() for events: the profile's names for what the host opened
        self.engine = engine
        self.fallback = fallback
        self.outputs = list(outputs)
        self._emit = emit
        self._on_metrics = on_metrics
        self._on_progress = on_progress
        self._resample = Resampler(fmt.sample_rate)
        self._latency = BatchLatency()
        self._stop = threading.Event()
        self._errors: list[BaseException] = []
        self._frames: dict[int, Image] = {}
        self._frames_cond = threading.Condition()
        self._next_to_air = 0
        self._next_to_take = 0  # the playout has committed to every frame before this one
        self._air_start: float | None = None
        self._last_image: Image | None = None
        self._threads: list[threading.Thread] = []
        self._generation = 0  # bumped by every interrupt: work begun before it is discarded
        self._feed_lock = threading.Lock()
        self._lead_in_done = False
        self._pending_events: list[Event] = []
        self._starts: list[Event] = []  # a source's start marks, placed where its next audio begins
        self._underran = False  # the live playout ran out of audio and padded silence
        self.failed_outputs: dict[str, str] = {}
        """Every output that failed during the run, with why (kept when it resumes: the run had a gap)."""
        self.resumed_outputs: dict[str, str] = {}
        self._recovery = OutputRecovery(self._stop)

    # --- public ------------------------------------------------------------------------------------------

    def run(self) -> dict:
        """Streams until the source is exhausted (or :meth:`stop`); returns the final metrics report."""
        self.metrics.start()
        self._spawn(_FEEDER, self._feed)
        self._spawn(_RENDERER, self._render_loop)
        try:
            self._playout()
        finally:
            self.stop()
            self._join_workers()
            self.closed_outputs()
            self.metrics.stop()
        self._raise_worker_error()
        return self.report()

    def stop(self) -> None:
        """Ends the run after the frame being aired; safe from any thread."""
        self._stop.set()
        with self._frames_cond:
            self._frames_cond.notify_all()

    @property
    def frames_aired(self) -> int:
        return self._next_to_air

    @property
    def next_pts(self) -> float:
        """Media time of the next frame to air: where an event posted now will air."""
        return self.clock.frame_pts(self._next_to_take)

    def interrupt(self, reason: str = "") -> None:
        """Drops queued speech and frames: the next frame to air shows the idle anchor. Safe from any thread.

        Read-ahead speech (a script) is cut from the timeline; live audio already buffered is silenced instead,
        so the latency budget stays as it was. The source drops what it has queued if it can
        (an optional ``interrupt()`` method).
        """
        with self._feed_lock, self._frames_cond:
            self._generation += 1
            self.metrics.count("interrupts")
            index = self._next_to_take
            cut = self.clock.frame_start(index)
            if self.source.live:
                # live audio within the latency budget is silenced (the clock keeps its lead); anything read
                # further ahead (queued speech) is dropped, so what comes next is not held back behind it
                self.timeline.mute_from(cut)
                self.timeline.truncate(cut + self.clock.seconds_to_samples(self.config.latency_budget_ms / 1000))
                self._starts.clear()
            else:
                self.timeline.truncate(cut)
                if self.timeline.finished:
                    self.timeline.append_silence(self.clock.seconds_to_samples(self.config.tail_ms / 1000))
            self.metrics.count("interrupted_frames", len(self._frames))
            self._frames.clear()
            self._pending_events.append(Interrupt(self.clock.frame_pts(index), reason))
            self._frames_cond.notify_all()
        drop_queue = getattr(self.source, "interrupt", None)
        if callable(drop_queue):
            drop_queue()

    # --- playout -------------------------------------------------------------------------------------------

    def _playout(self) -> None:
        live = self.config.live
        if live and not self._start_clock():
            return
        last_report = time.monotonic()
        index = 0
        while not self._stop.is_set():
            if self.timeline.finished and index >= self._frame_count():
                break
            image = self._take_live(index) if live else self._take_offline(index)
            if image is None:
                if self._stop.is_set() or (self.timeline.finished and index >= self._frame_count()):
                    break
                continue
            self._air(index, image)
            index += 1
            with self._frames_cond:
                self._next_to_air = index
                self._frames_cond.notify_all()
            self._on_progress(index, self._frame_count() if self.timeline.finished else None)
            now = time.monotonic()
            if now - last_report >= 1.0:
                last_report = now
                self._on_metrics(self.report())
            self._raise_worker_error()
        self._finish_outputs()
        self._on_metrics(self.report())

    def _start_clock(self) -> bool:
        while not self.timeline.wait_for_any(POLL_S):
            if self._stop.is_set():
                return False
            self._raise_worker_error()
        arrived = self.timeline.arrival_time(0) or time.monotonic()
        self._air_start = arrived + self.config.latency_budget_ms / 1000
        return True

    def _take_offline(self, index: int) -> Image | None:
        with self._frames_cond:
            while index not in self._frames:
                if self._stop.is_set() or self._errors:
                    return None
                self._frames_cond.wait(POLL_S)
            self._next_to_take = index + 1
            for stale in [k for k in self._frames if k < index]:
                del self._frames[stale]
            return self._frames.pop(index)

    def _take_live(self, index: int) -> Image | None:
        air = self._air_time(index)
        while (wait := air - time.monotonic()) > 0:
            if self._stop.wait(min(wait, POLL_S)):
                return None
        if self.timeline.finished and index >= self._frame_count():
            return None
        end = self.clock.frame_end(index)
        with self._frames_cond:
            self._next_to_take = index + 1  # before padding: the renderer must not start on this frame now
        if self.timeline.pad_to(end):
            self._underran = True
            self.metrics.count("silence_underrun")
        with self._frames_cond:
            image = self._frames.pop(index, None)
            for stale in [k for k in self._frames if k < index]:
                del self._frames[stale]
                self.metrics.count("dropped")
        if image is None:
            centre = (self.clock.frame_start(index) + end) / 2 / self.fmt.sample_rate
            if self.timeline.speech_weight(centre, self.config.blend_ms / 1000) <= 0:
                image = self.engine.idle(index)  # nothing to say: the idle frame is exactly right
            else:
                image = self._overrun(index, (time.monotonic() - air) * 1000)
        return image

    def _overrun(self, index: int, late_ms: float) -> Image:
        policy = self.config.overrun
        if policy == "repeat" and self._last_image is not None:
            image = self._last_image
        elif policy == "fallback" and self.fallback is not None:
            image = self.fallback.render([self._job(self.fallback, index)])[0]
        else:
            policy = "idle"
            image = self.engine.idle(index)
        self.metrics.count(f"overrun_{policy}")
        self._dispatch(Overrun(self.clock.frame_pts(index), index, policy, late_ms))
        return image

    def _air(self, index: int, image: Image) -> None:
        start, end = self.clock.frame_start(index), self.clock.frame_end(index)
        audio = AudioChunk(self.timeline.read(start, end), self.fmt.sample_rate, start)
        frame = VideoFrame(image, index, self.fmt.fps)
        self._deliver(frame, audio)
        with self._frames_cond:
            pending, self._pending_events = self._pending_events, []
        for event in [*pending, *self.timeline.events_between(start, end)]:
            self._dispatch(event)
        self.metrics.aired(frame.pts, audio.pts, len(audio.samples))
        if self.config.live:
            arrived = self.timeline.arrival_time(end - 1)
            if arrived is not None:
                self.metrics.observe("audio_to_air", (time.monotonic() - arrived) * 1000)
        self._last_image = image
        keep = self.clock.seconds_to_samples(max(self.engine.lookbehind, 1.0))
        self.timeline.release_before(start - keep)

    def report(self) -> dict[str, Any]:
        """The metrics report, with the counters of outputs that keep their own (an optional ``metrics()``)."""
        report = self.metrics.report()
        extra = {}
        for name, output in self.outputs:
            own = getattr(output, "metrics", None)
            if callable(own):
                try:
                    extra[name] = own()
                except Exception:  # a report must never fail a run
                    log.debug("output %s could not report its metrics", name, exc_info=True)
        if extra:
            report["outputs"] = extra
        if self.failed_outputs:
            report["failed_outputs"] = dict(self.failed_outputs)
        if self.resumed_outputs:
            report["resumed_outputs"] = dict(self.resumed_outputs)
        return report

    def post_event(self, event: Event) -> None:
        """Queues an event from any thread (an ASR worker, a control API); it is dispatched with the next frame."""
        with self._frames_cond:
            self._pending_events.append(event)

    # --- threads -------------------------------------------------------------------------------------------

    def _join_workers(self) -> None:
        deadline = time.monotonic() + WORKER_JOIN_S
        for thread in self._threads:
            while thread.is_alive():
                thread.join(min(5.0, max(0.0, deadline - time.monotonic())))
                if not thread.is_alive():
                    break
                if time.monotonic() >= deadline:
                    log.error("the %s is still busy after %.0f s: what it uses is left open", _ROLE[thread.name],
                              WORKER_JOIN_S)
                    break
                log.warning("waiting for the %s to finish its work", _ROLE[thread.name])

    def busy_components(self) -> list[Any]:
        """Components a worker thread that did not end is still using: closing them under it would crash it."""
        busy: list[Any] = []
        for thread in self._threads:
            if thread.is_alive():
                busy += [self.source, self.voice] if thread.name == _FEEDER else [self.engine, self.fallback]
        return [component for component in busy if component is not None]

    def _spawn(self, name: str, target: Callable[[], None]) -> None:
        def guarded() -> None:
            try:
                target()
            except BaseException as error:  # handed to the playout thread, which re-raises it
                self._errors.append(error)
                self._stop.set()
                self.timeline.finish()
                with self._frames_cond:
                    self._frames_cond.notify_all()

        thread = threading.Thread(target=guarded, name=name, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _raise_worker_error(self) -> None:
        if self._errors:
            raise self._errors[0]


_FEEDER, _RENDERER = "anchorcast-feeder", "anchorcast-renderer"
_ROLE = {_FEEDER: "source or voice", _RENDERER: "lip engine"}
