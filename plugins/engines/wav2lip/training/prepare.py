"""``anchorcast train prepare``: talking-face videos -> a data set folder (see :mod:`.dataset`), cleaned.

Each video is decoded with PyAV (:mod:`.prepare_decode`); its frames are resampled to 25 fps (each output time
shows the latest source frame at or before it) and its sound to 16 kHz mono (soxr), aligned on the streams' start
times. Then, each step on by default and every decision reported per video and clip with its reason:

1. a video whose stream has too few bits per pixel is dropped whole (:mod:`.prepare_quality`);
2. the sound is denoised with RNNoise, the original kept beside it (``audio_original.npy``) and the mel made from
   the denoised sound; RNNoise's voice activity marks silences longer than ``--min-silence``, which are trimmed
   (:mod:`.prepare_speech`);
3. the face is found in every frame with the engines' detector (tracked from frame to frame); frames where it is
   lost, narrower than ``--min-face``, too dark, overexposed or blurred (:mod:`.prepare_quality`) are trimmed,
   and a jump of the face box (a cut, or another person) ends a stretch;
4. what is left is padded and smoothed over five frames as the avatar module does, cropped to 96x96 BGR and cut
   into clips of at most ``max_seconds``; anything shorter than ``min_seconds`` is dropped; with ``--expert``,
   off-sync clips too;
5. without ``--speaker`` the clips' faces are embedded and clustered into people (:mod:`.prepare_people`), one
   speaker each.

A video that cannot be read, has no video or no audio stream, is too short or too small is dropped whole.
"""

from __future__ import annotations

import argparse
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from anchorcast.errors import InputError
from anchorcast.media import Image
from anchorcast_plugins.engines.wav2lip.training.dataset import (
    FPS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    DatasetWriter,
    clip_id,
)
from anchorcast_plugins.engines.wav2lip.training.prepare_decode import Dropped, frames_25fps, read_sound
from anchorcast_plugins.engines.wav2lip.training.prepare_frames import (
    FaceFrame,
    box_iou,
    clip_embedding,
    crop_boxes,
    face_region,
)
from anchorcast_plugins.engines.wav2lip.training.prepare_people import FaceEmbedder, name_people, people_map
from anchorcast_plugins.engines.wav2lip.training.prepare_quality import QualityGate
from anchorcast_plugins.engines.wav2lip.training.prepare_report import (
    JUMP,
    NO_FACE,
    SILENCE,
    SMALL_FACE,
    ClipNote,
    PrepareReport,
    Stretch,
    VideoReport,
    print_report,
)
from anchorcast_plugins.engines.wav2lip.training.prepare_speech import (
    DEFAULT_MAX_SPEECH_LOSS_DB,
    DEFAULT_MIN_SILENCE,
    DEFAULT_SILENCE_PAD,
    DEFAULT_SPEECH_THRESHOLD,
    check_speech_options,
    silence_mask,
    speech_track,
)
from anchorcast_plugins.engines.wav2lip.training.prepare_sync import drop_off_sync, load_scorer, note_off_sync

__all__ = ["Cleaning", "PrepareReport", "find_videos", "prepare_dataset", "run_prepare"]
_drop_off_sync = drop_off_sync  # the name tests and older callers use

DEFAULT_MAX_OFFSET = 2
"""With an expert, clips whose best audio offset is further than this many frames from zero are off-sync."""

VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v", ".flv", ".ts", ".mpg", ".mpeg"})
JUMP_IOU = 0.3
"""A face box overlapping the previous frame's by less than this (intersection over union) starts a new stretch:
a tracked face moves a few pixels a frame, a cut or another person moves it wholesale."""

Progress = Callable[[str, int], None]
"""``progress(source, frames_done)``."""


