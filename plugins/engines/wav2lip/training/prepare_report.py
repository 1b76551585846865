"""What ``anchorcast train prepare`` did, per video and per clip, and the console report: a line per video with
its clips, trimmed stretches and dropped clips (each with its reason), then a summary table."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from anchorcast_plugins.engines.wav2lip.training.dataset import FPS, Dataset

SILENCE, NO_FACE, SMALL_FACE = "silence", "no face", "face too small"
JUMP = "the face jumped (a cut or another person)"


@dataclass
class Stretch:
    """Frames ``[start, end)`` of a video (25 fps) and why they were trimmed or dropped."""

    start: int
    end: int
    reason: str

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / FPS

    def __str__(self) -> str:
        return f"frames {self.start}-{self.end} ({self.seconds:.2f} s): {self.reason}"


@dataclass
class ClipNote:
    """A clip written from a video: its id, frames ``[start, end)`` of the video and its speaker."""

    id: str
    start: int
    end: int
    speaker: str


@dataclass
class VideoReport:
    """One video: frames read, clips kept, stretches trimmed before cutting, clips dropped after, the sound's SNR
    estimate before and after denoising (dB), the video stream's bits per pixel, and the whole-video reason when
    it was dropped."""

    source: str
    frames: int = 0
    clips: list[ClipNote] = field(default_factory=list)
    trimmed: list[Stretch] = field(default_factory=list)
    dropped_clips: list[Stretch] = field(default_factory=list)
    cuts: list[int] = field(default_factory=list)
    snr_before: float | None = None
    snr_after: float | None = None
    bits_per_pixel: float | None = None
    dropped: str | None = None
    speech_change_db: float | None = None
    denoise_note: str | None = None
    """Why the denoised sound was not used (the speech fell too far), when that happened."""

    def trim(self, index: int, reason: str) -> None:
        """Counts frame ``index`` as trimmed for ``reason`` (joining the stretch it continues)."""
        last = self.trimmed[-1] if self.trimmed else None
        if last is not None and last.reason == reason and last.end == index:
            last.end = index + 1
        else:
            self.trimmed.append(Stretch(index, index + 1, reason))

    def trimmed_frames(self) -> Counter[str]:
        counts: Counter[str] = Counter()
        for stretch in self.trimmed:
            counts[stretch.reason] += stretch.end - stretch.start
        return counts

    @property
    def kept_frames(self) -> int:
        return sum(c.end - c.start for c in self.clips)


@dataclass
class PrepareReport:
    """What ``prepare_dataset`` wrote and what it dropped: ``dropped`` lists ``(source, reason)`` for whole videos
    and clips; ``videos`` has every video's details."""

    dataset: Dataset
    kept: list[tuple[str, int]] = field(default_factory=list)
    """``(source, clips)`` for every video that gave at least one clip."""
    dropped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    videos: list[VideoReport] = field(default_factory=list)
    people_distance: float | None = None
    """The smallest distance between two people's mean face embeddings (None: one person or ``--speaker``)."""


def _dropped_reason(reason: str) -> str:
    return reason.split(":")[0] if reason.startswith("off-sync") else reason.split(" (")[0].split(":")[0]


def print_report(report: PrepareReport) -> None:
    """The per-video lines and the summary table, on stderr."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console(stderr=True)
    dataset = report.dataset
    for video in report.videos:
        name = escape(Path(video.source).name)
        if video.dropped:
            console.print(f"[bold]{name}[/]: [red]dropped[/]: {escape(video.dropped)}", highlight=False)
            continue
        console.print(f"[bold]{name}[/]: {len(video.clips)} clips, {video.kept_frames / FPS:.1f} s of "
                      f"{video.frames / FPS:.1f} s", highlight=False)
        if video.denoise_note:
            console.print(f"  [yellow]{escape(video.denoise_note)}[/]", highlight=False)
        for clip in video.clips:
            console.print(f"  clip {escape(clip.id)}: frames {clip.start}-{clip.end}, speaker "
                          f"{escape(clip.speaker)}", highlight=False)
        for stretch in video.trimmed:
            console.print(f"  trimmed {escape(str(stretch))}", highlight=False)
        for stretch in video.dropped_clips:
            console.print(f"  dropped clip {escape(str(stretch))}", highlight=False)
    table = Table(title="train prepare", title_justify="left")
    for column in ("video", "frames read", "kept s", "trimmed s by reason", "dropped clips by reason",
                   "SNR dB (denoised)", "bits/px"):
        table.add_column(column, justify="right" if column in ("frames read", "kept s", "bits/px") else "left")
    for video in report.videos:
        trimmed = ", ".join(f"{reason} {frames / FPS:.2f}" for reason, frames in video.trimmed_frames().items())
        drops = Counter(_dropped_reason(s.reason) for s in video.dropped_clips)
        dropped = video.dropped or ", ".join(f"{reason} x{count}" for reason, count in drops.items())
        snr = "-" if video.snr_before is None else f"{video.snr_before:.1f}" + (
            f" -> {video.snr_after:.1f}" if video.snr_after is not None else
            f" (kept: speech {video.speech_change_db:+.1f} dB)" if video.denoise_note else "")
        bits = "-" if video.bits_per_pixel is None else f"{video.bits_per_pixel:.3f}"
        table.add_row(escape(Path(video.source).name), str(video.frames), f"{video.kept_frames / FPS:.1f}",
                      escape(trimmed or "-"), escape(dropped or "-"), snr, bits)
    console.print(table)
    people = f" (nearest two people {report.people_distance:.2f} apart)" if report.people_distance else ""
    console.print(f"[bold]data set[/] {escape(str(dataset.folder))}: {len(dataset)} clips "
                  f"({dataset.frames / FPS:.1f} s) from {len(report.kept)} videos, speakers "
                  f"{escape(', '.join(dataset.speakers))}{people}; took {report.seconds:.1f} s", highlight=False)
