"""Sprite-set mode: a folder of mouth-state PNGs, as PNG-avatar streamers use.

``closed.png`` (also the idle frame) and ``open.png`` are required; ``wide.png``, ``round.png``, ``teeth.png`` and
``mid.png`` (see :class:`~anchorcast_plugins.engines.viseme.shapes.Viseme`) are used when present. Each sprite is
composited once over the background colour and fitted into the output frame; a frame is then a copy of one of
them.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from anchorcast.errors import InputError
from anchorcast.media import Image, StreamFormat
from anchorcast_plugins.engines.images import read_image
from anchorcast_plugins.engines.viseme.shapes import MouthShape, Viseme

REQUIRED = (Viseme.CLOSED, Viseme.OPEN)
SPRITE_VISEMES = tuple(v for v in Viseme if v is not Viseme.REST)
OPEN_ENOUGH = 0.15
"""Below this (scaled) openness the closed sprite shows."""
OPEN_SPRITE_FROM = 0.35
"""A shape whose own sprite is missing shows ``open.png`` from this openness, else ``closed.png``."""


def load_sprite(path: Path) -> Image:
    """An RGBA uint8 sprite (opaque when the file has no alpha), or InputError naming the file."""
    image = read_image(path, "the sprite", cv2.IMREAD_UNCHANGED, hint="use PNG files")
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGBA)
    elif image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGBA)
    else:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGBA)
    return image


def load_sprite_set(folder: Path) -> dict[Viseme, Image]:
    """The sprites in ``folder`` by viseme; InputError naming the folder and file if a required one is missing."""
    sprites: dict[Viseme, Image] = {}
    for viseme in SPRITE_VISEMES:
        path = folder / f"{viseme.value}.png"
        if path.is_file():
            sprites[viseme] = load_sprite(path)
        elif viseme in REQUIRED:
            raise InputError(
                f"the sprite set {folder} has no {path.name}",
                hint="a sprite set needs closed.png and open.png; wide.png, round.png, teeth.png and mid.png "
                "are optional",
            )
    return sprites


def compose(sprite: Image, background: tuple[int, int, int], width: int, height: int) -> Image:
    """``sprite`` (RGBA) fitted into ``width x height`` and composited over a solid ``background`` colour."""
    sh, sw = sprite.shape[:2]
    scale = min(width / sw, height / sh)
    fit_w, fit_h = max(1, round(sw * scale)), max(1, round(sh * scale))
    shrinking = fit_w * fit_h < sw * sh
    fitted = cv2.resize(sprite, (fit_w, fit_h), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC)
    frame = np.empty((height, width, 3), np.uint8)
    frame[:] = background
    x0, y0 = (width - fit_w) // 2, (height - fit_h) // 2
    under = frame[y0 : y0 + fit_h, x0 : x0 + fit_w].astype(np.float32)
    alpha = fitted[:, :, 3:4].astype(np.float32) / 255.0
    over = fitted[:, :, :3].astype(np.float32)
    blended = under + (over - under) * alpha
    frame[y0 : y0 + fit_h, x0 : x0 + fit_w] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return frame


def sprite_for(shape: MouthShape, available: set[Viseme]) -> Viseme:
    """Which sprite shows a (scaled) mouth shape: its own viseme's when the set has it, else open or closed."""
    if shape.openness < OPEN_ENOUGH or shape.viseme in (Viseme.CLOSED, Viseme.REST):
        return Viseme.CLOSED
    if shape.viseme in available:
        return shape.viseme
    return Viseme.OPEN if shape.openness >= OPEN_SPRITE_FROM else Viseme.CLOSED


class SpriteRenderer:
    """Draws whole-frame sprites; the idle frame is the closed sprite."""

    def __init__(self, folder: Path, background: tuple[int, int, int]) -> None:
        self.folder = folder
        self.sprites = load_sprite_set(folder)
        self.background = background
        self.frames: dict[Viseme, Image] = {}
        self.idle_frame: Image | None = None
        self.matte: Image | None = None
        """Once open: where any sprite is opaque, in output pixels (a set whose sprites share one outline cuts
        out exactly; elsewhere the background colour shows where only another sprite is opaque)."""

    def open(self, fmt: StreamFormat) -> None:
        self.frames = {}
        for viseme, sprite in self.sprites.items():
            frame = compose(sprite, self.background, fmt.width, fmt.height)
            frame.flags.writeable = False
            self.frames[viseme] = frame
        self.idle_frame = self.frames[Viseme.CLOSED]
        alphas = [compose(np.dstack([sprite[:, :, 3]] * 4), (0, 0, 0), fmt.width, fmt.height)[:, :, 0]
                  for sprite in self.sprites.values()]  # white where each sprite is opaque, fitted like it
        self.matte = np.max(np.stack(alphas), axis=0)
        self.matte.flags.writeable = False

    def close(self) -> None:
        self.frames = {}

    def frame(self, shape: MouthShape) -> Image:
        assert self.idle_frame is not None, "open() first"
        return self.frames[sprite_for(shape, set(self.frames))].copy()
