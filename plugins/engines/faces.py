"""Face detection with OpenCV's bundled Haar frontal-face cascade (no model files to download), shared by the
engines: the largest confident face in a still, or the face that follows the previous one in a video."""

from __future__ import annotations

import cv2
import numpy as np
import numpy.typing as npt

from anchorcast.errors import InputError
from anchorcast.media import Image

HAAR_CASCADE = "haarcascade_frontalface_default.xml"
DETECT_MAX_SIDE = 640  # the cascade needs no more detail than this, and is slow on large frames

FaceBox = tuple[int, int, int, int]
"""``(x, y, w, h)`` in pixels."""


def _iou(a: FaceBox, b: FaceBox) -> float:
    ix = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


class FaceDetector:
    """OpenCV's bundled Haar frontal-face cascade, with tracking from frame to frame."""

    name = f"opencv-haar {HAAR_CASCADE} (OpenCV {cv2.__version__})"

    def __init__(self, missing_hint: str = "give the face box by hand") -> None:
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + HAAR_CASCADE)
        if self.cascade.empty():
            raise InputError("OpenCV's Haar face cascade is missing from this OpenCV install",
                             hint="install opencv-python-headless<5, or " + missing_hint)

    def detect(self, image: Image, previous: FaceBox | None = None) -> FaceBox | None:
        """The face in an RGB frame as ``(x, y, w, h)``: the one overlapping ``previous`` best, else the largest
        confident one; None when there is none."""
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        scale = min(1.0, DETECT_MAX_SIDE / max(grey.shape))
        if scale < 1.0:
            grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        grey = cv2.equalizeHist(grey)
        faces: list[FaceBox] = []
        if previous is not None:
            faces = self._near(grey, tuple(round(v * scale) for v in previous))  # type: ignore[arg-type]
        if not faces:
            smallest = max(24, int(0.08 * min(grey.shape)))
            found, votes = self.cascade.detectMultiScale2(grey, scaleFactor=1.1, minNeighbors=5,
                                                          minSize=(smallest, smallest))
            # A false face (a badge, a fold of cloth) gathers a handful of overlapping detections, a real one
            # dozens: keep the faces with at least a third of the best one's votes, then take the largest.
            strong = 0.33 * max(votes, default=0)
            faces = [(int(x), int(y), int(w), int(h))
                     for (x, y, w, h), n in zip(found, votes, strict=True) if n >= strong]
        if not faces:
            return None
        if previous is not None:
            scaled = tuple(v * scale for v in previous)
            best = max(faces, key=lambda f: _iou(f, scaled))  # type: ignore[arg-type]
            if _iou(best, scaled) > 0.2:  # type: ignore[arg-type]
                faces = [best]
        x, y, w, h = max(faces, key=lambda f: f[2] * f[3])
        return tuple(round(v / scale) for v in (x, y, w, h))  # type: ignore[return-value]

    def _near(self, grey: npt.NDArray[np.uint8], previous: FaceBox) -> list[FaceBox]:
        px, py, pw, ph = previous
        x0, y0 = max(0, px - pw // 2), max(0, py - ph // 2)
        x1, y1 = min(grey.shape[1], px + pw + pw // 2), min(grey.shape[0], py + ph + ph // 2)
        if x1 - x0 < pw or y1 - y0 < ph:
            return []
        size = max(pw, ph)
        found = self.cascade.detectMultiScale(grey[y0:y1, x0:x1], scaleFactor=1.1, minNeighbors=5,
                                              minSize=(int(0.7 * size), int(0.7 * size)),
                                              maxSize=(int(1.4 * size) + 1, int(1.4 * size) + 1))
        return [(int(x) + x0, int(y) + y0, int(w), int(h)) for x, y, w, h in found]
