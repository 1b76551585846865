"""``anchorcast train prepare``: talking-face videos -> a data set folder (see :mod:`.dataset`).

Each video is decoded with PyAV; its frames are resampled to 25 fps (each output time shows the latest source frame
at or before it) and its sound to 16 kHz mono (soxr), aligned on the streams' start times. The face is found in
every frame with the engines' detector (tracked from frame to frame), padded and smoothed over five frames as the
avatar module does, and cropped to 96x96 BGR. Stretches where the face is lost or narrower than ``min_face`` pixels
end a clip; stretches are split into clips of at most ``max_seconds``; anything shorter than ``min_seconds`` is
dropped. A video that cannot be read, has no video or no audio stream, is too short or too small is dropped whole.
Every drop is reported with its reason.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from anchorcast.errors import InputError
from anchorcast.media import Image
from anchorcast_plugins.engines.wav2lip.training.dataset import (
    CLIPS_DIR,
    FACES_FILE,
    FPS,
    MEL_FILE,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    Dataset,
    DatasetWriter,
    clip_id,
)

DEFAULT_MAX_OFFSET = 2
"""With an expert, clips whose best audio offset is further than this many frames from zero are off-sync."""

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".flv", ".ts", ".mpg", ".mpeg"})
REGION_MARGIN = 0.25
"""Each frame keeps its padded face box grown by this fraction on every side, so the smoothed box (a mean over
five frames) can be cut from it without holding whole frames."""

Progress = Callable[[str, int], None]
"""``progress(source, frames_done)``."""


@dataclass
class PrepareReport:
    """What ``prepare_dataset`` wrote and what it dropped: ``dropped`` lists ``(source, reason)``."""

    dataset: Dataset
    kept: list[tuple[str, int]] = field(default_factory=list)
    """``(source, clips)`` for every video that gave at least one clip."""
    dropped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


class _Dropped(Exception):
    """A whole video is unusable, for the reason given."""


@dataclass
class _Frame:
    region: npt.NDArray[np.uint8]  # RGB, the padded box grown by REGION_MARGIN
    origin: tuple[int, int]  # the region's top-left corner in the frame
    box: tuple[int, int, int, int]  # padded face box (x1, y1, x2, y2) in the frame
    face: tuple[int, int, int, int]  # the detected face (x, y, w, h), to track into the next frame


def find_videos(paths: list[Path]) -> list[Path]:
    """The paths given, with each folder replaced by the videos under it (sorted)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path).expanduser()
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
        else:
            found.append(path)
    return found


