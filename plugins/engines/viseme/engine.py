"""The ``viseme`` lip engine: mouth shapes from phonemes or audio, drawn on a portrait or as sprites.

Imported by the plugin's factory only (it imports OpenCV).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

from anchorcast.components import FrameJob
from anchorcast.errors import InputError
from anchorcast.media import Image, StreamFormat
from anchorcast_plugins.engines.viseme.idle import IdleMotion, find_eyes
from anchorcast_plugins.engines.viseme.portrait import (
    Box,
    PortraitRenderer,
    detect_face,
    load_image,
    load_matte,
    parse_colour,
)
from anchorcast_plugins.engines.viseme.shapes import (
    REST,
    MouthShape,
    Viseme,
    shape_from_audio,
    shape_from_phonemes,
    voice_gate,
)
from anchorcast_plugins.engines.viseme.sprites import SpriteRenderer

SPRITE_BACKGROUND = (30, 36, 48)
"""The sprite backdrop when ``background = "blur"`` (a sprite has nothing to blur): a dark studio blue."""
PHONEME_HALF_WINDOW = 0.045
"""Seconds each side of a frame's centre over which phoneme shapes are averaged (coarticulation, no flicker)."""
ARTICULATION_LEAD = 0.02
"""Seconds by which the lips run ahead of the phoneme timings. Visible articulation precedes the sound it makes,
and eSpeak's and Piper's phoneme onsets trail the energy of the audio: without a lead the mouth correlates best
with the audio 15-20 ms late (measured at 100 fps on both voices), which is 0.4-0.5 of a frame at 25 fps."""


class Renderer(Protocol):
    idle_frame: Image | None
    matte: Image | None

    def open(self, fmt: StreamFormat) -> None: ...

    def frame(self, shape: MouthShape) -> Image: ...

    def close(self) -> None: ...


def bundled_avatar() -> Path:
    """The default portrait shipped with anchorcast (a public-domain NASA photograph)."""
    return Path(str(resources.files("anchorcast_plugins.engines") / "assets" / "astronaut.png"))


class VisemeEngine:
    """A :class:`~anchorcast.components.LipEngine` that needs no model weights.

    Each frame's mouth shape comes from the phonemes around the frame's centre when the voice gave timings,
    otherwise from the audio context (level and spectrum); it is scaled by the frame's ``speech`` presence
    and ``mouth_scale``, so silence shows the idle frame exactly.
    """

    lookbehind = 0.04
    lookahead = 0.04 + ARTICULATION_LEAD
    max_batch = 8

    def __init__(self, renderer: Renderer, mouth_scale: float = 1.0, idle_motion: bool = False) -> None:
        self.renderer = renderer
        self.mouth_scale = mouth_scale
        self.idle_motion = idle_motion
        self.motion: IdleMotion | None = None
        self._fmt: StreamFormat | None = None

    def open(self, fmt: StreamFormat) -> None:
        self._fmt = fmt
        self.renderer.open(fmt)
        face = getattr(self.renderer, "face_in_frame", None)
        if self.idle_motion and face is not None and self.renderer.idle_frame is not None:
            eyes = find_eyes(self.renderer.idle_frame, face)
            self.motion = IdleMotion(eyes, (fmt.width, fmt.height), fmt.fps)

    def shape(self, job: FrameJob) -> MouthShape:
        """The mouth shape frame ``job`` shows, scaled by speech presence and ``mouth_scale``."""
        assert self._fmt is not None, "open() first"
        if job.speech <= 0.0:
            return REST
        rate = self._fmt.sample_rate
        if job.phonemes:
            centre = job.pts + 0.5 * job.frame_samples / rate + ARTICULATION_LEAD
            half_window = min(PHONEME_HALF_WINDOW, self.lookbehind + 0.5 * job.frame_samples / rate)
            shape = shape_from_phonemes(job.phonemes, centre, half_window)
            gate = voice_gate(job.context)
            shape = MouthShape(shape.openness * gate, shape.width * gate, shape.viseme if gate > 0 else Viseme.REST)
        else:
            shape = shape_from_audio(job.context, rate)
        speech = min(job.speech, 1.0)
        return MouthShape(shape.openness * speech * self.mouth_scale, shape.width * speech, shape.viseme)

    def render(self, jobs: Sequence[FrameJob]) -> list[Image]:
        """One new (H, W, 3) RGB uint8 array per job, the caller's to keep and modify."""
        frames = [self.renderer.frame(self.shape(job)) for job in jobs]
        if self.motion is not None:
            frames = [self.motion.apply(frame, job.index) for frame, job in zip(frames, jobs, strict=True)]
        return frames

    def idle(self, index: int) -> Image:
        """The idle frame: without idle motion the same cached, read-only array every time (copy it before
        drawing on it); with it, a new frame with this index's blink and breath."""
        frame = self.renderer.idle_frame
        assert frame is not None, "open() first"
        return frame if self.motion is None else self.motion.apply(frame, index)

    def close(self) -> None:
        self.renderer.close()

    @property
    def matte(self) -> Image | None:
        """Once open: the anchor's silhouette as (H, W) uint8 alpha in output pixels (the browser overlay cuts
        the anchor out with it); blinks and breathing move the portrait by about a pixel, not the matte."""
        return self.renderer.matte

    @property
    def mouth_region(self) -> tuple[int, int, int, int] | None:
        """Portrait mode, once open: the ``(x0, y0, x1, y1)`` output pixels a mouth may change; else None."""
        return self.renderer.region if isinstance(self.renderer, PortraitRenderer) else None


