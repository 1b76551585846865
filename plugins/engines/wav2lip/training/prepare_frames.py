"""The face frames ``anchorcast train prepare`` holds while it tracks a stretch: the padded face box grown by a
margin (not the whole frame), and what is measured on them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from anchorcast.media import Image

REGION_MARGIN = 0.25
"""Each frame keeps its padded face box grown by this fraction on every side, so the smoothed box (a mean over
five frames) can be cut from it without holding whole frames."""

Box = tuple[int, int, int, int]


@dataclass
class FaceFrame:
    region: npt.NDArray[np.uint8]  # RGB, the padded box grown by REGION_MARGIN
    origin: tuple[int, int]  # the region's top-left corner in the frame
    box: Box  # padded face box (x1, y1, x2, y2) in the frame
    face: Box  # the detected face (x, y, w, h), to track into the next frame


def face_region(image: Image, box: Box, face: Box) -> FaceFrame:
    x1, y1, x2, y2 = box
    mx, my = round(REGION_MARGIN * (x2 - x1)), round(REGION_MARGIN * (y2 - y1))
    rx1, ry1 = max(0, x1 - mx), max(0, y1 - my)
    rx2, ry2 = min(image.shape[1], x2 + mx), min(image.shape[0], y2 + my)
    return FaceFrame(np.ascontiguousarray(image[ry1:ry2, rx1:rx2]), (rx1, ry1), box, face)


def crop_boxes(frames: list[FaceFrame], boxes: list[Box]) -> list[Box]:
    """The smoothed padded boxes ``boxes`` (frame coordinates) in each frame's region, clamped inside it."""
    local = []
    for frame, (x1, y1, x2, y2) in zip(frames, boxes, strict=True):
        ox, oy = frame.origin
        rh, rw = frame.region.shape[:2]
        bx1, by1 = min(max(0, x1 - ox), rw - 1), min(max(0, y1 - oy), rh - 1)
        bx2, by2 = max(bx1 + 1, min(rw, x2 - ox)), max(by1 + 1, min(rh, y2 - oy))
        local.append((bx1, by1, bx2, by2))
    return local


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two ``(x, y, w, h)`` boxes."""
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = w * h
    return inter / float(aw * ah + bw * bh - inter) if inter else 0.0


def clip_embedding(embedder: Any, frames: list[FaceFrame]) -> npt.NDArray[np.float64]:
    """The mean face embedding of a few frames spread over a clip (see :mod:`.prepare_people`)."""
    from anchorcast_plugins.engines.wav2lip.training.prepare_people import sample_indices

    vectors = []
    for k in sample_indices(len(frames)):
        frame = frames[k]
        x, y, w, h = frame.face
        vectors.append(embedder.embed(frame.region, (x - frame.origin[0], y - frame.origin[1], w, h)))
    return np.mean(vectors, axis=0)