def prepare_dataset(videos: list[Path], out: Path | str, *, speaker: str | None = None, min_seconds: float = 1.0,
                    max_seconds: float = 10.0, min_resolution: int = 160, min_face: int = 48,
                    pads: tuple[int, int, int, int] | None = None, smooth_window: int | None = None,
                    progress: Progress | None = None, expert: str | None = None,
                    max_offset: int = DEFAULT_MAX_OFFSET) -> PrepareReport:
    """Writes the data set ``out`` from ``videos`` (files or folders) and reports what was kept and dropped.

    With ``expert`` (a syncnet weights name or file) every clip is checked by
    :func:`~anchorcast_plugins.engines.wav2lip.training.offsets.sync_offset` and dropped when the expert's best audio offset is
    more than ``max_offset`` frames from zero.

    Speakers are ``speaker`` when given, else each video's parent folder name. Raises InputError when no video
    gives a single clip (naming why each was dropped) or an option is out of range.
    """
    from anchorcast_plugins.engines.faces import FaceDetector
    from anchorcast_plugins.engines.wav2lip.avatar import DEFAULT_PADS, DEFAULT_SMOOTH_WINDOW

    if min_seconds <= 0 or max_seconds < min_seconds:
        raise InputError(f"need 0 < --min-seconds <= --max-seconds, got {min_seconds} and {max_seconds}")
    if min_resolution < 1 or min_face < 1:
        raise InputError("--min-resolution and --min-face must be positive")
    if max_offset < 0:
        raise InputError(f"--max-offset must be 0 or more, got {max_offset}")
    scorer = _load_scorer(expert) if expert else None
    pads = tuple(pads) if pads is not None else DEFAULT_PADS  # type: ignore[assignment]
    smooth_window = smooth_window or DEFAULT_SMOOTH_WINDOW
    started = time.perf_counter()
    detector = FaceDetector(missing_hint="install opencv-python-headless")
    sources = find_videos(list(videos))
    if not sources:
        raise InputError("no videos given (the folders given hold no video files)",
                         hint=f"video files end in {', '.join(sorted(VIDEO_SUFFIXES))}")
    kept: list[tuple[str, int]] = []
    dropped: list[tuple[str, str]] = []
    with DatasetWriter(out, extra={"prepared": {"min_seconds": min_seconds, "max_seconds": max_seconds,
                                                "min_resolution": min_resolution, "min_face": min_face,
                                                "pads": list(pads), "smooth_window": smooth_window,
                                                "detector": detector.name}}) as writer:
        for source in sources:
            name = str(source)
            who = clip_id(speaker if speaker else (source.parent.name or "speaker"))
            try:
                count = _prepare_video(source, who, writer, detector, min_seconds, max_seconds, min_resolution,
                                       min_face, pads, smooth_window, dropped, progress)
            except _Dropped as reason:
                dropped.append((name, str(reason)))
                continue
            kept.append((name, count))
        if scorer is not None:
            _drop_off_sync(writer, scorer, max_offset, dropped)
            left = [e["source"].split("#frames=")[0] for e in writer.entries]
            kept = [(name, left.count(name)) for name, _ in kept if name in left]
        if not writer.entries:
            raise InputError("no usable clip in the videos given: "
                             + "; ".join(f"{Path(s).name}: {r}" for s, r in dropped),
                             hint="use videos with sound, a clearly visible front-facing face and at least "
                             f"{min_seconds:g} s")
        dataset = writer.finish()
    return PrepareReport(dataset, kept, dropped, time.perf_counter() - started)


def _load_scorer(expert: str) -> Any:
    from anchorcast_plugins.engines.wav2lip.training.generator import load_expert

    return load_expert(expert, "cpu")


def _drop_off_sync(writer: DatasetWriter, expert: Any, max_offset: int, dropped: list[tuple[str, str]]) -> None:
    from anchorcast_plugins.engines.wav2lip.training.offsets import sync_offset

    for entry in list(writer.entries):
        folder = writer.partial / CLIPS_DIR / entry["id"]
        faces = np.load(folder / FACES_FILE, mmap_mode="r")
        mel = np.load(folder / MEL_FILE)
        best, at_best, at_zero = sync_offset(expert, faces, mel)
        entry["sync"] = {"best_offset": best, "similarity": round(at_best, 4), "similarity_at_0": round(at_zero, 4)}
        if abs(best) > max_offset:
            writer.remove(entry["id"])
            dropped.append((entry["source"], f"clip {entry['id']}: off-sync, the expert's best audio offset is "
                                             f"{best:+d} frames (similarity {at_best:.2f}, {at_zero:.2f} at 0; "
                                             f"--max-offset {max_offset})"))


