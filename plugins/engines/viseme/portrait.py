"""Portrait mode: one still portrait, fitted into the output frame, with a warped mouth.

Everything that depends only on the portrait and the output size is computed once per run: the idle frame in
output coordinates, the mouth geometry, the feathered blend mask. Mouth patches are rendered on demand for each
quantised (openness, width) pair and cached, so a frame costs one frame copy and one small paste. Pixels
outside the mouth region are never touched, and the blend mask reaches zero at the region's edge.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import numpy.typing as npt

from anchorcast.errors import InputError
from anchorcast.media import Image, StreamFormat
from anchorcast_plugins.engines.images import read_image
from anchorcast_plugins.engines.viseme.shapes import MouthShape

Float32Array = npt.NDArray[np.float32]

OPENNESS_STEPS = 20
"""Patches per unit of openness (about 1 px of jaw travel per step on a 720p head-and-shoulders portrait)."""
WIDTH_STEPS = 4
"""Patches per unit of width, each side of neutral."""

# Mouth geometry relative to a Haar frontal-face box (measured on the bundled portrait; the cascade's box runs
# from the forehead to just below the lower lip).
LIP_LINE = 0.87  # where the lips part, from the box top, in box heights
MOUTH_HALF_WIDTH = 0.22  # in box widths
ROI_ABOVE, ROI_BELOW, ROI_HALF_WIDTH = 0.32, 0.55, 0.5  # region around the lip line, in box heights / widths
JAW_DROP = 0.12  # lower-lip travel at openness 1, in box heights
UPPER_LIP_RISE = 0.3  # upper-lip travel as a fraction of the lower lip's
OPENING_HALF_WIDTH = 0.85  # the gap between the lips ends short of the mouth corners
LIP_CURVE = 0.04  # the lip line rises this much towards the corners (in box heights): most portraits smile
WIDTH_STRETCH = 0.18  # mouth width change at width +-1

BLUR_DARKEN = 0.45
CAVITY_DARK = np.array([40, 16, 19], np.float32)  # the throat, just under the upper lip
CAVITY_TONGUE = np.array([105, 46, 52], np.float32)  # towards the lower lip


@dataclass(frozen=True, slots=True)
class Box:
    """An axis-aligned box in pixels: ``x, y`` top-left, ``w, h`` size."""

    x: int
    y: int
    w: int
    h: int

    @property
    def right(self) -> int:
        return self.x + self.w

    @property
    def bottom(self) -> int:
        return self.y + self.h


def load_image(path: Path) -> Image:
    """An image file as RGB uint8 (alpha dropped, grey expanded), or InputError naming the file."""
    return cv2.cvtColor(read_image(path, "the avatar image"), cv2.COLOR_BGR2RGB)


MATTE_SUFFIX = "-matte.png"
"""A portrait without an alpha channel may have its alpha beside it: ``anchor.jpg`` -> ``anchor-matte.png``."""


def load_matte(path: Path) -> Image | None:
    """The portrait's alpha as (H, W) uint8, from its own alpha channel or from the grey ``<stem>-matte.png``
    beside it; None when it has neither (the whole picture is the anchor). InputError for an unreadable or
    wrongly sized matte file, naming it."""
    image = read_image(path, "the avatar image", cv2.IMREAD_UNCHANGED)
    if image.ndim == 3 and image.shape[2] == 4:
        alpha = image[:, :, 3]
        return (alpha >> 8).astype(np.uint8) if alpha.dtype == np.uint16 else alpha.copy()
    beside = path.with_name(path.stem + MATTE_SUFFIX)
    if not beside.is_file():
        return None
    matte = read_image(beside, "the portrait's matte", cv2.IMREAD_GRAYSCALE, hint="use a grey PNG")
    if matte.shape != image.shape[:2]:
        raise InputError(f"the matte {beside} is {matte.shape[1]}x{matte.shape[0]} pixels but the portrait {path} "
                         f"is {image.shape[1]}x{image.shape[0]}", hint="make the matte the portrait's size")
    return matte


def detect_face(image: Image) -> Box | None:
    """The largest confident frontal face in an RGB image (OpenCV's bundled Haar cascade), or None."""
    from anchorcast_plugins.engines.faces import FaceDetector

    found = FaceDetector(missing_hint="give the face box as face_box = [x, y, w, h]").detect(image)
    return Box(*found) if found is not None else None


@dataclass(frozen=True, slots=True)
class MouthGeometry:
    """Where the mouth is, in some pixel coordinates: the lip line's centre, its half width, the face size."""

    centre_x: float
    lip_y: float
    half_width: float
    face_width: float
    face_height: float

    @classmethod
    def from_face(cls, face: Box) -> MouthGeometry:
        return cls(face.x + 0.5 * face.w, face.y + LIP_LINE * face.h, MOUTH_HALF_WIDTH * face.w,
                   float(face.w), float(face.h))

    def transformed(self, scale: float, dx: float, dy: float) -> MouthGeometry:
        return MouthGeometry(self.centre_x * scale + dx, self.lip_y * scale + dy, self.half_width * scale,
                             self.face_width * scale, self.face_height * scale)

    def region(self) -> tuple[int, int, int, int]:
        """The region the mouth warp may touch, as ``(x0, y0, x1, y1)`` (unclipped)."""
        half = ROI_HALF_WIDTH * self.face_width
        return (int(np.floor(self.centre_x - half)), int(np.floor(self.lip_y - ROI_ABOVE * self.face_height)),
                int(np.ceil(self.centre_x + half)), int(np.ceil(self.lip_y + ROI_BELOW * self.face_height)))


def parse_colour(text: str) -> tuple[int, int, int] | None:
    """``"#RRGGBB"`` as an RGB triple, or None when ``text`` is not such a colour."""
    if len(text) != 7 or not text.startswith("#"):
        return None
    try:
        return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
    except ValueError:
        return None


def _resize(image: Image, width: int, height: int) -> Image:
    shrinking = width * height < image.shape[0] * image.shape[1]
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)


