"""Raw PCM s16le from a WebSocket to mono float32 at the session's rate (streaming resampling, no clicks at
message boundaries)."""

from __future__ import annotations

import numpy as np

from anchorcast.media import FloatAudio
from anchorcast.resampling import Resampler


class PcmStream:
    """Converts interleaved s16le messages; a message may end mid-sample or mid-frame (the rest is kept)."""

    def __init__(self, rate: int, channels: int, target_rate: int) -> None:
        self.rate = rate
        self.channels = channels
        self._resample = Resampler(target_rate)
        self._carry = b""

    def convert(self, data: bytes) -> FloatAudio:
        data = self._carry + data
        frame_bytes = 2 * self.channels
        usable = len(data) - len(data) % frame_bytes
        self._carry = data[usable:]
        samples = np.frombuffer(data[:usable], "<i2").astype(np.float32) / 32768.0
        if self.channels > 1:
            samples = samples.reshape(-1, self.channels).mean(axis=1)
        return self._resample.chunk(samples, self.rate)

    def flush(self) -> FloatAudio:
        return self._resample.flush()
