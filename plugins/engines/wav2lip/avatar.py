"""Prepared avatars: a still or a clip, with a face box, a 96x96 crop and a paste mask per frame, stored once.

``anchorcast avatar prepare IMAGE_OR_VIDEO`` (or the first run of a profile that names the image or video) writes
an *avatar folder*; every later run reads it back with :meth:`Avatar.load` instead of decoding and detecting again.

An avatar folder holds:

- ``avatar.json``: format version, source path and sha256, fps, size, frame count, the face boxes (detected, and
  after padding and smoothing), pads, smoothing window and the detector used;
- the frames, as raw RGB (``frames.rgb``, read through a memory map: 0.5 ms per 1280x720 frame) when they fit in
  :data:`RAW_FRAMES_LIMIT_BYTES` (768 MiB: about 11 s of 720p at 25 fps), otherwise as JPEG files at quality 95
  (``frames/000000.jpg``: about 250 KiB and 5.8 ms to decode per 720p frame);
- ``crops.npy``: (N, 96, 96, 3) uint8 BGR, each frame's padded box resized to 96x96 ignoring the aspect ratio, as
  the reference feeds the generator;
- ``mask.png``: the 96x96 paste mask (see :func:`feather_mask`), which may be edited by hand;
- ``features/``: per-frame face-encoder features cached by the engine, one file per weights (see
  :meth:`Avatar.features_path`).

Face boxes follow the reference: a detected face ``(x, y, w, h)`` becomes ``(x - left, y - top, x + w + right,
y + h + bottom)`` clipped to the frame with pads ``(top, bottom, left, right) = (0, 10, 0, 0)``; then each box is
the mean of the boxes of frames ``i .. i + 4`` (the last full window near the end), as the reference's
``get_smoothened_boxes``, though rounded and not averaged in place. The detector is OpenCV's bundled Haar frontal
face cascade: the largest face in the first frame (among confident detections: those with at least a third of
the best detection's votes, which drops the odd false face on a badge or a fold of cloth), then in each frame the
face that overlaps the previous one best (searched first near the previous box, which is fast and ignores a larger
false detection elsewhere).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import numpy.typing as npt

from anchorcast.errors import InputError
from anchorcast.media import Image
from anchorcast.storage import anchorcast_home, file_sha256
from anchorcast_plugins.engines.faces import FaceBox, FaceDetector
from anchorcast_plugins.engines.images import read_image

AVATAR_FORMAT_VERSION = 1
INFO_FILE = "avatar.json"
CROPS_FILE = "crops.npy"
MASK_FILE = "mask.png"
RAW_FRAMES_FILE = "frames.rgb"
JPEG_FRAMES_DIR = "frames"
FEATURES_DIR = "features"
CROP_SIZE = 96
JPEG_QUALITY = 95
RAW_FRAMES_LIMIT_BYTES = 768 * 1024 * 1024
DEFAULT_PADS = (0, 10, 0, 0)
DEFAULT_SMOOTH_WINDOW = 5
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"})

Box = tuple[int, int, int, int]
"""A box as ``(x1, y1, x2, y2)``: pixels ``[y1:y2, x1:x2]``."""
Progress = Callable[[int, "int | None"], None]

_PREPARE_HINT = "run `anchorcast avatar prepare SOURCE --out {folder}` again"
_FACE_BOX_HINT = ("give a fixed face box used for every frame: "
                  "`anchorcast avatar prepare SOURCE --face-box x,y,w,h` (x, y, width, height in source pixels)")


# --- pure helpers -----------------------------------------------------------------------------------------------


def loop_index(index: int, count: int) -> int:
    """Frame ``index`` of an endless ping-pong loop over ``count`` frames: 0 1 .. n-1 n-2 .. 1 0 1 ..

    Playing the clip forwards then backwards loops it without a jump (each end frame is shown once per turn).
    """
    if count <= 1:
        return 0
    period = 2 * (count - 1)
    phase = index % period
    return phase if phase < count else period - phase


def _smoothstep(edge0: float, edge1: float, x: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def feather_mask(width: int = CROP_SIZE, height: int = CROP_SIZE) -> npt.NDArray[np.float32]:
    """The paste mask for a face box of ``width x height``: (height, width) float32 in [0, 1].

    It is 1 over the lower face (the part of the crop the generator redraws: below 62% of the box height, inside
    22% of its width from either side and 15% from the bottom) and falls with a smoothstep (zero slope at both
    ends) to exactly 0 on the box's border and above 40% of its height, so the prediction blends into the frame
    with no seam and the eyes stay the frame's own. The reference pastes the whole box hard.
    """
    u = np.linspace(0.0, 1.0, width) if width > 1 else np.zeros(1)
    v = np.linspace(0.0, 1.0, height) if height > 1 else np.zeros(1)
    across = _smoothstep(0.0, 0.22, u) * _smoothstep(0.0, 0.22, 1.0 - u)
    down = _smoothstep(0.4, 0.62, v) * _smoothstep(0.0, 0.15, 1.0 - v)
    return np.outer(down, across).astype(np.float32)


def pad_box(face: FaceBox, pads: tuple[int, int, int, int], width: int, height: int) -> Box:
    """The reference's padded box of a face ``(x, y, w, h)`` with pads ``(top, bottom, left, right)``, clipped."""
    x, y, w, h = face
    top, bottom, left, right = pads
    return (max(0, x - left), max(0, y - top), min(width, x + w + right), min(height, y + h + bottom))


