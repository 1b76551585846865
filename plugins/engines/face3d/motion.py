"""Idle motion for the 3D head: blinks, small gaze shifts and a slowly swaying head, as a function of the frame.

Everything is a pure function of the frame index (and a seed), so ``idle(index)`` draws the same picture however
often and in whatever order it is asked, and a repeated frame repeats exactly. Blinks come every 2-6 s (a hashed
interval per slot), close in 80 ms and open in 160 ms (lids close faster than they open). Gaze and head motion are
sums of slow sines at unrelated periods, so they never visibly loop. While speaking the gaze stays nearer the
camera (eyes jump anyway, so the change at the start of speech looks like one of their own); the head sways the
same whether speaking or not, so that nothing jumps where speech starts or ends; blinks go on.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from .render import Pose

BLINK_CLOSE_S = 0.08
BLINK_OPEN_S = 0.16
BLINK_INTERVAL_S = (2.0, 6.0)
GAZE_AMPLITUDE = 0.12
"""eyeLook* weight at the extremes of the idle gaze (0.12 x 25 degrees: about 3 degrees)."""
HEAD_DEGREES = (2.5, 1.5, 1.0)
"""Largest idle yaw, pitch and roll."""
SPEAKING_GAZE = 0.3
# (period in seconds, phase) pairs of the sways; unrelated periods so the sum does not repeat for minutes
_YAW = ((9.3, 0.0), (4.7, 1.7))
_PITCH = ((7.1, 0.4), (3.7, 2.9))
_ROLL = ((11.3, 1.1), (5.3, 0.2))
_GAZE_X = ((4.7, 0.8), (1.9, 2.2))
_GAZE_Y = ((6.1, 2.5), (2.7, 0.9))


def _sway(seconds: float, terms: Sequence[tuple[float, float]]) -> float:
    """In [-1, 1]: a sum of sines (weights 0.7 and 0.3)."""
    weights = (0.7, 0.3)
    return sum(w * math.sin(2 * math.pi * seconds / period + phase)
               for w, (period, phase) in zip(weights, terms, strict=True))


def _hash01(slot: int, seed: int) -> float:
    """A deterministic number in [0, 1) for a blink slot."""
    value = (slot * 0x9E3779B1 + seed * 0x85EBCA77) & 0xFFFFFFFF
    value ^= value >> 15
    value = (value * 0x2C1B3C6D) & 0xFFFFFFFF
    value ^= value >> 12
    return value / 2**32


@dataclasses.dataclass(frozen=True)
class IdleMotion:
    """Blink, gaze and head pose for frame ``index`` at ``fps``; ``expression_names`` says where the eye
    weights go."""

    fps: Fraction
    expression_names: tuple[str, ...]
    seed: int = 0

    def _index(self, name: str) -> int | None:
        return self.expression_names.index(name) if name in self.expression_names else None

    def blink(self, seconds: float) -> float:
        """Lid closure in [0, 1] at time ``seconds``."""
        low, high = BLINK_INTERVAL_S
        slot = math.floor(seconds / high)
        for candidate in (slot - 1, slot):  # a blink starting in the previous slot may still be on
            start = candidate * high + _hash01(candidate, self.seed) * (high - low)
            t = seconds - start
            if 0 <= t < BLINK_CLOSE_S:
                return t / BLINK_CLOSE_S
            if BLINK_CLOSE_S <= t < BLINK_CLOSE_S + BLINK_OPEN_S:
                return 1 - (t - BLINK_CLOSE_S) / BLINK_OPEN_S
        return 0.0

    def coefficients(self, index: int, speech: float = 0.0) -> npt.NDArray[np.float32]:
        """(E,) float32: the blink and the gaze of frame ``index`` (zeros elsewhere)."""
        seconds = float(index / self.fps)
        weights = np.zeros(len(self.expression_names), np.float32)
        closure = self.blink(seconds)
        gaze = GAZE_AMPLITUDE * (1 - speech * (1 - SPEAKING_GAZE))
        x, y = gaze * _sway(seconds, _GAZE_X), gaze * _sway(seconds, _GAZE_Y)
        values = {"eyeBlink_L": closure, "eyeBlink_R": closure,
                  # looking to the viewer's right is the head's left: the left eye out, the right eye in
                  "eyeLookOut_L": max(x, 0.0), "eyeLookIn_R": max(x, 0.0),
                  "eyeLookIn_L": max(-x, 0.0), "eyeLookOut_R": max(-x, 0.0),
                  "eyeLookUp_L": max(y, 0.0), "eyeLookUp_R": max(y, 0.0),
                  "eyeLookDown_L": max(-y, 0.0), "eyeLookDown_R": max(-y, 0.0)}
        for name, value in values.items():
            position = self._index(name)
            if position is not None:
                weights[position] = value
        return weights

    def pose(self, index: int) -> Pose:
        """The head's pose at frame ``index``."""
        seconds = float(index / self.fps)
        yaw, pitch, roll = (math.radians(degrees) * _sway(seconds, terms)
                            for degrees, terms in zip(HEAD_DEGREES, (_YAW, _PITCH, _ROLL), strict=True))
        return Pose(yaw=yaw, pitch=pitch, roll=roll)


def combine(speech_weights: npt.NDArray[np.float32], idle_weights: npt.NDArray[np.float32],
            eye_channels: npt.NDArray[np.bool_]) -> npt.NDArray[np.float32]:
    """The speech model's weights with the idle blink and gaze: on the eye channels the larger of the two (a
    blink the model predicts still shows), elsewhere the model's."""
    out = speech_weights.copy()
    out[eye_channels] = np.maximum(speech_weights[eye_channels], idle_weights[eye_channels])
    return out
