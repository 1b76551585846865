"""The scheduler's renderer: draws frames ahead of air time in batches sized to meet their deadlines, on a
thread of its own (part of :class:`~anchorcast.scheduler.Scheduler`, which holds the state both share)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from anchorcast.components import FrameJob, LipEngine, component_name
from anchorcast.errors import AnchorcastError
from anchorcast.media import EngineFailed, Event, Image
from anchorcast.pacing import POLL_S, BatchLatency, choose_batch

if TYPE_CHECKING:
    from anchorcast.clock import MediaClock
    from anchorcast.components import Output
    from anchorcast.media import StreamFormat
    from anchorcast.metrics import RunMetrics
    from anchorcast.pacing import SchedulerConfig
    from anchorcast.timeline import Timeline


log = logging.getLogger(__name__)

WRITE_TIME_REFRESH_S = 0.5
"""How often the outputs' typical write time, which each frame's render deadline leaves room for, is re-read."""


class Rendering:
    """The renderer's half of the scheduler."""

    fmt: StreamFormat
    config: SchedulerConfig
    clock: MediaClock
    timeline: Timeline
    metrics: RunMetrics
    engine: LipEngine
    fallback: LipEngine | None
    outputs: list[tuple[str, Output]]
    _names: Mapping[int, str]
    _latency: BatchLatency
    _stop: threading.Event
    _frames: dict[int, Image]
    _frames_cond: threading.Condition
    _generation: int
    _next_to_air: int
    _next_to_take: int
    _air_start: float | None
    _write_s: tuple[float, float] = (-1e9, 0.0)  # (when measured, the outputs' p50 write time in seconds)

    def post_event(self, event: Event) -> None:  # the scheduler's
        raise NotImplementedError

    def _render_loop(self) -> None:
        engine = self.engine
        cap = min(engine.max_batch, self.config.max_batch or engine.max_batch)
        ahead_frames = max(2 * cap, int(self.config.render_ahead_s * float(self.fmt.fps)))
        lookahead = self.clock.seconds_to_samples(engine.lookahead)
        index = 0
        generation = self._generation
        while not self._stop.is_set():
            if self.engine is not engine:  # the fallback took over: its batch size and audio context
                engine = self.engine
                cap = min(engine.max_batch, self.config.max_batch or engine.max_batch)
                lookahead = self.clock.seconds_to_samples(engine.lookahead)
            with self._frames_cond:
                if generation != self._generation:
                    generation, index = self._generation, self._next_to_air
                index = max(index, self._next_to_take)  # the playout has committed to the frames before it
                if index - self._next_to_air >= ahead_frames:
                    self._frames_cond.wait(POLL_S)
                    continue
            if self.timeline.finished and index >= self._frame_count():
                # all drawn, but stay: an interrupt can still add frames (its tail) before the playout ends
                with self._frames_cond:
                    self._frames_cond.wait(POLL_S)
                continue
            if not self.timeline.wait_for(self.clock.frame_end(index) + lookahead, POLL_S):
                continue
            if index < self._next_to_take:
                continue  # the audio came from the playout padding this frame: it is on air already
            # the first frame of a run airs as soon as it can: before anything aired, batches are a quarter size
            first_cap = cap if self._next_to_air > 0 or self.config.live else max(1, cap // 4)
            available = self._frames_with_audio(index, first_cap, lookahead)
            size = choose_batch(available, first_cap, self._latency, time.monotonic(), self._deadline(index))
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
            try:
                rendered = self.engine.render(speaking)
            except Exception as error:
                if self.fallback is None or self.engine is self.fallback:
                    raise
                self._engine_failed(error)
                self._render_batch(first, size, generation)  # the same frames, by the fallback
                return
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

    def _engine_failed(self, error: Exception) -> None:
        """The engine raised: the fallback engine draws the rest of the run (reported once, with the reason)."""
        failed, fallback = component_name(self.engine, self._names), component_name(self.fallback, self._names)
        detail = str(error) if isinstance(error, AnchorcastError) else f"{type(error).__name__}: {error}"
        log.error("the lip engine %s failed (%s); %s draws the rest of the run", failed, detail, fallback)
        self.metrics.count("engine_failures")
        assert self.fallback is not None
        self.engine = self.fallback
        self.post_event(EngineFailed(self.clock.frame_pts(self._next_to_air), failed, fallback, detail))

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
        now = time.monotonic()
        measured_at, write_s = self._write_s
        if now - measured_at > WRITE_TIME_REFRESH_S:  # percentiles per batch cost more than the batch choice
            write_s = sum(self.metrics.stage(f"output:{name}").get("p50_ms", 0.0) for name, _ in self.outputs) / 1000
            self._write_s = (now, write_s)
        return self._air_time(index) - write_s

    def _air_time(self, index: int) -> float:
        assert self._air_start is not None
        return self._air_start + self.clock.frame_pts(index)

    def _frame_count(self) -> int:
        return self.clock.frames_covering(self.timeline.total)