def _smoothed(boxes: npt.NDArray[np.int64], index: int, window: int) -> Box:
    count = len(boxes)
    chunk = boxes[index : index + window] if index + window <= count else boxes[max(0, count - window) :]
    return tuple(int(v) for v in np.rint(chunk.mean(axis=0)))  # type: ignore[return-value]


def smooth_boxes(boxes: npt.ArrayLike, window: int = DEFAULT_SMOOTH_WINDOW) -> npt.NDArray[np.int64]:
    """Each box replaced by the mean of itself and the next ``window - 1`` (the last full window at the end)."""
    array = np.asarray(boxes, np.int64).reshape(-1, 4)
    if window <= 1:
        return array.copy()
    return np.array([_smoothed(array, i, window) for i in range(len(array))], np.int64).reshape(-1, 4)


def parse_face_box(text: str) -> FaceBox:
    """``"x,y,w,h"`` as four integers (pixels of the source), or InputError."""
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    try:
        x, y, w, h = (round(float(p)) for p in parts)
    except (ValueError, OverflowError):
        raise InputError(f"face box {text!r} is not four numbers x,y,w,h", hint=_FACE_BOX_HINT) from None
    if w <= 0 or h <= 0:
        raise InputError(f"face box {text!r} has a width or height of zero or less", hint=_FACE_BOX_HINT)
    return x, y, w, h


def _as_fraction(fps: float | Fraction) -> Fraction:
    if isinstance(fps, Fraction):
        return fps
    return Fraction(int(fps)) if float(fps).is_integer() else Fraction(float(fps)).limit_denominator(1001)


# --- face detection -------------------------------------------------------------------------------------------


# --- reading the source ------------------------------------------------------------------------------------------


@dataclass
class _Source:
    kind: str  # "image" | "video"
    fps: Fraction | None
    estimated_frames: int | None
    frames: Iterator[tuple[float, Image]]  # (seconds, RGB frame)