def _background(value: str, for_sprites: bool) -> str | tuple[int, int, int]:
    if value == "blur":
        return SPRITE_BACKGROUND if for_sprites else "blur"
    colour = parse_colour(value)
    if colour is None:
        raise InputError(f"viseme: background = {value!r} is neither \"blur\" nor a colour \"#RRGGBB\"",
                         hint='for example background = "#101820"')
    return colour


def _face_box(value: Any) -> Box | None:
    if value is None:
        return None
    numbers = list(value) if isinstance(value, (list, tuple)) else None
    if (numbers is None or len(numbers) != 4
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in numbers)):
        raise InputError(f"viseme: face_box = {value!r} must be four whole numbers [x, y, w, h]",
                         hint="the face's box in the avatar image's pixels, e.g. face_box = [177, 67, 93, 93]")
    x, y, w, h = numbers
    if w <= 0 or h <= 0 or x < 0 or y < 0:
        raise InputError(f"viseme: face_box = {value!r} needs x, y >= 0 and a positive width and height")
    return Box(x, y, w, h)


def create_engine(settings: Mapping[str, Any], on_air: bool = False) -> VisemeEngine:
    """The engine for a validated settings table (keys missing from ``settings`` take their defaults);
    ``on_air``: for a studio session (``idle_motion = "auto"`` blinks and breathes then)."""
    idle_motion = {"on": True, "off": False}.get(settings.get("idle_motion", "auto"), on_air)
    sprites: Path | None = settings.get("sprites")
    avatar: Path | None = settings.get("avatar")
    face_box = _face_box(settings.get("face_box"))
    mouth_scale = float(settings.get("mouth_scale", 1.0))
    if sprites is not None:
        if avatar is not None or face_box is not None:
            raise InputError("viseme: sprites replace the portrait: give either sprites or avatar/face_box",
                             hint="remove avatar and face_box to use the sprite set, or sprites for the portrait")
        background = _background(settings.get("background", "blur"), for_sprites=True)
        assert isinstance(background, tuple)
        return VisemeEngine(SpriteRenderer(Path(sprites), background), mouth_scale)

    path = Path(avatar) if avatar is not None else bundled_avatar()
    image = load_image(path)
    if face_box is None:
        face_box = detect_face(image)
        if face_box is None:
            raise InputError(
                f"no face found in the avatar image {path}",
                hint='use a front-facing portrait, give the face box by hand (face_box = [x, y, w, h] in image '
                'pixels), or use a sprite set (sprites = "folder with closed.png and open.png")',
            )
    elif face_box.right > image.shape[1] or face_box.bottom > image.shape[0]:
        raise InputError(f"viseme: face_box {[face_box.x, face_box.y, face_box.w, face_box.h]} lies outside the "
                         f"avatar image {path} ({image.shape[1]}x{image.shape[0]} pixels)")
    renderer = PortraitRenderer(image, face_box, _background(settings.get("background", "blur"), False),
                                load_matte(path))
    return VisemeEngine(renderer, mouth_scale, idle_motion)