@dataclass(frozen=True)
class Cleaning:
    """The cleaning steps (see the module docstring): ``quality`` None skips the gate."""

    denoise: bool = True
    trim_silence: bool = True
    speech_threshold: float = DEFAULT_SPEECH_THRESHOLD
    min_silence: float = DEFAULT_MIN_SILENCE
    silence_pad: float = DEFAULT_SILENCE_PAD
    max_speech_loss: float = DEFAULT_MAX_SPEECH_LOSS_DB
    quality: QualityGate | None = field(default_factory=QualityGate)
    cluster_people: bool = True


@dataclass
class _Limits:
    min_seconds: float
    max_seconds: float
    min_resolution: int
    min_face: int
    pads: tuple[int, int, int, int]
    smooth_window: int

    @property
    def min_frames(self) -> int:
        return max(1, round(self.min_seconds * FPS))

    @property
    def max_frames(self) -> int:
        return max(self.min_frames, int(self.max_seconds * FPS))


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
                    max_offset: int = DEFAULT_MAX_OFFSET, cleaning: Cleaning | None = None) -> PrepareReport:
    """Writes the data set ``out`` from ``videos`` (files or folders) and reports what was kept and dropped.

    With ``expert`` (a syncnet weights name or file) every clip is checked by
    :func:`~anchorcast_plugins.engines.wav2lip.training.offsets.sync_offset` and dropped when the expert's best
    audio offset is more than ``max_offset`` frames from zero.

    Speakers are ``speaker`` when given; else the people found by clustering the clips' faces (named after their
    videos' folders), or each video's parent folder name when ``cleaning.cluster_people`` is off. Raises
    InputError when no video gives a single clip (naming why each was dropped) or an option is out of range.
    """
    from anchorcast_plugins.engines.faces import FaceDetector
    from anchorcast_plugins.engines.wav2lip.avatar import DEFAULT_PADS, DEFAULT_SMOOTH_WINDOW

    cleaning = cleaning or Cleaning()
    if not (min_seconds > 0 and max_seconds >= min_seconds):
        raise InputError(f"need 0 < --min-seconds <= --max-seconds, got {min_seconds} and {max_seconds}")
    if min_resolution < 1 or min_face < 1:
        raise InputError("--min-resolution and --min-face must be positive")
    if max_offset < 0:
        raise InputError(f"--max-offset must be 0 or more, got {max_offset}")
    check_speech_options(cleaning.speech_threshold, cleaning.min_silence, cleaning.silence_pad,
                         cleaning.max_speech_loss)
    limits = _Limits(min_seconds, max_seconds, min_resolution, min_face,
                     tuple(pads) if pads is not None else DEFAULT_PADS,  # type: ignore[arg-type]
                     smooth_window or DEFAULT_SMOOTH_WINDOW)
    scorer = load_scorer(expert) if expert else None
    started = time.perf_counter()
    detector = FaceDetector(missing_hint="install opencv-python-headless")
    embedder = None
    if speaker is None and cleaning.cluster_people:

        embedder = FaceEmbedder()
    sources = find_videos(list(videos))
    if not sources:
        raise InputError("no videos given (the folders given hold no video files)",
                         hint=f"video files end in {', '.join(sorted(VIDEO_SUFFIXES))}")
    report = PrepareReport(dataset=None)  # type: ignore[arg-type]  # set once written
    embeddings: dict[str, npt.NDArray[np.float64]] = {}
    gate = cleaning.quality
    prepared = {"min_seconds": min_seconds, "max_seconds": max_seconds, "min_resolution": min_resolution,
                "min_face": min_face, "pads": list(limits.pads), "smooth_window": limits.smooth_window,
                "detector": detector.name, "denoise": cleaning.denoise, "trim_silence": cleaning.trim_silence,
                "speech_threshold": cleaning.speech_threshold, "min_silence": cleaning.min_silence,
                "silence_pad": cleaning.silence_pad, "max_speech_loss": cleaning.max_speech_loss,
                "quality": None if gate is None else vars(gate),
                "people": "speaker" if speaker else "faces" if embedder else "folders"}
    with DatasetWriter(out, extra={"prepared": prepared}) as writer:
        for source in sources:
            video = VideoReport(str(source))
            report.videos.append(video)
            who = clip_id(speaker if speaker else (source.parent.name or "speaker"))
            try:
                _prepare_video(source, who, writer, detector, limits, cleaning, video, report.dropped, progress,
                               embedder, embeddings)
            except Dropped as reason:
                video.dropped = str(reason)
                report.dropped.append((str(source), str(reason)))
        if scorer is not None:
            count = len(report.dropped)
            drop_off_sync(writer, scorer, max_offset, report.dropped)
            note_off_sync(report.videos, report.dropped[count:])
        if embedder is not None:
            report.people_distance = name_people(writer, report.videos, embeddings)
        writer.extra["people"] = people_map(writer.entries)
        report.kept = [(v.source, len(v.clips)) for v in report.videos if v.clips]
        if not writer.entries:
            raise InputError("no usable clip in the videos given: "
                             + "; ".join(f"{Path(s).name}: {r}" for s, r in report.dropped),
                             hint="use videos with sound, a clearly visible front-facing face and at least "
                             f"{min_seconds:g} s")
        report.dataset = writer.finish()
    report.seconds = time.perf_counter() - started
    return report


