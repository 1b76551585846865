"""The quality gate of ``anchorcast train prepare``: frames whose face is too blurred, too dark or overexposed,
and videos whose bit rate is too low to show a face's detail.

Each frame's detected face box is cut out, made grey and resized to 96x96 (area interpolation, the training
crop's size, so the figures do not depend on the face's size in pixels); on that crop:

- **too dark**: mean luma under ``min_brightness`` (default 50);
- **overexposed**: more than ``max_clipped`` (default 0.25) of the pixels clipped (luma <= 8 or >= 247);
- **blurred**: variance of the Laplacian under ``min_sharpness`` (default 30).

Exposure is checked before sharpness: darkening lowers the Laplacian's variance too (by the square of the gain),
so a dark frame is reported as dark, not as blurred.

The defaults come from the synthetic presenters (``synth.SyntheticTalker``, 320x320, every 10th frame of a 2 s
clip, both speakers), measured on the raw frames:

=====================  ==============  =========  ==================
frames                 Laplacian var.  mean luma  clipped fraction
=====================  ==============  =========  ==================
clean                  265-432         151-160    0.009-0.014
Gaussian blur σ 1      41-76           151-159    0.008-0.011
Gaussian blur σ 1.5    20-39           150-159    0.007-0.009
Gaussian blur σ 2      13-25           150-159    0.005-0.006
Gaussian blur σ 3      7-12            154-161    0.000-0.002
luma x 0.35            35-49           52-56      0.02-0.03
luma x 0.25            19-26           37-40      0.04
luma x 0.15            8-13            22-24      0.09-0.10
luma x 1.5 (clipped)   377-733         205-212    0.43-0.53
luma x 2   (clipped)   346-721         219-228    0.63-0.69
JPEG quality 5         276-510         153-160    0.007-0.013
=====================  ==============  =========  ==================

Through H.264 (x264 CRF 18, as the tests write them) the test video's faces measured: clean 264-501, blurred
(σ 3) 12-31 (31 on the first blurred frame only, a P-frame still carrying its sharp reference's detail), luma x
0.2 at 28-29 (mean luma), brightened 1.6 times 0.45-0.48 clipped.

So 30 flags blur of σ 2 and more (σ 1 stays: 41 at least) with clean faces 9 times above it; 50 flags darkening
to 0.3 and below with clean faces 3 times above it; 0.25 flags a gain of 1.5 and more, clean faces having 0.014
at most. Heavy compression does not lower the Laplacian (block edges raise it), so a low bit rate is judged from
the stream:

- **low bit rate**: the video stream's bits per pixel per frame (packet sizes over duration, width, height and
  frame rate) under ``min_bits_per_pixel`` (default 0.02) drops the whole video: every frame of it shares the
  encoder's loss. The synthetic clip encoded with x264 (ultrafast) measured 0.169 at CRF 18 (the tests' videos),
  0.106 at CRF 23, 0.043 at CRF 35, 0.019 at CRF 45, 0.011 at CRF 51 and 0.009 at 20 kbit/s. For scale: 1080p25 at
  4 Mbit/s is 0.077 and 360p25 at 300 kbit/s 0.052.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from anchorcast.errors import InputError
from anchorcast.media import Image

DEFAULT_MIN_SHARPNESS = 30.0
DEFAULT_MIN_BRIGHTNESS = 50.0
DEFAULT_MAX_CLIPPED = 0.25
DEFAULT_MIN_BITS_PER_PIXEL = 0.02
CLIP_LOW, CLIP_HIGH = 8, 247
GATE_SIZE = 96

DARK, OVEREXPOSED, BLURRED = "too dark", "overexposed", "blurred"


@dataclass(frozen=True)
class QualityGate:
    """Thresholds of the frame and video checks (see the module docstring); 0 (1 for ``max_clipped``) turns a
    check off."""

    min_sharpness: float = DEFAULT_MIN_SHARPNESS
    min_brightness: float = DEFAULT_MIN_BRIGHTNESS
    max_clipped: float = DEFAULT_MAX_CLIPPED
    min_bits_per_pixel: float = DEFAULT_MIN_BITS_PER_PIXEL

    def __post_init__(self) -> None:
        if not (self.min_sharpness >= 0 and np.isfinite(self.min_sharpness)):
            raise InputError(f"--min-sharpness must be 0 or more, got {self.min_sharpness}",
                             hint=f"the default is {DEFAULT_MIN_SHARPNESS:g}; 0 turns the check off")
        if not 0 <= self.min_brightness <= 255:
            raise InputError(f"--min-brightness must be between 0 and 255, got {self.min_brightness}",
                             hint=f"the default is {DEFAULT_MIN_BRIGHTNESS:g}; 0 turns the check off")
        if not 0 < self.max_clipped <= 1:
            raise InputError(f"--max-clipped must be a fraction in (0, 1], got {self.max_clipped}",
                             hint=f"the default is {DEFAULT_MAX_CLIPPED:g}; 1 turns the check off")
        if not (self.min_bits_per_pixel >= 0 and np.isfinite(self.min_bits_per_pixel)):
            raise InputError(f"--min-bits-per-pixel must be 0 or more, got {self.min_bits_per_pixel}",
                             hint=f"the default is {DEFAULT_MIN_BITS_PER_PIXEL:g}; 0 turns the check off")

    def frame_fault(self, image: Image, face: tuple[int, int, int, int]) -> str | None:
        """Why the face ``(x, y, w, h)`` in the RGB ``image`` is unusable (:data:`DARK`, :data:`OVEREXPOSED`,
        :data:`BLURRED`), or None."""
        sharpness, brightness, clipped = face_measures(image, face)
        if brightness < self.min_brightness:
            return DARK
        if clipped > self.max_clipped:
            return OVEREXPOSED
        if sharpness < self.min_sharpness:
            return BLURRED
        return None

    def bitrate_fault(self, bits_per_pixel: float | None) -> str | None:
        if bits_per_pixel is None or bits_per_pixel >= self.min_bits_per_pixel:
            return None
        return (f"low bit rate: {bits_per_pixel:.4f} bits per pixel per frame (under --min-bits-per-pixel "
                f"{self.min_bits_per_pixel:g})")


def face_measures(image: Image, face: tuple[int, int, int, int]) -> tuple[float, float, float]:
    """``(Laplacian variance, mean luma, clipped fraction)`` of the face box's grey 96x96 crop."""
    import cv2

    x, y, w, h = face
    x, y = max(0, x), max(0, y)
    patch = np.ascontiguousarray(image[y : y + h, x : x + w])
    if patch.size == 0:
        return 0.0, 0.0, 1.0
    grey = cv2.resize(cv2.cvtColor(patch, cv2.COLOR_RGB2GRAY), (GATE_SIZE, GATE_SIZE),
                      interpolation=cv2.INTER_AREA)
    sharpness = float(cv2.Laplacian(grey, cv2.CV_64F).var())
    clipped = float(np.mean((grey <= CLIP_LOW) | (grey >= CLIP_HIGH)))
    return sharpness, float(grey.mean()), clipped
