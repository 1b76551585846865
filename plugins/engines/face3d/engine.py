"""The ``face3d`` lip engine: speech -> 53 expression coefficients (the coefficient model) -> the 3D head (OpenGL).

Imported by the plugin's factory only (it imports torch and moderngl).

Each batch: the model runs once over the union of the jobs' audio windows (:mod:`.batching`), the weights are
scaled by the frame's speech presence (and the mouth's by ``mouth_scale``), the idle blink, gaze and head sway are
added (:mod:`.motion`), and the head is drawn (:mod:`.render`). Every picture, idle ones included, is tagged with
the (53,) coefficients it shows (``side_data["coefficients"]``), which the outputs and the studio server's
coefficient stream read.

OpenGL contexts belong to a thread, while the scheduler, a shared engine's lanes and the idle path call from
several: all drawing happens on one worker thread the engine owns.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from anchorcast.components import FrameJob
from anchorcast.errors import InputError
from anchorcast.media import Image, StreamFormat, tag_image

from .asset import SHIPPED_ASSET, FaceModel
from .batching import BatchCoefficients, LogitsFunction
from .coeff_model import LOOKAHEAD_S, CoefficientModel
from .materials import DEFAULT_SKIN, parse_colour
from .motion import IdleMotion, combine
from .render import NEUTRAL_POSE, HeadRenderer

log = logging.getLogger(__name__)
T = TypeVar("T")

SHIPPED_WEIGHTS = Path(__file__).resolve().parent / "assets" / "coeffs.safetensors"
"""The coefficient model the package ships (trained by ``anchorcast train coeffs``)."""
DEFAULT_BACKGROUND = (16, 24, 32)
IDLE_FRAMES_KEPT = 8
MOUTH_PREFIXES = ("jaw", "mouth", "cheekPuff")
"""The expressions ``mouth_scale`` scales."""


class Face3DEngine:
    """A :class:`~anchorcast.components.LipEngine` drawing the 3D head from the coefficient model's output."""

    lookahead = LOOKAHEAD_S
    max_batch = 8

    def __init__(self, model: CoefficientModel, face: FaceModel, *, identity: npt.ArrayLike | None = None,
                 skin: tuple[int, int, int] = DEFAULT_SKIN, texture: npt.NDArray[np.uint8] | None = None,
                 background: tuple[int, int, int] = DEFAULT_BACKGROUND, idle_motion: bool = False,
                 mouth_scale: float = 1.0, samples: int = 0, logits: LogitsFunction | None = None) -> None:
        """``logits``: how the model's token pass runs (default: the exported runtime :mod:`.export` prefers,
        else torch)."""
        if tuple(model.expression_names) != tuple(face.expression_names):
            raise InputError("face3d: the coefficient model's expressions do not match the face model's",
                             hint="use weights trained for the shipped head (anchorcast train coeffs)")
        self.model = model
        self.face = face
        self.identity = identity
        self.skin, self.texture, self.background = skin, texture, background
        self.idle_motion = idle_motion
        self.mouth_scale = mouth_scale
        self.samples = samples
        self._logits = logits
        self.lookbehind = model.lookbehind_samples / 16000
        names = face.expression_names
        self._mouth = np.array([name.startswith(MOUTH_PREFIXES) for name in names])
        self._eyes = np.array([name.startswith(("eyeBlink", "eyeLook")) for name in names])
        self._fmt: StreamFormat | None = None
        self._worker: concurrent.futures.ThreadPoolExecutor | None = None
        self._renderer: HeadRenderer | None = None
        self._coefficients: BatchCoefficients | None = None
        self._motion: IdleMotion | None = None
        self._still: Image | None = None
        self._idle_frames: OrderedDict[int, Image] = OrderedDict()
        self._idle_lock = threading.Lock()
        self._matte: Image | None = None

    # --- lifecycle ---------------------------------------------------------------------------------------

    def open(self, fmt: StreamFormat) -> None:
        self._fmt = fmt
        if self._logits is None:
            from .export import best_logits

            self._logits = best_logits(self.model)
        self._coefficients = BatchCoefficients(self.model, fmt.fps, fmt.sample_rate, self._logits)
        self.lookbehind = self._coefficients.lookbehind_s
        self._motion = IdleMotion(fmt.fps, self.face.expression_names) if self.idle_motion else None
        self._worker = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="anchorcast-face3d")
        self._renderer = self._on_worker(lambda: HeadRenderer(
            self.face, fmt.width, fmt.height, identity=self.identity, skin=self.skin, texture=self.texture,
            background=self.background, samples=self.samples))
        if self._motion is None:
            self._still = self._draw_all(np.zeros((1, len(self.face.expression_names)), np.float32), [0])[0]
            self._still.flags.writeable = False

    def close(self) -> None:
        if self._worker is None:
            return
        renderer, self._renderer = self._renderer, None
        if renderer is not None:
            self._on_worker(renderer.close)
        self._worker.shutdown(wait=True)
        self._worker = None

    def _on_worker(self, call: Callable[[], T]) -> T:
        assert self._worker is not None, "open() first"
        return self._worker.submit(call).result()

    # --- frames ------------------------------------------------------------------------------------------

    def coefficients(self, jobs: Sequence[FrameJob]) -> npt.NDArray[np.float32]:
        """(n, 53) float32: what each job's frame shows, idle motion included."""
        assert self._coefficients is not None, "open() first"
        weights = self._coefficients(jobs)
        speech = np.clip(np.array([job.speech for job in jobs], np.float32), 0.0, 1.0)[:, None]
        weights *= speech
        weights[:, self._mouth] = np.clip(weights[:, self._mouth] * self.mouth_scale, 0.0, 1.0)
        if self._motion is not None:
            for row, job in enumerate(jobs):
                weights[row] = combine(weights[row], self._motion.coefficients(job.index, float(speech[row, 0])),
                                       self._eyes)
        return weights

    def render(self, jobs: Sequence[FrameJob]) -> list[Image]:
        """One new (H, W, 3) RGB uint8 picture per job, tagged with its coefficients."""
        weights = self.coefficients(jobs)
        return self._draw_all(weights, [job.index for job in jobs])

    def idle(self, index: int) -> Image:
        """The head at rest: without idle motion one cached picture; with it, this frame's blink, gaze and head
        pose, the last few kept (a repeated index, as on overrun, costs nothing). Read-only either way (copy it
        before drawing on it); tagged with its coefficients."""
        if self._still is not None:
            return self._still
        assert self._motion is not None, "open() first"
        with self._idle_lock:
            cached = self._idle_frames.get(index)
        if cached is not None:
            return cached
        image = self._draw_all(self._motion.coefficients(index)[None], [index])[0]
        image.flags.writeable = False
        with self._idle_lock:
            self._idle_frames[index] = image
            while len(self._idle_frames) > IDLE_FRAMES_KEPT:
                self._idle_frames.popitem(last=False)
        return image

    def _draw_all(self, weights: npt.NDArray[np.float32], indices: Sequence[int]) -> list[Image]:
        """The frames ``indices`` with ``weights`` (n, 53), drawn in one hand-over to the worker thread (one
        thread switch a batch, not one a frame, which counts where other processes share the cores)."""
        renderer = self._renderer
        assert renderer is not None, "open() first"
        poses = [self._motion.pose(index) if self._motion is not None else NEUTRAL_POSE for index in indices]

        def draw() -> list[npt.NDArray[np.uint8]]:
            return [renderer.render(row, pose) for row, pose in zip(weights, poses, strict=True)]

        pictures = self._on_worker(draw)
        self._matte = pictures[-1][..., 3]
        return [tag_image(np.ascontiguousarray(rgba[..., :3]), coefficients=np.array(row, np.float32))
                for rgba, row in zip(pictures, weights, strict=True)]

    @property
    def matte(self) -> Image | None:
        """Once open: the head's silhouette as (H, W) uint8 alpha, from the latest picture drawn (idle motion
        moves the head by a few pixels over seconds, so a frame or two of lag does not show)."""
        return self._matte