def _prepare_video(source: Path, speaker: str, writer: DatasetWriter, detector: Any, limits: _Limits,
                   cleaning: Cleaning, video: VideoReport, dropped: list[tuple[str, str]],
                   progress: Progress | None, embedder: Any, embeddings: dict[str, npt.NDArray[np.float64]]) -> None:
    if not source.is_file():
        raise Dropped("does not exist or is not a file")
    sound = read_sound(source)
    video.bits_per_pixel = sound.bits_per_pixel
    if min(sound.width, sound.height) < limits.min_resolution:
        raise Dropped(f"too low resolution: {sound.width}x{sound.height} (the shorter side is under "
                      f"--min-resolution {limits.min_resolution})")
    min_frames, max_frames = limits.min_frames, limits.max_frames
    usable_frames = len(sound.audio) // SAMPLES_PER_FRAME
    if usable_frames < min_frames:
        raise Dropped(f"too short: {len(sound.audio) / SAMPLE_RATE:.2f} s of sound (under --min-seconds "
                      f"{limits.min_seconds:g})")
    if cleaning.quality is not None and (fault := cleaning.quality.bitrate_fault(sound.bits_per_pixel)):
        raise Dropped(fault)
    track = speech_track(sound.audio, denoise=cleaning.denoise, voice_activity=cleaning.trim_silence,
                         max_speech_loss=cleaning.max_speech_loss)
    video.snr_before, video.snr_after = track.snr_before, track.snr_after
    video.speech_change_db, video.denoise_note = track.speech_change_db, track.skipped
    silent = None
    if cleaning.trim_silence and track.frame_speech is not None:
        silent = silence_mask(track.frame_speech, cleaning.speech_threshold, cleaning.min_silence,
                              cleaning.silence_pad)
    from anchorcast_plugins.engines.wav2lip.avatar import pad_box, smooth_boxes
    from anchorcast_plugins.engines.wav2lip.training.synth import crop_faces

    run: list[FaceFrame] = []
    run_start = 0
    tracked: tuple[int, int, int, int] | None = None
    stem = source.stem

    def write(frames: list[FaceFrame], first: int) -> None:
        local = crop_boxes(frames, smooth_boxes([f.box for f in frames], limits.smooth_window))
        regions = [f.region for f in frames]
        span = slice(first * SAMPLES_PER_FRAME, (first + len(frames)) * SAMPLES_PER_FRAME)
        cid = clip_id(f"{speaker}-{stem}-{first:06d}")
        while any(e["id"] == cid for e in writer.entries):
            cid += "x"
        entry = writer.add(cid, speaker, crop_faces(regions, local), track.audio[span],
                           source=f"{source}#frames={first}-{first + len(frames)}",
                           original=track.original[span] if track.denoised else None)
        video.clips.append(ClipNote(entry["id"], first, first + len(frames), speaker))
        if embedder is not None:
            embeddings[entry["id"]] = clip_embedding(embedder, frames)

    def flush(why: str) -> None:
        """Writes the stretch in ``run`` as clips of at most ``max_frames`` of (nearly) equal length."""
        nonlocal run
        pieces = -(-len(run) // max_frames)
        edges = [round(k * len(run) / pieces) for k in range(pieces + 1)] if run else [0]
        for lo, hi in itertools.pairwise(edges):
            if hi - lo >= min_frames:
                write(run[lo:hi], run_start + lo)
            else:
                reason = f"{why}: under --min-seconds {limits.min_seconds:g}"
                video.dropped_clips.append(Stretch(run_start + lo, run_start + hi, reason))
                dropped.append((str(source), f"frames {run_start + lo}-{run_start + hi} ({(hi - lo) / FPS:.2f} s, "
                                f"{why}): under --min-seconds {limits.min_seconds:g}"))
        run = []

    try:
        for index, image in enumerate(frames_25fps(source)):
            if index >= usable_frames:
                break
            video.frames += 1
            if progress is not None:
                progress(str(source), index + 1)
            face = None
            if silent is not None and silent[index]:
                reason: str | None = SILENCE
            else:
                # tracked through trimmed frames too: a frame too dark to train on still shows where the face is
                face = tracked = detector.detect(image, previous=tracked)
                reason = _frame_fault(image, face, limits.min_face, cleaning.quality)
            if reason is not None or face is None:
                reason = reason or NO_FACE
                video.trim(index, reason)
                flush(f"then {_phrase(reason)}")
                run_start = index + 1
                continue
            if run and box_iou(face, run[-1].face) < JUMP_IOU:
                video.cuts.append(index)
                flush(f"then {JUMP}")
                run_start = index
            height_px, width_px = image.shape[:2]
            run.append(face_region(image, pad_box(face, limits.pads, width_px, height_px), face))
            if len(run) == 2 * max_frames:  # bounded memory: the first clip's length is settled
                write(run[:max_frames], run_start)
                run = run[max_frames:]
                run_start += max_frames
    except Dropped as error:  # a broken file: keep what was read before the damage
        if not video.clips and len(run) < min_frames:
            raise
        flush("then the video could not be decoded")
        dropped.append((str(source), f"the rest after frame {video.frames}: {error}"))
        return
    if video.frames < min_frames:
        raise Dropped(f"too short: {video.frames / FPS:.2f} s of video (under --min-seconds {limits.min_seconds:g})")
    flush("at the end of the video")
    if not video.clips:
        counts = video.trimmed_frames()
        raise Dropped(f"no stretch of {limits.min_seconds:g} s with a usable face: face lost in {counts[NO_FACE]} "
                      f"and too small (under --min-face {limits.min_face} px) in {counts[SMALL_FACE]} of "
                      f"{video.frames} frames" + "".join(f", {reason} in {frames}" for reason, frames
                                                        in counts.items() if reason not in (NO_FACE, SMALL_FACE)))


def _frame_fault(image: Image, face: tuple[int, int, int, int] | None, min_face: int,
                 gate: QualityGate | None) -> str | None:
    if face is None:
        return NO_FACE
    if face[2] < min_face:
        return SMALL_FACE
    return gate.frame_fault(image, face) if gate is not None else None


def _phrase(reason: str) -> str:
    return {SILENCE: "silence", NO_FACE: "the face was lost", SMALL_FACE: "the face was too small"}.get(
        reason, f"the face was {reason}")


def run_prepare(host: Any, args: argparse.Namespace) -> int:
    """Runs ``anchorcast train prepare``: a progress line per video, then what was kept, trimmed and dropped."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from anchorcast_plugins.engines.wav2lip.training.prepare_args import cleaning_from_args

    del host
    cleaning = cleaning_from_args(args)
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
                                 max_offset=args.max_offset, cleaning=cleaning)
    print_report(report)
    return 0
