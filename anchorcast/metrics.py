"""Run metrics: per-stage latency percentiles, frame counters, A/V offset and speed.

One :class:`RunMetrics` per run, written to by the renderer and playout threads; :meth:`RunMetrics.report` gives
the JSON-ready dictionary that the live display, the metrics hook and ``--metrics FILE`` share.
"""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from typing import Any

import numpy as np

_WINDOW = 4096


class LatencyStats:
    """Recent latencies of one stage (milliseconds), with running count and mean over the whole run."""

    def __init__(self, window: int = _WINDOW) -> None:
        self._recent: deque[float] = deque(maxlen=window)
        self.count = 0
        self.total = 0.0
        self.worst = 0.0

    def add(self, ms: float) -> None:
        self._recent.append(ms)
        self.count += 1
        self.total += ms
        self.worst = max(self.worst, ms)

    def summary(self) -> dict[str, float]:
        if not self._recent:
            return {"count": 0}
        values = np.fromiter(self._recent, float)
        p50, p95 = np.percentile(values, [50, 95])
        return {
            "count": self.count,
            "mean_ms": round(self.total / self.count, 3),
            "p50_ms": round(float(p50), 3),
            "p95_ms": round(float(p95), 3),
            "max_ms": round(self.worst, 3),
        }


class RunMetrics:
    """Counters and latencies for one run. Thread-safe."""

    def __init__(self, fps: float, sample_rate: int) -> None:
        self.fps = fps
        self.sample_rate = sample_rate
        self._lock = threading.Lock()
        self._stages: dict[str, LatencyStats] = {}
        self.counters: Counter[str] = Counter()
        self.batch_sizes: Counter[int] = Counter()
        self.frames_aired = 0
        self.audio_samples_aired = 0
        self.max_av_offset_ms = 0.0
        self.started_at: float | None = None
        self.ended_at: float | None = None
        self.first_aired_at: float | None = None
        self.last_aired_at: float | None = None

    def start(self) -> None:
        self.started_at = time.monotonic()

    def stop(self) -> None:
        self.ended_at = time.monotonic()

    def observe(self, stage: str, ms: float) -> None:
        with self._lock:
            stats = self._stages.get(stage)
            if stats is None:
                stats = self._stages[stage] = LatencyStats()
            stats.add(ms)

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def batch(self, size: int) -> None:
        with self._lock:
            self.batch_sizes[size] += 1

    def aired(self, frame_pts: float, audio_pts: float, audio_samples: int) -> None:
        """One frame left the outputs with its audio starting at ``audio_pts``."""
        now = time.monotonic()
        with self._lock:
            if self.first_aired_at is None:
                self.first_aired_at = now
            self.last_aired_at = now
            self.frames_aired += 1
            self.audio_samples_aired += audio_samples
            self.max_av_offset_ms = max(self.max_av_offset_ms, abs(audio_pts - frame_pts) * 1000)

    def stage(self, name: str) -> dict[str, float]:
        with self._lock:
            stats = self._stages.get(name)
            return stats.summary() if stats else {"count": 0}

    def report(self) -> dict[str, Any]:
        with self._lock:
            now = self.ended_at or time.monotonic()
            wall = (now - self.started_at) if self.started_at else 0.0
            media = self.frames_aired / self.fps if self.fps else 0.0
            batches = sum(self.batch_sizes.values())
            airing = (
                (self.last_aired_at - self.first_aired_at)
                if self.first_aired_at is not None and self.last_aired_at is not None
                else 0.0
            )
            startup = (self.first_aired_at - self.started_at) if self.first_aired_at and self.started_at else 0.0
            return {
                "frames": self.frames_aired,
                "media_seconds": round(media, 4),
                "audio_seconds": round(self.audio_samples_aired / self.sample_rate, 4),
                "wall_seconds": round(wall, 4),
                "startup_seconds": round(startup, 4),
                "frames_per_second": round((self.frames_aired - 1) / airing, 3) if airing > 0 else 0.0,
                "speed": round(media / wall, 4) if wall > 0 else 0.0,
                "real_time_factor": round(wall / media, 4) if media > 0 else 0.0,
                "av_offset_ms_max": round(self.max_av_offset_ms, 3),
                "rendered_frames": self.counters["rendered"],
                "dropped_frames": self.counters["dropped"],
                "repeated_frames": self.counters["overrun_repeat"],
                "idle_frames": self.counters["overrun_idle"],
                "fallback_frames": self.counters["overrun_fallback"],
                "overruns": self.counters["overrun_repeat"]
                + self.counters["overrun_idle"]
                + self.counters["overrun_fallback"],
                "silence_underruns": self.counters["silence_underrun"],
                "interrupts": self.counters["interrupts"],
                "engine_failures": self.counters["engine_failures"],
                "voice_failures": self.counters["voice_failures"],
                "batch_size_mean": round(sum(k * v for k, v in self.batch_sizes.items()) / batches, 3)
                if batches
                else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "stages": {name: stats.summary() for name, stats in sorted(self._stages.items())},
            }