def load_weights(path: Path | None) -> CoefficientModel:
    """The coefficient model at ``path`` (default: the shipped weights), with an InputError saying what to do
    when there are none."""
    target = path or SHIPPED_WEIGHTS
    if not target.is_file():
        shipped = path is None
        raise InputError(f"face3d: coefficient-model weights {target} not found",
                         hint="this install has no trained weights: train them with `anchorcast train coeffs` "
                         "or give engine.weights = a checkpoint path" if shipped else
                         "give engine.weights = the path of a checkpoint written by `anchorcast train coeffs`")
    return CoefficientModel.load(target)


def _identity(value: Any) -> npt.NDArray[np.float32] | None:
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        raise InputError(f"face3d: identity = {value!r} must be a list of numbers (identity-mode coefficients)",
                         hint="for example identity = [0.5, -0.3, 0.2]; up to 50 numbers, about -2 to 2")
    if len(value) > 50:
        raise InputError(f"face3d: identity has {len(value)} coefficients; the face model has 50 identity modes")
    return np.asarray(value, np.float32)


def _texture(path: Path | None) -> npt.NDArray[np.uint8] | None:
    if path is None:
        return None
    import cv2

    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError(f"face3d: texture {path} is not an image OpenCV can read",
                         hint="a PNG or JPEG laid out on the face model's UVs")
    return np.ascontiguousarray(image[..., ::-1])


def create_engine(settings: Mapping[str, Any], on_air: bool = False) -> Face3DEngine:
    """The engine for a validated settings table (missing keys take their defaults); ``on_air``: a studio
    session (``idle_motion = "auto"`` is on there)."""
    weights = settings.get("weights")
    model = load_weights(Path(weights) if weights is not None else None)
    skin = parse_colour(settings.get("skin", "#e0ac8c"), "skin")
    background = parse_colour(settings.get("background", "#101820"), "background")
    idle_motion = {"on": True, "off": False}.get(settings.get("idle_motion", "auto"), on_air)
    face = FaceModel.load(SHIPPED_ASSET)
    texture = settings.get("texture")
    return Face3DEngine(model, face, identity=_identity(settings.get("identity")), skin=skin,
                        texture=_texture(Path(texture) if texture is not None else None), background=background,
                        idle_motion=idle_motion, mouth_scale=float(settings.get("mouth_scale", 1.0)),
                        samples=int(settings.get("antialias", 0)))