def _prepare_video(source: Path, speaker: str, writer: DatasetWriter, detector: Any, min_seconds: float,
                   max_seconds: float, min_resolution: int, min_face: int, pads: tuple[int, int, int, int],
                   smooth_window: int, dropped: list[tuple[str, str]], progress: Progress | None) -> int:
    if not source.is_file():
        raise _Dropped("does not exist or is not a file")
    audio, width, height = _read_audio(source)
    if min(width, height) < min_resolution:
        raise _Dropped(f"too low resolution: {width}x{height} (the shorter side is under --min-resolution "
                       f"{min_resolution})")
    min_frames = max(1, round(min_seconds * FPS))
    max_frames = max(min_frames, int(max_seconds * FPS))
    usable_frames = len(audio) // SAMPLES_PER_FRAME
    if usable_frames < min_frames:
        raise _Dropped(f"too short: {len(audio) / SAMPLE_RATE:.2f} s of sound (under --min-seconds "
                       f"{min_seconds:g})")
    from anchorcast_plugins.engines.wav2lip.avatar import pad_box, smooth_boxes
    from anchorcast_plugins.engines.wav2lip.training.synth import crop_faces

    clips = 0
    lost = small = total = 0
    run: list[_Frame] = []
    run_start = 0
    stem = source.stem

    def write(frames: list[_Frame], first: int) -> None:
        nonlocal clips
        boxes = smooth_boxes([f.box for f in frames], smooth_window)
        regions, local = [], []
        for frame, (x1, y1, x2, y2) in zip(frames, boxes, strict=True):
            ox, oy = frame.origin
            rh, rw = frame.region.shape[:2]
            bx1, by1 = min(max(0, x1 - ox), rw - 1), min(max(0, y1 - oy), rh - 1)
            bx2, by2 = max(bx1 + 1, min(rw, x2 - ox)), max(by1 + 1, min(rh, y2 - oy))
            regions.append(frame.region)
            local.append((bx1, by1, bx2, by2))
        samples = audio[first * SAMPLES_PER_FRAME : (first + len(frames)) * SAMPLES_PER_FRAME]
        cid = clip_id(f"{speaker}-{stem}-{first:06d}")
        while any(e["id"] == cid for e in writer.entries):
            cid += "x"
        writer.add(cid, speaker, crop_faces(regions, local), samples,
                   source=f"{source}#frames={first}-{first + len(frames)}")
        clips += 1

    def flush(why: str) -> None:
        """Writes the stretch in ``run`` as clips of at most ``max_frames`` of (nearly) equal length."""
        nonlocal run
        pieces = -(-len(run) // max_frames)
        edges = [round(k * len(run) / pieces) for k in range(pieces + 1)] if run else [0]
        for lo, hi in itertools.pairwise(edges):
            if hi - lo >= min_frames:
                write(run[lo:hi], run_start + lo)
            else:
                dropped.append((str(source), f"frames {run_start + lo}-{run_start + hi} ({(hi - lo) / FPS:.2f} s, "
                                f"{why}): under --min-seconds {min_seconds:g}"))
        run = []

    try:
        for index, image in enumerate(_frames_25fps(source)):
            if index >= usable_frames:
                break
            total += 1
            if progress is not None:
                progress(str(source), index + 1)
            face = detector.detect(image, previous=_last_face(run))
            if face is None or face[2] < min_face:
                if face is None:
                    lost += 1
                else:
                    small += 1
                flush("then the face was lost" if face is None else "then the face was too small")
                run_start = index + 1
                continue
            height_px, width_px = image.shape[:2]
            run.append(_region(image, pad_box(face, pads, width_px, height_px), face))
            if len(run) == 2 * max_frames:  # bounded memory: the first clip's length is settled
                write(run[:max_frames], run_start)
                run = run[max_frames:]
                run_start += max_frames
    except _Dropped as error:  # a broken file: keep what was read before the damage
        if not clips and len(run) < min_frames:
            raise
        flush("then the video could not be decoded")
        dropped.append((str(source), f"the rest after frame {total}: {error}"))
        return clips
    if total < min_frames:
        raise _Dropped(f"too short: {total / FPS:.2f} s of video (under --min-seconds {min_seconds:g})")
    flush("at the end of the video")
    if clips == 0:
        raise _Dropped(f"no stretch of {min_seconds:g} s with a usable face: face lost in {lost} and too small "
                       f"(under --min-face {min_face} px) in {small} of {total} frames")
    return clips


def _last_face(run: list[_Frame]) -> tuple[int, int, int, int] | None:
    return run[-1].face if run else None


def _region(image: Image, box: tuple[int, int, int, int], face: tuple[int, int, int, int]) -> _Frame:
    x1, y1, x2, y2 = box
    mx, my = round(REGION_MARGIN * (x2 - x1)), round(REGION_MARGIN * (y2 - y1))
    rx1, ry1 = max(0, x1 - mx), max(0, y1 - my)
    rx2, ry2 = min(image.shape[1], x2 + mx), min(image.shape[0], y2 + my)
    return _Frame(np.ascontiguousarray(image[ry1:ry2, rx1:rx2]), (rx1, ry1), box, face)


def _open(source: Path) -> Any:
    import av

    try:
        return av.open(str(source))
    except (OSError, av.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise _Dropped(f"unreadable: not a video PyAV can open ({error})") from None


def _read_audio(source: Path) -> tuple[npt.NDArray[np.float32], int, int]:
    """The sound as 16 kHz mono float32, aligned so sample 0 is the first video frame; and the frame size."""
    import av
    import soxr

    container = _open(source)
    with container:
        if not container.streams.video:
            raise _Dropped("no video stream")
        if not container.streams.audio:
            raise _Dropped("no audio stream")
        video = container.streams.video[0]
        width, height = video.codec_context.width, video.codec_context.height
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        if not rate:
            raise _Dropped("the audio stream has no sample rate")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[npt.NDArray[np.float32]] = []
        first_time: float | None = None
        try:
            for frame in container.decode(stream):
                if first_time is None and frame.time is not None:
                    first_time = float(frame.time)
                for converted in resampler.resample(frame):
                    chunks.append(converted.to_ndarray().reshape(-1))
            for converted in resampler.resample(None):
                chunks.append(converted.to_ndarray().reshape(-1))
        except av.FFmpegError as error:
            raise _Dropped(f"unreadable audio: {error}") from None
        video_start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
    if not chunks:
        raise _Dropped("the audio stream holds no sound")
    native = np.concatenate(chunks).astype(np.float32)
    audio = soxr.resample(native, rate, SAMPLE_RATE).astype(np.float32) if rate != SAMPLE_RATE else native
    offset = round(((first_time or 0.0) - video_start) * SAMPLE_RATE)
    if offset > 0:
        audio = np.concatenate([np.zeros(offset, np.float32), audio])
    elif offset < 0:
        audio = audio[-offset:]
    return np.ascontiguousarray(audio), int(width), int(height)


def _frames_25fps(source: Path) -> Iterator[Image]:
    """The RGB frames at 25 fps: output frame ``k`` shows the latest source frame at or before ``k / 25`` s."""
    import av

    container = _open(source)
    fps = Fraction(FPS)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        native = stream.average_rate or stream.guessed_rate or Fraction(FPS)
        first: float | None = None
        held: tuple[float, Image] | None = None
        emitted = 0
        try:
            for number, frame in enumerate(container.decode(stream)):
                if first is None:
                    first = frame.time if frame.time is not None else 0.0
                at = frame.time - first if frame.time is not None else number / float(native)
                image = frame.to_ndarray(format="rgb24")
                while held is not None and emitted / fps < at - 1e-9:
                    yield held[1]
                    emitted += 1
                held = (at, image)
            if held is not None:  # the last frame lasts one source frame
                while emitted / fps < held[0] + 1 / float(native) - 1e-9:
                    yield held[1]
                    emitted += 1
        except av.FFmpegError as error:
            raise _Dropped(f"unreadable video: {error}") from None


def run_prepare(host: Any, args: argparse.Namespace) -> int:
    """Runs ``anchorcast train prepare``: a progress line per video, then what was kept and dropped."""
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    del host
    console = Console(stderr=True)
    with Progress(SpinnerColumn(), TextColumn("[bold]preparing[/] {task.description}"),
                  TextColumn("{task.completed} frames"), TimeElapsedColumn(), console=console,
                  transient=True) as bar:
        task = bar.add_task("", total=None)

        def on_progress(source: str, done: int) -> None:
            bar.update(task, description=Path(source).name, completed=done)

        report = prepare_dataset(args.videos, args.out, speaker=args.speaker, min_seconds=args.min_seconds,
                                 max_seconds=args.max_seconds, min_resolution=args.min_resolution,
                                 min_face=args.min_face, progress=on_progress, expert=args.expert,
                                 max_offset=args.max_offset)
    dataset = report.dataset
    lines = [f"[bold]data set[/] {escape(str(dataset.folder))}",
             f"  clips     {len(dataset)} ({dataset.frames / FPS:.1f} s) from {len(report.kept)} videos, "
             f"speakers {', '.join(dataset.speakers)}",
             f"  took      {report.seconds:.1f} s"]
    if report.dropped:
        lines.append(f"  dropped   {len(report.dropped)}:")
        lines += [f"    {escape(source)}: {escape(reason)}" for source, reason in report.dropped]
    console.print("\n".join(lines), highlight=False, markup=True)
    return 0