def _read_image(path: Path) -> Image:
    image = read_image(path, "the avatar image", hint="use a PNG or JPEG portrait, or a video")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _open_source(path: Path, fps: Fraction | None, max_seconds: float | None) -> _Source:
    if path.suffix.lower() in IMAGE_SUFFIXES:
        return _Source("image", fps, 1, iter([(0.0, _read_image(path))]))
    import av

    try:
        container = av.open(str(path))
    except (OSError, av.FFmpegError) as error:
        raise InputError(f"cannot open the avatar source {path}: {error}",
                         hint="use a PNG or JPEG portrait or a video file (mp4, mov, mkv, webm)") from error
    if not container.streams.video:
        container.close()
        raise InputError(f"the avatar source {path} has no video stream", hint="use a portrait image or a video")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    native = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not native or native <= 0:
        native = Fraction(25)
    rate = fps or Fraction(native)
    seconds = None
    if stream.duration and stream.time_base:
        seconds = float(stream.duration * stream.time_base)
    elif container.duration:
        seconds = container.duration / 1_000_000
    if max_seconds is not None:
        seconds = min(seconds, max_seconds) if seconds is not None else max_seconds
    estimate = round(seconds * rate) if seconds else (stream.frames or None)
    frames = _video_frames(container, stream, Fraction(native), fps, max_seconds, path)
    return _Source("video", rate, estimate, frames)


def _video_frames(container: Any, stream: Any, native: Fraction, fps: Fraction | None, max_seconds: float | None,
                  path: Path) -> Iterator[tuple[float, Image]]:
    """Decoded RGB frames with their times from the first frame; resampled to ``fps`` when it is given (each
    output time ``k / fps`` shows the latest source frame at or before it)."""
    import av

    limit = max_seconds if max_seconds is not None else float("inf")
    first_time: float | None = None
    held: tuple[float, Image] | None = None
    emitted = 0
    try:
        with container:
            for number, frame in enumerate(container.decode(stream)):
                if first_time is None:
                    first_time = frame.time if frame.time is not None else 0.0
                at = (frame.time - first_time) if frame.time is not None else number / float(native)
                image = frame.to_ndarray(format="rgb24")
                if fps is None:
                    if number / float(native) >= limit:
                        return
                    yield number / float(native), image
                    continue
                while held is not None and emitted / fps < min(at, limit) - 1e-9:
                    yield float(emitted / fps), held[1]
                    emitted += 1
                if emitted / fps >= limit:
                    return
                held = (at, image)
            if held is not None:  # the last frame lasts one source frame
                end = min(held[0] + 1 / float(native), limit)
                while emitted / fps < end - 1e-9:
                    yield float(emitted / fps), held[1]
                    emitted += 1
    except av.FFmpegError as error:
        raise InputError(f"cannot decode the avatar video {path}: {error}") from error


# --- writing the folder ------------------------------------------------------------------------------------------


class _FrameWriter:
    """Stores frames raw while they fit in ``limit_bytes``, then switches (converting what it has) to JPEG."""

    def __init__(self, folder: Path, limit_bytes: int) -> None:
        self.folder = folder
        self.limit_bytes = limit_bytes
        self.count = 0
        self.shape: tuple[int, ...] | None = None
        self.format = "raw"
        self._raw = (folder / RAW_FRAMES_FILE).open("wb")

    def add(self, image: Image) -> None:
        if self.shape is None:
            self.shape = image.shape
        elif image.shape != self.shape:
            raise InputError(f"the avatar video changes size at frame {self.count} "
                             f"({self.shape[1]}x{self.shape[0]} -> {image.shape[1]}x{image.shape[0]})")
        if self.format == "raw" and (self.count + 1) * image.nbytes > self.limit_bytes:
            self._switch_to_jpeg()
        if self.format == "raw":
            self._raw.write(np.ascontiguousarray(image).tobytes())
        else:
            self._write_jpeg(self.count, image)
        self.count += 1

    def _switch_to_jpeg(self) -> None:
        assert self.shape is not None
        self._raw.close()
        (self.folder / JPEG_FRAMES_DIR).mkdir()
        if self.count:
            raw = np.memmap(self.folder / RAW_FRAMES_FILE, np.uint8, "r", shape=(self.count, *self.shape))
            for index in range(self.count):
                self._write_jpeg(index, raw[index])
            del raw
        (self.folder / RAW_FRAMES_FILE).unlink()
        self.format = "jpeg"

    def _write_jpeg(self, index: int, image: Image) -> None:
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        if not ok:
            raise InputError(f"could not encode avatar frame {index} as JPEG")
        data.tofile(self.folder / JPEG_FRAMES_DIR / f"{index:06d}.jpg")

    def close(self) -> dict[str, Any]:
        if not self._raw.closed:
            self._raw.close()
        if self.format == "raw":
            return {"format": "raw", "file": RAW_FRAMES_FILE, "layout": "frame, row, column, RGB; uint8"}
        return {"format": "jpeg", "folder": JPEG_FRAMES_DIR, "pattern": "{:06d}.jpg", "quality": JPEG_QUALITY}


