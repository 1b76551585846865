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
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from anchorcast.clock import MediaClock
from anchorcast.components import FrameJob, LipEngine, Output, Source, Voice
from anchorcast.errors import AnchorcastError
from anchorcast.media import (
    AudioChunk,
    Caption,
    Cue,
    Event,
    Image,
    Interrupt,
    OutputState,
    Overrun,
    Speech,
    StreamFormat,
    TextSegment,
    UtteranceEnded,
    UtteranceStarted,
    VideoFrame,
)
from anchorcast.metrics import RunMetrics
from anchorcast.timeline import Timeline

log = logging.getLogger(__name__)

OverrunPolicy = Literal["repeat", "idle", "fallback"]

_POLL_S = 0.05
WORKER_JOIN_S = 60.0
"""How long the end of a run waits for a stage still at work (a voice finishing its sentence, an engine its
batch); a stage still busy then is left running, and the host does not close what it uses."""
_SAFETY = 1.25  # batch latency estimates are padded by this factor before comparing with a deadline


@dataclass(frozen=True)
class SchedulerConfig:
    """The scheduler's share of a profile (``[scheduler]``)."""

    latency_budget_ms: float = 400.0
    overrun: OverrunPolicy = "repeat"
    live: bool = False
    blend_ms: float = 120.0
    max_batch: int = 0
    """0: the engine's own maximum."""
    lead_in_ms: float = 400.0
    tail_ms: float = 400.0
    pause_ms: float = 250.0
    render_ahead_s: float = 2.0
    """How far ahead of air time the renderer may draw frames (frames are big: this bounds memory)."""
    audio_ahead_s: float = 120.0
    """How far ahead of air time the voice may synthesize."""


class BatchLatency:
    """Running estimate of the engine's latency per frame, from measured batches."""

    def __init__(self, smoothing: float = 0.3) -> None:
        self.smoothing = smoothing
        self.per_frame_s: float | None = None

    def observe(self, batch: int, seconds: float) -> None:
        sample = seconds / batch
        if self.per_frame_s is None:
            self.per_frame_s = sample
        else:
            self.per_frame_s += self.smoothing * (sample - self.per_frame_s)

    def estimate(self, batch: int) -> float | None:
        return None if self.per_frame_s is None else self.per_frame_s * batch * _SAFETY


def choose_batch(
    available: int, cap: int, per_frame: BatchLatency, now: float, deadline: float | None
) -> int:
    """The largest batch (at most ``cap`` and the frames whose audio is ``available``) whose estimated latency
    still meets ``deadline`` for its first frame; 0 when not even one frame can make it. Without a deadline
    (offline, or before the clock starts) or before any measurement: as large as allowed, at least 1."""
    limit = min(available, cap)
    if limit <= 0:
        return 0
    if deadline is None:
        return limit
    if per_frame.per_frame_s is None:
        return 1
    best = 0
    for size in range(1, limit + 1):
        estimate = per_frame.estimate(size)
        assert estimate is not None
        if now + estimate > deadline:
            break
        best = size
    return best


class Resampler:
    """Brings speech or audio to the timeline's rate (soxr, high quality).

    Whole utterances are resampled in one go; a stream of chunks keeps one soxr stream per input rate, so the
    filter runs across chunk boundaries without clicks (:meth:`flush` at the end).
    """

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._streams: dict[int, Any] = {}

    def __call__(self, samples: np.ndarray, rate: int) -> np.ndarray:
        samples = np.asarray(samples, np.float32)
        if rate == self.rate or len(samples) == 0:
            return samples
        import soxr

        return soxr.resample(samples, rate, self.rate, quality="HQ").astype(np.float32, copy=False)

    def chunk(self, samples: np.ndarray, rate: int) -> np.ndarray:
        samples = np.asarray(samples, np.float32)
        if rate == self.rate:
            return samples
        stream = self._streams.get(rate)
        if stream is None:
            import soxr

            stream = self._streams[rate] = soxr.ResampleStream(rate, self.rate, 1, dtype="float32", quality="HQ")
        return stream.resample_chunk(samples)

    def flush(self) -> np.ndarray:
        """What the chunk streams still hold, at the end of the input."""
        empty = np.zeros(0, np.float32)
        tails = [stream.resample_chunk(empty, last=True) for stream in self._streams.values()]
        self._streams.clear()
        return np.concatenate([empty, *tails])


