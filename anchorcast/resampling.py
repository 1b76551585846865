"""Resampling to the timeline's rate (soxr, high quality), for whole utterances and for streams of chunks."""

from __future__ import annotations

from typing import Any

import numpy as np


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