def _crop(image: Image, box: Box) -> npt.NDArray[np.uint8]:
    """The reference crop: the box resized to 96x96 (bilinear, aspect ignored), BGR."""
    x1, y1, x2, y2 = box
    face = cv2.resize(image[y1:y2, x1:x2], (CROP_SIZE, CROP_SIZE))
    return cv2.cvtColor(face, cv2.COLOR_RGB2BGR)


def _check_out_dir(out_dir: Path) -> None:
    occupied = out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir()))
    if occupied and not Avatar.is_prepared_folder(out_dir):
        raise InputError(f"{out_dir} exists and is not an avatar folder: refusing to write into it",
                         hint="choose another --out folder, or an empty one")


def prepare_avatar(source: Path, out_dir: Path, *, face_box: FaceBox | None = None,
                   pads: tuple[int, int, int, int] = DEFAULT_PADS, smooth_window: int = DEFAULT_SMOOTH_WINDOW,
                   max_seconds: float | None = None, fps: float | Fraction | None = None,
                   progress: Progress | None = None,
                   raw_limit_bytes: int = RAW_FRAMES_LIMIT_BYTES) -> Avatar:
    """Prepares the avatar folder ``out_dir`` for a still image or a video (replacing an avatar folder there).

    ``face_box`` ``(x, y, w, h)`` skips detection and is used for every frame (pads still apply). A video keeps
    its frame rate unless ``fps`` is given, and stops after ``max_seconds``. ``progress(done, total)`` is called
    after each frame (``total`` is an estimate, or None). A frame with no face raises InputError naming it.
    The folder is written beside ``out_dir`` and moved into place when complete.
    """
    source = Path(source).expanduser()
    out_dir = Path(out_dir).expanduser()
    if not source.is_file():
        raise InputError(f"avatar source {source} does not exist or is not a file")
    if smooth_window < 1:
        raise InputError(f"smooth_window must be at least 1, got {smooth_window}")
    if max_seconds is not None and max_seconds <= 0:
        raise InputError(f"max_seconds must be positive, got {max_seconds}")
    rate = _as_fraction(fps) if fps is not None else None
    if rate is not None and rate <= 0:
        raise InputError(f"fps must be positive, got {fps}")
    _check_out_dir(out_dir)
    sha = file_sha256(source)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir()
    try:
        info = _write_folder(source, sha, partial, face_box, tuple(pads), smooth_window, max_seconds, rate,
                             progress, raw_limit_bytes)
        (partial / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(partial, out_dir)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    return Avatar.load(out_dir)


def _write_folder(source: Path, sha: str, folder: Path, face_box: FaceBox | None, pads: tuple[int, ...],
                  smooth_window: int, max_seconds: float | None, fps: Fraction | None, progress: Progress | None,
                  raw_limit_bytes: int) -> dict[str, Any]:
    started = time.perf_counter()
    opened = _open_source(source, fps, max_seconds)
    detector = None if face_box is not None else FaceDetector(missing_hint=_FACE_BOX_HINT)
    writer = _FrameWriter(folder, raw_limit_bytes)
    detected: list[FaceBox] = []
    padded: list[Box] = []
    crops: list[npt.NDArray[np.uint8]] = []
    recent: deque[Image] = deque(maxlen=smooth_window)  # frames whose crop waits for later boxes
    width = height = 0
    try:
        for index, (seconds, image) in enumerate(opened.frames):
            height, width = image.shape[:2]
            face = face_box if detector is None else detector.detect(image, detected[-1] if detected else None)
            if face is None:
                where = "" if opened.kind == "image" else f"frame {index} ({seconds:.2f} s) of "
                raise InputError(f"no face found in {where}{source}", hint=_FACE_BOX_HINT)
            box = pad_box(face, pads, width, height)  # type: ignore[arg-type]
            if box[2] - box[0] < 1 or box[3] - box[1] < 1:
                raise InputError(f"the face box {face} lies outside the {width}x{height} frame of {source}",
                                 hint=_FACE_BOX_HINT)
            detected.append(face)
            padded.append(box)
            writer.add(image)
            recent.append(image)
            ready = len(padded) - smooth_window  # this frame's window of boxes is now complete
            if ready >= 0:
                crops.append(_crop(recent[0], _smoothed(np.array(padded[ready:]), 0, smooth_window)))
            if progress is not None:
                progress(index + 1, opened.estimated_frames)
    finally:
        frames_info = writer.close()
        if close := getattr(opened.frames, "close", None):
            close()  # a video generator: closes its container
    if not padded:
        raise InputError(f"the avatar video {source} has no frames" +
                         (f" in its first {max_seconds} s" if max_seconds else ""))
    boxes = smooth_boxes(padded, smooth_window)
    waiting = list(recent)[len(recent) - (len(padded) - len(crops)) :]  # the last frames: their windows end early
    for image in waiting:
        crops.append(_crop(image, tuple(boxes[len(crops)])))  # type: ignore[arg-type]
    np.save(folder / CROPS_FILE, np.stack(crops))
    cv2.imwrite(str(folder / MASK_FILE), np.rint(feather_mask() * 255).astype(np.uint8))
    return {
        "format_version": AVATAR_FORMAT_VERSION,
        "source": {"path": str(source.resolve()), "sha256": sha, "kind": opened.kind},
        "fps": str(opened.fps) if opened.fps is not None else None,
        "width": width,
        "height": height,
        "frame_count": len(padded),
        "frames": frames_info,
        "box_format": "x1, y1, x2, y2 (pixels [y1:y2, x1:x2])",
        "boxes": boxes.tolist(),
        "detected_boxes": [list(face) for face in detected],
        "pads": {"top": pads[0], "bottom": pads[1], "left": pads[2], "right": pads[3]},
        "smooth_window": smooth_window,
        "face_box": list(face_box) if face_box is not None else None,
        "max_seconds": max_seconds,
        "detector": FaceDetector.name if face_box is None else "fixed face box",
        "crops": {"file": CROPS_FILE, "size": CROP_SIZE, "channels": "BGR"},
        "mask": MASK_FILE,
        "prepare_seconds": round(time.perf_counter() - started, 3),
    }


# --- reading the folder ------------------------------------------------------------------------------------------


class _RawFrames:
    def __init__(self, path: Path, count: int, height: int, width: int) -> None:
        self.frames = np.memmap(path, np.uint8, "r", shape=(count, height, width, 3))

    def get(self, index: int) -> Image:
        return self.frames[index]


class _JpegFrames:
    def __init__(self, folder: Path, pattern: str) -> None:
        self.folder = folder
        self.pattern = pattern

    def get(self, index: int) -> Image:
        path = self.folder / self.pattern.format(index)
        image = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise InputError(f"avatar frame {path} cannot be decoded",
                             hint=_PREPARE_HINT.format(folder=self.folder.parent))
        rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
        rgb.flags.writeable = False
        return rgb


class Avatar:
    """A prepared avatar folder, read back. Frame indices loop (ping-pong) over the prepared frames."""

    def __init__(self, folder: Path, info: dict[str, Any], boxes: npt.NDArray[np.int64],
                 crops: npt.NDArray[np.uint8], mask: npt.NDArray[np.float32],
                 frames: _RawFrames | _JpegFrames) -> None:
        self.folder = folder
        self.info = info
        self.boxes = boxes
        """(N, 4) int64 ``x1, y1, x2, y2`` per prepared frame, padded and smoothed."""
        self.crops = crops
        """(N, 96, 96, 3) uint8 BGR, memory-mapped."""
        self.mask = mask
        """(96, 96) float32 paste mask in [0, 1] (``mask.png``)."""
        self._frames = frames

    # --- folder ---

    @staticmethod
    def is_prepared_folder(path: Path) -> bool:
        """Whether ``path`` is a folder with an ``avatar.json`` (:meth:`load` still validates the rest)."""
        path = Path(path)
        return path.is_dir() and (path / INFO_FILE).is_file()

    @classmethod
    def load(cls, folder: Path) -> Avatar:
        """Reads and validates an avatar folder; InputError naming the folder when it is incomplete or stale."""
        folder = Path(folder).expanduser()
        hint = _PREPARE_HINT.format(folder=folder)

        def broken(what: str) -> InputError:
            return InputError(f"{folder} is not a usable avatar folder: {what}", hint=hint)

        if not folder.is_dir():
            raise InputError(f"avatar folder {folder} does not exist", hint=hint)
        try:
            info = json.loads((folder / INFO_FILE).read_text())
        except FileNotFoundError:
            raise broken(f"{INFO_FILE} is missing") from None
        except (OSError, ValueError) as error:
            raise broken(f"{INFO_FILE} cannot be read ({error})") from None
        if not isinstance(info, dict):
            raise broken(f"{INFO_FILE} is not a JSON object")
        version = info.get("format_version")
        if version != AVATAR_FORMAT_VERSION:
            raise broken(f"it was written in avatar format {version!r}, this anchorcast reads format "
                         f"{AVATAR_FORMAT_VERSION}")
        try:
            count, width, height = int(info["frame_count"]), int(info["width"]), int(info["height"])
            boxes = np.asarray(info["boxes"], np.int64).reshape(-1, 4)
            frames_info = info["frames"]
            kind = frames_info["format"]
        except (KeyError, TypeError, ValueError) as error:
            raise broken(f"{INFO_FILE} lacks or mangles {error}") from None
        if count < 1 or len(boxes) != count:
            raise broken(f"{len(boxes)} face boxes for {count} frames")
        frames: _RawFrames | _JpegFrames
        if kind == "raw":
            path = folder / RAW_FRAMES_FILE
            if not path.is_file() or path.stat().st_size != count * height * width * 3:
                raise broken(f"{RAW_FRAMES_FILE} is missing or not {count} frames of {width}x{height}")
            frames = _RawFrames(path, count, height, width)
        elif kind == "jpeg":
            frames = _JpegFrames(folder / JPEG_FRAMES_DIR, str(frames_info.get("pattern", "{:06d}.jpg")))
            missing = [i for i in (0, count - 1) if not (frames.folder / frames.pattern.format(i)).is_file()]
            stored = len(list(frames.folder.glob("*.jpg"))) if frames.folder.is_dir() else 0
            if missing or stored != count:
                raise broken(f"{stored} JPEG frames in {JPEG_FRAMES_DIR}/ for {count} frames")
        else:
            raise broken(f"unknown frame format {kind!r}")
        try:
            crops = np.load(folder / CROPS_FILE, mmap_mode="r")
        except FileNotFoundError:
            raise broken(f"{CROPS_FILE} is missing") from None
        except (OSError, ValueError) as error:
            raise broken(f"{CROPS_FILE} cannot be read ({error})") from None
        if crops.shape != (count, CROP_SIZE, CROP_SIZE, 3) or crops.dtype != np.uint8:
            raise broken(f"{CROPS_FILE} holds {crops.shape} {crops.dtype}, not ({count}, 96, 96, 3) uint8")
        mask_image = cv2.imread(str(folder / MASK_FILE), cv2.IMREAD_GRAYSCALE)
        if mask_image is None:
            raise broken(f"{MASK_FILE} is missing or not an image")
        mask = mask_image.astype(np.float32) / 255.0
        mask.flags.writeable = False
        return cls(folder, info, boxes, crops, mask, frames)

    # --- what the engine reads ---

    @property
    def frame_count(self) -> int:
        return int(self.info["frame_count"])

    @property
    def width(self) -> int:
        return int(self.info["width"])

    @property
    def height(self) -> int:
        return int(self.info["height"])

    @property
    def fps(self) -> Fraction | None:
        """The clip's frame rate (None for a still prepared without one)."""
        return Fraction(self.info["fps"]) if self.info.get("fps") else None

    @property
    def is_still(self) -> bool:
        return self.frame_count == 1

    @property
    def source(self) -> Path:
        return Path(self.info["source"]["path"])

    @property
    def source_sha256(self) -> str:
        return str(self.info["source"]["sha256"])

    def source_changed(self) -> bool | None:
        """Whether the source file now differs from the one prepared (None when it is gone)."""
        if not self.source.is_file():
            return None
        return file_sha256(self.source) != self.source_sha256

    def index(self, i: int) -> int:
        """The prepared frame shown at output frame ``i`` (ping-pong loop)."""
        return loop_index(i, self.frame_count)

    def frame(self, i: int) -> Image:
        """Output frame ``i``'s avatar frame: (H, W, 3) RGB uint8, read-only (copy it before drawing)."""
        return self._frames.get(self.index(i))

    def box(self, i: int) -> Box:
        """Output frame ``i``'s padded, smoothed face box ``(x1, y1, x2, y2)``."""
        return tuple(int(v) for v in self.boxes[self.index(i)])  # type: ignore[return-value]

    def crop(self, i: int) -> npt.NDArray[np.uint8]:
        """Output frame ``i``'s (96, 96, 3) BGR face crop."""
        return self.crops[self.index(i)]

    def mask_for(self, width: int, height: int) -> npt.NDArray[np.float32]:
        """The paste mask resized to a ``width x height`` box: (height, width) float32."""
        return _resized_mask(self.mask.tobytes(), self.mask.shape, width, height)

    def features_path(self, weights_id: str) -> Path:
        """Where the engine caches this avatar's per-frame face-encoder features for the weights ``weights_id``
        (for example the weights' sha256). The ``features`` folder may not exist yet."""
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", weights_id).strip("._") or "weights"
        return self.folder / FEATURES_DIR / f"{safe[:96]}.npy"

    def __repr__(self) -> str:
        return f"Avatar({str(self.folder)!r}, {self.frame_count} frames, {self.width}x{self.height})"


@lru_cache(maxsize=16)
def _resized_mask(data: bytes, shape: tuple[int, int], width: int, height: int) -> npt.NDArray[np.float32]:
    mask = np.frombuffer(data, np.float32).reshape(shape)
    resized = cv2.resize(mask, (max(1, width), max(1, height)), interpolation=cv2.INTER_LINEAR)
    resized.flags.writeable = False
    return resized


# --- the cache: profiles may name an image or a video -----------------------------------------------------------


def avatar_cache_folder(source: Path, cache_root: Path | None = None, *, sha256: str | None = None,
                        **options: Any) -> Path:
    """The folder :func:`open_avatar` prepares ``source`` into: ``<root>/<stem>-<sha256[:16]>[-<options>]`` under
    ``cache_root`` or ``$ANCHORCAST_HOME/avatars``; non-default preparation options get their own folder."""
    root = Path(cache_root).expanduser() if cache_root is not None else anchorcast_home() / "avatars"
    sha = sha256 or file_sha256(source)
    chosen = {k: v for k, v in sorted(options.items()) if v is not None}
    name = f"{re.sub(r'[^A-Za-z0-9._-]+', '_', source.stem)[:40]}-{sha[:16]}"
    if chosen:
        name += "-" + hashlib.sha256(json.dumps(chosen, default=str).encode()).hexdigest()[:8]
    return root / name


def open_avatar(path: Path, cache_root: Path | None = None, *, face_box: FaceBox | None = None,
                fps: float | Fraction | None = None, max_seconds: float | None = None,
                progress: Progress | None = None) -> Avatar:
    """An avatar from a prepared folder, or from an image or video, prepared on first use into
    :func:`avatar_cache_folder` and reused while the source's sha256 and the options stay the same."""
    path = Path(path).expanduser()
    if Avatar.is_prepared_folder(path):
        return Avatar.load(path)
    if path.is_dir():
        raise InputError(f"avatar {path} is a folder without {INFO_FILE}: not an avatar folder",
                         hint="name a portrait image, a video, or a folder written by `anchorcast avatar prepare`")
    if not path.is_file():
        raise InputError(f"avatar {path} does not exist",
                         hint="name a portrait image, a video or an avatar folder")
    sha = file_sha256(path)
    options = {"face_box": list(face_box) if face_box else None, "max_seconds": max_seconds,
               "fps": str(_as_fraction(fps)) if fps is not None and path.suffix.lower() not in IMAGE_SUFFIXES
               else None}
    folder = avatar_cache_folder(path, cache_root, sha256=sha, **options)
    if Avatar.is_prepared_folder(folder):
        try:
            avatar = Avatar.load(folder)
        except InputError:
            avatar = None  # incomplete or from another version: prepare it again
        if avatar is not None and avatar.source_sha256 == sha:
            return avatar
    return prepare_avatar(path, folder, face_box=face_box, fps=fps if options["fps"] else None,
                          max_seconds=max_seconds, progress=progress)


# --- the CLI: `anchorcast avatar prepare` ------------------------------------------------------------------------


def run_avatar(host: Any, args: argparse.Namespace) -> int:
    """Runs ``anchorcast avatar prepare``: a progress bar for videos, then a summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    del host
    console = Console(stderr=True)
    source = Path(args.source).expanduser()
    if not source.is_file():
        raise InputError(f"avatar source {source} does not exist or is not a file")
    face_box = parse_face_box(args.face_box) if args.face_box else None
    for name in ("fps", "max_seconds"):
        value = getattr(args, name)
        if value is not None and value <= 0:
            raise InputError(f"--{name.replace('_', '-')} must be positive, got {value}")
    is_image = source.suffix.lower() in IMAGE_SUFFIXES
    out = args.out
    if out is None:
        out = avatar_cache_folder(source, None, face_box=list(face_box) if face_box else None,
                                  max_seconds=args.max_seconds,
                                  fps=str(_as_fraction(args.fps)) if args.fps and not is_image else None)
    started = time.perf_counter()
    with Progress(TextColumn("[bold]preparing"), BarColumn(), MofNCompleteColumn(), TextColumn("frames"),
                  TimeElapsedColumn(), console=console, transient=True, disable=is_image) as bar:
        task = bar.add_task("prepare", total=None)

        def on_progress(done: int, total: int | None) -> None:
            bar.update(task, completed=done, total=max(total, done) if total else None)

        avatar = prepare_avatar(source, out, face_box=face_box, fps=args.fps, max_seconds=args.max_seconds,
                                progress=on_progress)
    elapsed = time.perf_counter() - started
    console.print(_summary(avatar, elapsed), highlight=False)
    return 0


def _summary(avatar: Avatar, elapsed: float) -> str:
    boxes = avatar.boxes
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    if avatar.fps and not avatar.is_still:
        frames = f"{avatar.frame_count} frames at {float(avatar.fps):.4g} fps"
    else:
        frames = "1 frame (a still)" if avatar.is_still else f"{avatar.frame_count} frames"
    return "\n".join([
        f"[bold]avatar[/] {avatar.folder}",
        f"  source    {avatar.source} ({avatar.info['source']['kind']})",
        f"  frames    {frames}, {avatar.width}x{avatar.height}, stored {avatar.info['frames']['format']}",
        f"  face box  x {boxes[:, 0].min()}..{boxes[:, 2].max()}, y {boxes[:, 1].min()}..{boxes[:, 3].max()}, "
        f"{widths.min()}-{widths.max()} x {heights.min()}-{heights.max()} px",
        f"  detector  {avatar.info['detector']}",
        f"  took      {elapsed:.1f} s ({1000 * elapsed / avatar.frame_count:.0f} ms per frame)",
    ])