class Scheduler:
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
        emit: Callable[[Event], None] = lambda event: None,
        on_metrics: Callable[[dict], None] = lambda report: None,
        on_progress: Callable[[int, int | None], None] = lambda aired, total: None,
    ) -> None:
        if config.overrun == "fallback" and fallback is None:
            raise AnchorcastError("overrun policy 'fallback' needs a fallback engine (scheduler.fallback)")
        self.fmt = fmt
        self.config = config
        self.clock = MediaClock(fmt.fps, fmt.sample_rate)
        self.timeline = Timeline(fmt.sample_rate)
        self.metrics = RunMetrics(float(fmt.fps), fmt.sample_rate)
        self.source = source
        self.voice = voice
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
        self._closers: list[tuple[Output, threading.Thread]] = []

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

    # --- feeder: source -> voice -> timeline ---------------------------------------------------------------

    def _feed(self) -> None:
        config = self.config
        pause = self.clock.seconds_to_samples(config.pause_ms / 1000)
        spoken_before = False
        for item in self._items():
            if self._stop.is_set():
                return
            self._wait_for_room()
            generation = self._generation  # an interrupt from here on discards this item's speech
            if generation and not self.source.live:
                break  # an interrupt drops everything a script or a file had still to say
            if isinstance(item, Event):
                self._place_mark(item, generation)
                continue
            if isinstance(item, AudioChunk):
                samples = self._resample.chunk(item.samples, item.sample_rate)
                with self._feed_lock:
                    if generation != self._generation and not self.source.live:
                        break
                    self._lead_in()
                    gap = self._resume_live()
                    self._place_starts()
                    self.timeline.append_audio(samples)
                    spoken_before = spoken_before and not gap
                continue
            for number, speech in enumerate(self._speak(item)):
                if self._stop.is_set():
                    return
                events: list[Event] = []
                if item.cue and number == 0:
                    events.append(Cue(0.0, item.cue))
                if speech.text:
                    events.append(Caption(0.0, speech.text, True, speech.duration, "voice", speech.words))
                speech = self._at_timeline_rate(speech)
                with self._feed_lock:
                    if generation != self._generation:
                        break  # interrupted while this segment was being synthesized
                    self._lead_in()
                    if not self._resume_live() and spoken_before:
                        self.timeline.append_silence(pause)
                    self._place_starts()
                    self.timeline.append_speech(speech, events)
                    spoken_before = True
        with self._feed_lock:  # an interrupt in between would cut the tail and not add it back
            self._lead_in()
            if len(tail := self._resample.flush()) and not (self._generation and not self.source.live):
                self.timeline.append_audio(tail)
            self.timeline.append_silence(self.clock.seconds_to_samples(config.tail_ms / 1000))
            self.timeline.finish()

    def _place_mark(self, mark: Event, generation: int) -> None:
        """A source's own event (an utterance's start or end). A start airs with the first frame of the audio
        that follows it; anything else where the audio so far ends."""
        with self._feed_lock:
            if generation != self._generation:
                return
            if isinstance(mark, UtteranceStarted):
                self._starts.append(mark)
                return
            if isinstance(mark, UtteranceEnded):
                self._place_starts()  # an utterance that gave no audio still starts before it ends
            self.timeline.add_event(mark)
            if isinstance(mark, UtteranceEnded) and self.source.live:
                # room for the mouth to close: the frames blending out of speech need audio after it
                closing = self.config.blend_ms / 1000 + self.engine.lookahead + 2 * self.fmt.frame_duration
                self.timeline.append_silence(self.clock.seconds_to_samples(closing))

    def _place_starts(self) -> None:
        for mark in self._starts:
            self.timeline.add_event(mark)
        self._starts.clear()

    def _resume_live(self) -> bool:
        """Live audio that arrives after the playout ran dry airs one latency budget from now, as the first
        audio did: without this it would be due at once and every frame of it would be late. True when a gap
        was inserted."""
        if not (self.config.live and self.source.live and self._underran and self._air_start is not None):
            return False
        self._underran = False
        due = time.monotonic() + self.config.latency_budget_ms / 1000 - self._air_start
        return self.timeline.pad_to(self.clock.seconds_to_samples(due)) > 0

    def _lead_in(self) -> None:
        """The silence before the first words, appended with the first audio: the live clock starts when real
        audio is ready, not when the feeder started waiting for a slow voice. A live source (a microphone) gets
        none: it would only add to the latency."""
        if not self._lead_in_done:
            self._lead_in_done = True
            if not self.source.live:
                self.timeline.append_silence(self.clock.seconds_to_samples(self.config.lead_in_ms / 1000))

    def _items(self) -> Iterator[TextSegment | AudioChunk | Event]:
        return iter(self.source.items())

    def _speak(self, segment: TextSegment) -> Iterator[Speech]:
        if self.voice is None:
            raise AnchorcastError(
                f"the source gave text ({segment.text[:40]!r}) but the profile names no voice",
                hint='add a [voice] table, e.g. use = "piper"',
            )
        started = time.perf_counter()
        first = True
        for speech in self.voice.synthesize(segment):
            elapsed = (time.perf_counter() - started) * 1000
            self.metrics.observe("voice_first_audio" if first else "voice_sentence", elapsed)
            first = False
            if speech.duration > 0:
                self.metrics.observe("voice_rtf_x1000", elapsed / speech.duration)
            if speech.segment is None:
                speech = Speech(speech.audio, speech.sample_rate, speech.text, speech.phonemes, speech.words, segment)
            yield speech
            started = time.perf_counter()

    def _at_timeline_rate(self, speech: Speech) -> Speech:
        if speech.sample_rate == self.fmt.sample_rate:
            return speech
        audio = self._resample(speech.audio, speech.sample_rate)
        return Speech(audio, self.fmt.sample_rate, speech.text, speech.phonemes, speech.words, speech.segment)

    def _wait_for_room(self) -> None:
        ahead_limit = self.clock.seconds_to_samples(self.config.audio_ahead_s)
        while not self._stop.is_set():
            aired_sample = self.clock.frame_start(self._next_to_air)
            if self.timeline.total - aired_sample < ahead_limit:
                return
            self._stop.wait(_POLL_S)

    # --- renderer ------------------------------------------------------------------------------------------

    def _render_loop(self) -> None:
        engine = self.engine
        cap = min(engine.max_batch, self.config.max_batch or engine.max_batch)
        ahead_frames = max(2 * cap, int(self.config.render_ahead_s * float(self.fmt.fps)))
        lookahead = self.clock.seconds_to_samples(engine.lookahead)
        index = 0
        generation = self._generation
        while not self._stop.is_set():
            with self._frames_cond:
                if generation != self._generation:
                    generation, index = self._generation, self._next_to_air
                index = max(index, self._next_to_take)  # the playout has committed to the frames before it
                if index - self._next_to_air >= ahead_frames:
                    self._frames_cond.wait(_POLL_S)
                    continue
            if self.timeline.finished and index >= self._frame_count():
                # all drawn, but stay: an interrupt can still add frames (its tail) before the playout ends
                with self._frames_cond:
                    self._frames_cond.wait(_POLL_S)
                continue
            if not self.timeline.wait_for(self.clock.frame_end(index) + lookahead, _POLL_S):
                continue
            if index < self._next_to_take:
                continue  # the audio came from the playout padding this frame: it is on air already
            available = self._frames_with_audio(index, cap, lookahead)
            size = choose_batch(available, cap, self._latency, time.monotonic(), self._deadline(index))
            if size == 0:
                index += 1  # cannot make its deadline: the overrun policy will replace it at air time
                continue
            self._render_batch(index, size, generation)
            index += size

    def _render_batch(self, first: int, size: int, generation: int) -> None:
        jobs = [self._job(self.engine, k) for k in range(first, first + size)]
        speaking = [job for job in jobs if job.speech > 0]
        images: dict[int, Image] = {job.index: self.engine.idle(job.index) for job in jobs if job.speech <= 0}
        if speaking:
            started = time.perf_counter()
            rendered = self.engine.render(speaking)
            elapsed = time.perf_counter() - started
            if len(rendered) != len(speaking):
                raise AnchorcastError(
                    f"lip engine {type(self.engine).__name__} returned {len(rendered)} frames for {len(speaking)} jobs"
                )
            self._latency.observe(len(speaking), elapsed)
            self.metrics.observe("engine_batch", elapsed * 1000)
            self.metrics.observe("engine_frame", elapsed * 1000 / len(speaking))
            self.metrics.batch(len(speaking))
            images.update(zip((job.index for job in speaking), rendered, strict=True))
        self.metrics.count("rendered", len(jobs))
        with self._frames_cond:
            if generation != self._generation:
                return  # drawn from speech an interrupt dropped
            for index, image in images.items():
                if index >= self._next_to_air:
                    self._frames[index] = image
                else:
                    self.metrics.count("dropped")
            self._frames_cond.notify_all()

    def _frames_with_audio(self, first: int, cap: int, lookahead: int) -> int:
        if self.timeline.finished:
            return min(cap, self._frame_count() - first)
        total = self.timeline.total
        count = 0
        while count < cap and self.clock.frame_end(first + count) + lookahead <= total:
            count += 1
        return count

    def _job(self, engine: LipEngine, index: int) -> FrameJob:
        clock = self.clock
        start, end = clock.frame_start(index), clock.frame_end(index)
        behind = clock.seconds_to_samples(engine.lookbehind)
        ahead = clock.seconds_to_samples(engine.lookahead)
        context = self.timeline.read(start - behind, end + ahead)
        centre = (start + end) / 2 / self.fmt.sample_rate
        blend = self.config.blend_ms / 1000
        return FrameJob(
            index=index,
            pts=clock.frame_pts(index),
            context=context,
            offset=behind,
            frame_samples=end - start,
            speech=self.timeline.speech_weight(centre, blend),
            phonemes=self.timeline.phonemes_between((start - behind) / clock.sample_rate, (end + ahead) / clock.sample_rate),
        )

    def _deadline(self, index: int) -> float | None:
        if not self.config.live or self._air_start is None:
            return None
        write_ms = sum(self.metrics.stage(f"output:{name}").get("p50_ms", 0.0) for name, _ in self.outputs)
        return self._air_time(index) - write_ms / 1000

    def _air_time(self, index: int) -> float:
        assert self._air_start is not None
        return self._air_start + self.clock.frame_pts(index)

    def _frame_count(self) -> int:
        return self.clock.frames_covering(self.timeline.total)

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

    def _finish_outputs(self) -> None:
        """The stream is over: outputs with an optional ``finish()`` complete their work (a recogniser's last
        phrase), and the events that produces are dispatched before the outputs are closed."""
        for name, output in list(self.outputs):
            finish = getattr(output, "finish", None)
            if finish is None:
                continue
            try:
                finish()
            except Exception as error:
                self._output_failed(name, output, error)
        with self._frames_cond:
            pending, self._pending_events = self._pending_events, []
        for event in pending:
            self._dispatch(event)

    def _start_clock(self) -> bool:
        while not self.timeline.wait_for_any(_POLL_S):
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
                self._frames_cond.wait(_POLL_S)
            self._next_to_take = index + 1
            for stale in [k for k in self._frames if k < index]:
                del self._frames[stale]
            return self._frames.pop(index)

    def _take_live(self, index: int) -> Image | None:
        air = self._air_time(index)
        while (wait := air - time.monotonic()) > 0:
            if self._stop.wait(min(wait, _POLL_S)):
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
        for name, output in list(self.outputs):
            began = time.perf_counter()
            try:
                output.write(frame, audio)
            except Exception as error:
                self._output_failed(name, output, error)
            self.metrics.observe(f"output:{name}", (time.perf_counter() - began) * 1000)
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
        return report

    def post_event(self, event: Event) -> None:
        """Queues an event from any thread (an ASR worker, a control API); it is dispatched with the next frame."""
        with self._frames_cond:
            self._pending_events.append(event)

    def _dispatch(self, event: Event) -> None:
        """Events go to outputs that take them (an optional ``event(event)`` method), then to the event hook."""
        for name, output in list(self.outputs):
            handler = getattr(output, "event", None)
            if handler is None:
                continue
            try:
                handler(event)
            except Exception as error:
                self._output_failed(name, output, error)
        self._emit(event)

    def _output_failed(self, name: str, output: Output, error: Exception) -> None:
        """A failing output is dropped from the stream and the others go on; the last one's failure ends the run.

        It is closed on a thread of its own (a close that hangs on a dead network must not stall the frames on
        air); :meth:`closed_outputs` tells the host, which then waits for that close instead of closing again.
        """
        self.metrics.count(f"output_failed:{name}")
        if len(self.outputs) == 1:
            raise error
        log.error("output %s failed and was taken off the stream: %s: %s", name, type(error).__name__, error)
        self.outputs = [(n, o) for n, o in self.outputs if o is not output]
        self.failed_outputs[name] = f"{type(error).__name__}: {error}"
        self.post_event(OutputState(self.clock.frame_pts(self._next_to_air), name, "failed", str(error)))
        closer = threading.Thread(target=_close_quietly, args=(name, output), name=f"anchorcast-close-{name}",
                                  daemon=True)
        self._closers.append((output, closer))
        closer.start()

    def closed_outputs(self, timeout: float = 10.0) -> list[Output]:
        """Outputs the scheduler took off the stream and closed itself, once their closes have finished (or
        ``timeout`` passed: a close that hangs is left to its thread and logged)."""
        deadline = time.monotonic() + timeout
        for output, closer in self._closers:
            closer.join(max(0.0, deadline - time.monotonic()))
            if closer.is_alive():
                log.error("closing the failed output %s did not finish in %.0f s", type(output).__name__, timeout)
        return [output for output, _ in self._closers]

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


def _close_quietly(name: str, output: Output) -> None:
    try:
        output.close()
    except Exception:  # already failing: its close error adds nothing
        log.debug("closing the failed output %s also failed", name, exc_info=True)


_FEEDER, _RENDERER = "anchorcast-feeder", "anchorcast-renderer"
_ROLE = {_FEEDER: "source or voice", _RENDERER: "lip engine"}
