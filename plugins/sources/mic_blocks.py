"""The ``mic`` source's block bookkeeping: how much audio an input overflow lost (:class:`GapEstimator`), and
captured blocks turned into the host's 20 ms chunks, resampled and optionally denoised (:class:`Rechunker`)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from anchorcast.media import AudioChunk, FloatAudio

BASELINE_RELAX = 0.002
"""How fast (seconds per second) the arrival-lateness baseline may rise, following the drift between the sound
card's clock and the host's; faster drift than 0.2 % is not a real sound card."""


class GapEstimator:
    """How many blocks an input overflow lost, from when the blocks arrive.

    A block's *lateness* is its arrival time minus the media time of its first sample (blocks so far over the
    rate). In steady capture it hovers just above a baseline, the running minimum, which may rise by
    :data:`BASELINE_RELAX` to follow the sound card's clock drift. A block flagged with an overflow that arrives
    later than the baseline by at least half a block stands after lost audio of that length. A late block
    without the flag lost nothing: the audio was buffered, and the blocks that follow catch up.
    """

    def __init__(self, rate: int, block: int) -> None:
        self.rate = rate
        self.block = block
        self.blocks = 0
        """Blocks accounted for so far, filled ones included."""
        self._baseline: float | None = None
        self._last: float | None = None

    def observe(self, now: float, overflow: bool) -> int:
        """Called for every delivered block, at its arrival; returns the blocks of silence to insert before it."""
        lateness = now - self.blocks * self.block / self.rate
        if self._baseline is None or self._last is None:
            self._baseline = lateness
        else:
            self._baseline = min(self._baseline + BASELINE_RELAX * max(0.0, now - self._last), lateness)
        self._last = now
        missing = max(0, round((lateness - self._baseline) * self.rate / self.block)) if overflow else 0
        self.blocks += missing + 1
        return missing


class Rechunker:
    """Capture-rate blocks in, ``chunk`` samples at ``rate`` out: resampled (soxr stream) when the rates differ,
    and run through ``denoiser`` (a :class:`~anchorcast_plugins.sources.noise_suppression.StreamingDenoiser`
    for ``rate`` and ``chunk``) when one is given. ``emitted`` counts the samples yielded."""

    def __init__(self, capture_rate: int, rate: int, chunk: int, denoiser: Any = None) -> None:
        self.rate = rate
        self.chunk = chunk
        self.emitted = 0
        self.denoiser = denoiser
        self._pending = np.zeros(0, np.float32)
        self._resampler: Any = None
        if capture_rate != rate:
            import soxr

            self._resampler = soxr.ResampleStream(capture_rate, rate, 1, dtype="float32", quality="HQ")

    def push(self, block: FloatAudio) -> Iterator[AudioChunk]:
        if self._resampler is not None:
            block = self._resampler.resample_chunk(block)
        elif not len(self._pending) and len(block) == self.chunk:
            yield self._emit(block)
            return
        self._pending = np.concatenate([self._pending, block])
        while len(self._pending) >= self.chunk:
            piece, self._pending = self._pending[: self.chunk], self._pending[self.chunk :]
            yield self._emit(piece)

    def _emit(self, samples: FloatAudio) -> AudioChunk:
        samples = np.asarray(samples, np.float32)
        if self.denoiser is not None:
            samples = self.denoiser.process(samples)
        chunk = AudioChunk(samples, self.rate, self.emitted)
        self.emitted += len(samples)
        return chunk