def blurred_backdrop(image: Image, width: int, height: int) -> Image:
    """The image enlarged to cover ``width x height``, heavily blurred and darkened (a broadcast pillarbox)."""
    ih, iw = image.shape[:2]
    cover = max(width / iw, height / ih)
    small_w, small_h = max(4, width // 16), max(4, height // 16)
    # Crop the part that covers the frame, then blur at 1/16 size: the same look as a huge kernel, at no cost.
    crop_w, crop_h = min(iw, width / cover), min(ih, height / cover)
    x0, y0 = int((iw - crop_w) / 2), int((ih - crop_h) / 2)
    crop = image[y0 : y0 + max(1, int(crop_h)), x0 : x0 + max(1, int(crop_w))]
    small = cv2.GaussianBlur(cv2.resize(crop, (small_w, small_h), interpolation=cv2.INTER_AREA), (0, 0), 2.0)
    large = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    return cv2.convertScaleAbs(large, alpha=BLUR_DARKEN)


def _smoothstep(edge0: float, edge1: float, x: Float32Array) -> Float32Array:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _bump(x: Float32Array) -> Float32Array:
    """A smooth bump: 1 at 0, 0 from |x| >= 1, zero slope at both ends."""
    inside = np.clip(1.0 - x * x, 0.0, 1.0)
    return inside * inside


class PortraitRenderer:
    """Draws a portrait with its mouth opened, rounded or spread by a :class:`MouthShape`."""

    def __init__(self, image: Image, face: Box, background: str | tuple[int, int, int],
                 alpha: Image | None = None) -> None:
        self.image = image
        self.face = face
        self.background = background
        self.alpha = alpha
        self.idle_frame: Image | None = None
        self.matte: Image | None = None
        """The anchor's silhouette in output pixels, once open (see :func:`load_matte`): the portrait's alpha
        where it has one, else the whole fitted portrait; 0 in the letterbox."""
        self.face_in_frame: tuple[float, float, float, float] | None = None
        """The face box in output pixels, once open."""
        self.mouth: MouthGeometry | None = None
        self.region: tuple[int, int, int, int] | None = None
        self._patches: dict[tuple[int, int], Image] = {}
        self._blend: Float32Array | None = None

    @property
    def image_mouth(self) -> MouthGeometry:
        """The mouth geometry in portrait-image pixels."""
        return MouthGeometry.from_face(self.face)

    def open(self, fmt: StreamFormat) -> None:
        ih, iw = self.image.shape[:2]
        scale = min(fmt.width / iw, fmt.height / ih)
        fit_w, fit_h = max(1, round(iw * scale)), max(1, round(ih * scale))
        x0, y0 = (fmt.width - fit_w) // 2, (fmt.height - fit_h) // 2
        if self.background == "blur":
            frame = blurred_backdrop(self.image, fmt.width, fmt.height)
        else:
            frame = np.empty((fmt.height, fmt.width, 3), np.uint8)
            frame[:] = self.background
        frame[y0 : y0 + fit_h, x0 : x0 + fit_w] = _resize(self.image, fit_w, fit_h)
        frame.flags.writeable = False
        self.idle_frame = frame
        matte = np.zeros((fmt.height, fmt.width), np.uint8)
        matte[y0 : y0 + fit_h, x0 : x0 + fit_w] = 255 if self.alpha is None else _resize(self.alpha, fit_w, fit_h)
        matte.flags.writeable = False
        self.matte = matte
        self.mouth = self.image_mouth.transformed(fit_w / iw, x0, y0)
        f = self.face
        self.face_in_frame = (f.x * fit_w / iw + x0, f.y * fit_w / iw + y0, f.w * fit_w / iw, f.h * fit_w / iw)
        rx0, ry0, rx1, ry1 = self.mouth.region()
        self.region = (max(rx0, x0), max(ry0, y0), min(rx1, x0 + fit_w), min(ry1, y0 + fit_h))
        self._patches = {}
        self._blend = self._blend_mask()

    def close(self) -> None:
        self._patches = {}

    def frame(self, shape: MouthShape) -> Image:
        """A new frame showing ``shape`` (already scaled by speech presence and mouth scale)."""
        assert self.idle_frame is not None and self.region is not None, "open() first"
        out = self.idle_frame.copy()
        key = (round(shape.openness * OPENNESS_STEPS), round(max(-1.0, min(1.0, shape.width)) * WIDTH_STEPS))
        if key == (0, 0) or self.region[2] <= self.region[0] or self.region[3] <= self.region[1]:
            return out
        patch = self._patches.get(key)
        if patch is None:
            patch = self._patches[key] = self._render_patch(key[0] / OPENNESS_STEPS, key[1] / WIDTH_STEPS)
        x0, y0, x1, y1 = self.region
        out[y0:y1, x0:x1] = patch
        return out

    # --- the warp ------------------------------------------------------------------------------------------

    def _grid(self) -> tuple[Float32Array, Float32Array]:
        assert self.region is not None
        x0, y0, x1, y1 = self.region
        xs = np.arange(x0, x1, dtype=np.float32)
        ys = np.arange(y0, y1, dtype=np.float32)
        return np.meshgrid(xs, ys)

    def _blend_mask(self) -> Float32Array:
        """1 over the mouth and jaw, easing to exactly 0 at the region's edge (no visible box)."""
        assert self.mouth is not None and self.region is not None
        x0, y0, x1, y1 = self.region
        w, h = max(1, x1 - x0), max(1, y1 - y0)
        ramp_x = _smoothstep(0.0, 0.22, np.minimum(np.arange(w), w - 1 - np.arange(w)).astype(np.float32) / w)
        ramp_y = _smoothstep(0.0, 0.22, np.minimum(np.arange(h), h - 1 - np.arange(h)).astype(np.float32) / h)
        return (ramp_y[:, None] * ramp_x[None, :])[:, :, None]

    def _render_patch(self, openness: float, width: float) -> Image:
        """The mouth region with the lower lip and jaw lowered by ``openness``, the lips spread or pursed by
        ``width``, and a soft dark cavity where they part; blended into the idle frame."""
        assert self.idle_frame is not None and self.mouth is not None and self._blend is not None
        m = self.mouth
        grid_x, grid_y = self._grid()
        fh = m.face_height

        # Lips spread (width > 0) or pursed (width < 0) about the mouth centre, fading out around the mouth.
        stretch = 1.0 + WIDTH_STRETCH * width
        near_mouth = _bump((grid_x - m.centre_x) / (2.1 * m.half_width)) * _bump(
            (grid_y - m.lip_y) / (np.where(grid_y < m.lip_y, ROI_ABOVE, ROI_BELOW) * fh))
        src_x = grid_x + (grid_x - m.centre_x) * (1.0 / stretch - 1.0) * near_mouth

        # The gap between the lips: a lens between the mouth corners, rounder when pursed.
        pursed = max(0.0, -width)
        across = (src_x - m.centre_x) / (OPENING_HALF_WIDTH * (1.0 - 0.3 * pursed) * m.half_width)
        lens = np.clip(1.0 - across * across, 0.0, 1.0) ** (0.75 - 0.25 * pursed - 0.15 * max(0.0, width))
        corner = (grid_x - m.centre_x) / m.half_width
        lip_y = m.lip_y - LIP_CURVE * fh * np.minimum(corner * corner, 1.5)
        jaw = 0.9 * _bump((grid_x - m.centre_x) / (2.2 * m.half_width))
        drop = JAW_DROP * fh * openness
        rise = UPPER_LIP_RISE * drop

        below = grid_y >= lip_y
        t_down = np.clip((grid_y - lip_y) / (ROI_BELOW * fh), 0.0, 1.0)
        into_jaw = _smoothstep(0.0, 0.6, t_down)
        fade_down = 1.0 - _smoothstep(0.55, 1.0, t_down)
        src_below = grid_y - drop * (lens * (1.0 - into_jaw) + jaw * into_jaw) * fade_down
        t_up = np.clip((lip_y - grid_y) / (ROI_ABOVE * fh), 0.0, 1.0)
        src_above = grid_y + rise * lens * (1.0 - _smoothstep(0.0, 1.0, t_up))
        # Keep each side's mapping monotonic so a large mouth_scale squashes the chin instead of folding it.
        src_below = np.where(below, src_below, -np.inf)
        src_below = np.maximum.accumulate(src_below, axis=0)
        src_above = np.where(below, np.inf, src_above)
        src_above = np.minimum.accumulate(src_above[::-1], axis=0)[::-1]

        cavity = np.where(below, np.clip((lip_y - src_below) / 1.5, 0.0, 1.0),
                          np.clip((src_above - lip_y) / 1.5, 0.0, 1.0))
        src_y = np.where(below, np.maximum(src_below, lip_y), np.minimum(src_above, lip_y))
        warped = cv2.remap(self.idle_frame, src_x.astype(np.float32), src_y.astype(np.float32), cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REPLICATE).astype(np.float32)

        # Inside the mouth: dark under the upper lip, towards tongue colour near the lower lip.
        gap_top = lip_y - rise * lens
        gap_height = np.maximum((drop + rise) * lens, 1.0)
        depth = _smoothstep(0.45, 1.05, (grid_y - gap_top) / gap_height)[:, :, None]
        inside = CAVITY_DARK + (CAVITY_TONGUE - CAVITY_DARK) * depth * np.clip(openness, 0.0, 1.0)
        cavity = cavity[:, :, None]
        warped = warped * (1.0 - cavity) + inside * cavity

        x0, y0, x1, y1 = self.region  # type: ignore[misc]
        idle = self.idle_frame[y0:y1, x0:x1].astype(np.float32)
        blended = idle + (warped - idle) * self._blend
        return np.clip(blended + 0.5, 0, 255).astype(np.uint8)
