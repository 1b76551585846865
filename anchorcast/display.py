"""What a run shows on the console: progress while it runs, a metrics table at the end (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table


class RunDisplay:
    """A progress line with live figures; updated per frame (throttled by rich) and per metrics report."""

    def __init__(self, console: Console, fps: float, live: bool) -> None:
        self.console = console
        self.fps = fps
        self.live = live
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[media]}"),
            TextColumn("{task.fields[figures]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
            refresh_per_second=4,
        )
        self.task: TaskID | None = None

    def __enter__(self) -> RunDisplay:
        self.progress.__enter__()
        label = "on air" if self.live else "rendering"
        self.task = self.progress.add_task(label, total=None, media="0.0 s", figures="")
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def frame(self, aired: int, total: int | None) -> None:
        assert self.task is not None
        self.progress.update(self.task, completed=aired, total=total, media=f"{aired / self.fps:.1f} s")

    def metrics(self, report: dict[str, Any]) -> None:
        assert self.task is not None
        engine = report["stages"].get("engine_frame", {})
        parts = [f"{report['frames_per_second']:.1f} fps", f"x{report['speed']:.2f}"]
        if engine.get("count"):
            parts.append(f"engine p95 {engine['p95_ms']:.1f} ms")
        if report["overruns"]:
            parts.append(f"[yellow]{report['overruns']} overruns[/]")
        if self.live and report["stages"].get("audio_to_air", {}).get("count"):
            parts.append(f"audio to air p95 {report['stages']['audio_to_air']['p95_ms']:.0f} ms")
        self.progress.update(self.task, figures="  ".join(parts))


def metrics_table(report: dict[str, Any]) -> Table:
    """The end-of-run summary: totals, then latency per stage."""
    table = Table(title="run metrics", show_header=True, header_style="bold")
    table.add_column("stage")
    for column in ("count", "p50 ms", "p95 ms", "max ms"):
        table.add_column(column, justify="right")
    for name, stats in report["stages"].items():
        if stats.get("count"):
            table.add_row(
                name, str(stats["count"]), f"{stats['p50_ms']:.2f}", f"{stats['p95_ms']:.2f}", f"{stats['max_ms']:.2f}"
            )
    table.caption = (
        f"{report['frames']} frames, {report['media_seconds']:.2f} s of media in {report['wall_seconds']:.2f} s "
        f"({report['frames_per_second']:.1f} fps, x{report['speed']:.2f} real time); "
        f"overruns {report['overruns']} (repeat {report['repeated_frames']}, idle {report['idle_frames']}, "
        f"fallback {report['fallback_frames']}), dropped {report['dropped_frames']}, "
        f"A/V offset max {report['av_offset_ms_max']:.1f} ms"
    )
    return table
