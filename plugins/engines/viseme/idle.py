"""Signs of life for a still portrait: blinks every few seconds and a slow breath, by frame index.

Both are deterministic (frame ``i`` always looks the same), so repeated frames, a shared engine and tests see
the same picture. A blink draws the upper lid down over each eye (the skin above the eye stretched over it, a
darker lash line at its edge) for about 200 ms, at intervals of 2.5 to 6 s. A breath scales the frame by a
fraction of a percent about its bottom centre (the chest rises, the head with it), over about 4.5 s.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import cv2
import numpy as np

from anchorcast.media import Image

BLINK_CLOSURE = (0.45, 0.9, 1.0, 0.7, 0.3)
"""Lid closure frame by frame at 25 fps (stretched or shortened at other rates)."""
BLINK_INTERVAL_S = (2.5, 6.0)
BREATH_PERIOD_S = 4.5
BREATH_SCALE = 0.0035


@dataclass(frozen=True)
class EyeBox:
    """One eye in output pixels: its centre, half width and the height of the lid's travel."""

    centre_x: float
    centre_y: float
    half_width: float
    height: float


def find_eyes(frame: Image, face: tuple[float, float, float, float]) -> list[EyeBox]:
    """The two eyes in the upper half of the face box ``(x, y, w, h)`` (OpenCV's eye cascade), else where a
    frontal face has them."""
    x, y, w, h = face
    x0, y0 = max(0, int(x)), max(0, int(y + 0.15 * h))
    x1, y1 = min(frame.shape[1], int(x + w)), min(frame.shape[0], int(y + 0.55 * h))
    found: list[EyeBox] = []
    if x1 - x0 > 20 and y1 - y0 > 10:
        cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_eye.xml")
        grey = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
        boxes = cascade.detectMultiScale(grey, 1.1, 5, minSize=(max(8, int(0.12 * w)), max(8, int(0.12 * w))))
        eyes = sorted((b for b in boxes if b[2] < 0.4 * w), key=lambda b: -b[2])[:2]
        if len(eyes) == 2 and abs(eyes[0][0] - eyes[1][0]) > 0.2 * w:
            found = [EyeBox(x0 + ex + 0.5 * ew, y0 + ey + 0.52 * eh, 0.36 * ew, 0.3 * eh) for ex, ey, ew, eh in eyes]
    if not found:
        found = [EyeBox(x + fx * w, y + 0.40 * h, 0.08 * w, 0.07 * h) for fx in (0.31, 0.69)]
    return found


class IdleMotion:
    """Draws blinks and breathing onto frames of one portrait."""

    def __init__(self, eyes: list[EyeBox], size: tuple[int, int], fps: Fraction, seed: int = 7) -> None:
        self.eyes = eyes
        self.width, self.height = size
        self.fps = float(fps)
        self.seed = seed
        self._lids = [self._lid_map(eye) for eye in eyes]

    # --- when --------------------------------------------------------------------------------------------

    def closure(self, index: int) -> float:
        """How far the lids are down at frame ``index`` (0 open, 1 closed)."""
        t = index / self.fps
        slot_s = BLINK_INTERVAL_S[1]
        slot = int(t // slot_s)
        for k in (slot - 1, slot):
            if k < 0:
                continue
            start = k * slot_s + np.random.default_rng((self.seed, k)).uniform(0.0, slot_s - BLINK_INTERVAL_S[0])
            step = int((t - start) * 25)
            if 0 <= step < len(BLINK_CLOSURE) and t >= start:
                return BLINK_CLOSURE[step]
        return 0.0

    def breath(self, index: int) -> float:
        return BREATH_SCALE * 0.5 * (1 - np.cos(2 * np.pi * index / self.fps / BREATH_PERIOD_S))

    # --- drawing -------------------------------------------------------------------------------------------

    def apply(self, frame: Image, index: int) -> Image:
        """A new frame: ``frame`` with this index's lids and breath."""
        out = np.array(frame, copy=True)
        closure = self.closure(index)
        if closure > 0:
            for eye, (region, grid_y, mask) in zip(self.eyes, self._lids, strict=True):
                self._blink(out, frame, eye, region, grid_y, mask, closure)
        scale = self.breath(index)
        if scale > 1e-5:
            cx, bottom = self.width / 2, float(self.height)
            matrix = np.float32([[1 + scale, 0, -scale * cx], [0, 1 + scale, -scale * bottom]])
            out = cv2.warpAffine(out, matrix, (self.width, self.height), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
        return out

    def _lid_map(self, eye: EyeBox) -> tuple[tuple[int, int, int, int], np.ndarray, np.ndarray]:
        x0 = max(0, int(eye.centre_x - 1.3 * eye.half_width))
        x1 = min(self.width, int(eye.centre_x + 1.3 * eye.half_width) + 1)
        y0 = max(0, int(eye.centre_y - 1.6 * eye.height))
        y1 = min(self.height, int(eye.centre_y + 0.9 * eye.height) + 1)
        xs = (np.arange(x0, x1, dtype=np.float32) - eye.centre_x) / (1.3 * eye.half_width)
        ys = np.arange(y0, y1, dtype=np.float32)
        across = np.clip(1 - xs * xs, 0, 1)  # the lid's shape: deepest in the middle of the eye
        grid_y = np.repeat(ys[:, None], len(xs), axis=1)
        return (x0, y0, x1, y1), grid_y, across[None, :].repeat(len(ys), axis=0)

    @staticmethod
    def _blink(out: Image, frame: Image, eye: EyeBox, region: tuple[int, int, int, int], grid_y: np.ndarray,
               across: np.ndarray, closure: float) -> None:
        x0, y0, x1, y1 = region
        if x1 <= x0 or y1 <= y0:
            return
        top = eye.centre_y - eye.height  # the open lid's edge
        lid = top + closure * 1.6 * eye.height * (0.4 + 0.6 * np.sqrt(across))  # the lid's edge now, per column
        covered = (grid_y >= top - 0.5 * eye.height) & (grid_y < lid)
        # under the lid: the skin just above the eye, stretched down
        source_y = top - 0.55 * eye.height + (grid_y - top + 0.5 * eye.height) * 0.35
        grid_x = np.repeat(np.arange(x0, x1, dtype=np.float32)[None, :], y1 - y0, axis=0)
        skin = cv2.remap(np.ascontiguousarray(frame), grid_x, source_y.astype(np.float32), cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        lash = np.clip(1 - np.abs(grid_y - lid) / max(1.0, 0.18 * eye.height), 0, 1) * (across > 0.05)
        skin *= (1 - 0.3 * lash)[..., None]
        weight = (covered * np.clip(across * 2.5, 0, 1))[..., None]
        patch = out[y0:y1, x0:x1].astype(np.float32)
        out[y0:y1, x0:x1] = np.clip(patch + weight * (skin - patch), 0, 255).astype(np.uint8)
