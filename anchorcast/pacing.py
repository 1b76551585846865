"""The scheduler's settings and its batch sizing: how large a batch of frames the engine may draw and still
meet the first frame's deadline, from the engine's measured latency per frame."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Literal

log = logging.getLogger(__name__)

OverrunPolicy = Literal["repeat", "idle", "fallback"]

POLL_S = 0.05  # how often waiting threads look up
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


def budget_for_source(config: SchedulerConfig, source: Any) -> SchedulerConfig:
    """``config`` with the live source's own delay taken out of the latency budget: the budget runs from when the
    sound reached the source, and a source that holds audio back (the ``mic`` source's denoiser, its optional
    ``added_latency_s``) has spent that much of it before the audio reaches the timeline."""
    added = float(getattr(source, "added_latency_s", 0.0) or 0.0)
    if not (config.live and getattr(source, "live", False) and added > 0):
        return config
    budget = config.latency_budget_ms - added * 1000
    if budget < 0:
        log.warning("the source delays its audio by %.0f ms, more than latency_budget_ms (%.0f ms): frames air "
                    "as soon as its audio arrives", added * 1000, config.latency_budget_ms)
    return replace(config, latency_budget_ms=max(0.0, budget))


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
