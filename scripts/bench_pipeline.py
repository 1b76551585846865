#!/usr/bin/env python3
"""Benchmark the default profile end to end at 1280x720 and print a table.

Runs the bundled default profile (script -> piper -> viseme -> file) in three ways, in one process:

- ``fast``:     as fast as the pipeline allows (offline file rendering);
- ``realtime``: paced on the wall clock as a live output would be (must hold the profile's fps with no overruns);
- ``idle-ref``: the same timeline with the engine's idle frame only: the reference cost of everything but the
                lips (timeline, compositing copy, encoding), measured in the same run.

Columns: frames/s, speed against real time, per-stage latency p50/p95 (engine per frame, file output per frame,
the time from audio entering the host to its frame leaving the outputs when paced: for a script this is the
render-ahead lead, not a delay anyone waits for), overruns and dropped frames. frames/s is counted from the
first frame on air; "x real time" is media seconds over all wall seconds, start-up included.

A second table gives the pacing of the ``realtime`` run: how far each frame leaves from its slot on the frame grid
(p50/p95/max, after removing the constant offset) and the drift against the wall clock, beside the same figures for
a bare ``time.sleep`` loop at the same rate measured in the same run (what the OS itself allows).

    python scripts/bench_pipeline.py [--text "..."] [--repeat 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from anchorcast.host import Host
from anchorcast.profile import find_profile, read_toml

TEXT = (
    "Good evening. Here is the news at the top of the hour. Markets rose in early trading, and the weather "
    "stays mild through the weekend. We will be back after the break."
)


class PacingProbe:
    """A live output that notes when each frame leaves."""

    live = True

    def __init__(self) -> None:
        self.times: list[float] = []

    def open(self, fmt: Any) -> None:
        self.fps = float(fmt.fps)

    def write(self, frame: Any, audio: Any) -> None:
        self.times.append(time.monotonic())

    def close(self) -> None:
        pass


def sleep_loop(frames: int, fps: float) -> list[float]:
    """The reference: a loop that sleeps to each frame's slot and notes when it woke."""
    start, times = time.monotonic(), []
    for index in range(frames):
        time.sleep(max(0.0, start + index / fps - time.monotonic()))
        times.append(time.monotonic())
    return times


def pacing(times: list[float], fps: float) -> tuple[float, float, float, float]:
    """Departure error from the frame grid (p50, p95, max in ms, constant offset removed) and drift in ppm."""
    import numpy as np

    stamps = np.array(times)
    index = np.arange(len(stamps))
    offsets = stamps - stamps[0] - index / fps
    error = np.abs(offsets - np.median(offsets)) * 1000
    slope = np.polyfit(index, stamps, 1)[0]
    p50, p95 = np.percentile(error, [50, 95])
    return float(p50), float(p95), float(error.max()), float((slope * fps - 1) * 1e6)


def run(mode: str, text: str, out: Path, probe: PacingProbe | None = None) -> dict[str, Any]:
    path = find_profile("default")
    raw = read_toml(path)
    raw["source"] = {"use": "script", "text": text}
    overrides: list[tuple[str, Any]] = [("outputs.file.path", str(out))]
    overrides.append(("scheduler.pace", "realtime" if mode == "realtime" else "fast"))
    host = Host.for_profile(path, raw)
    profile = host.load_profile(path, raw=raw, overrides=overrides)
    if mode == "idle-ref":
        _use_idle_only(host, profile.engine.use)
    return host.run(profile, extra_outputs=[("pacing", probe)] if probe else ())


def _use_idle_only(host: Host, engine: str) -> None:
    """Wraps the engine so it always draws its idle frame (same avatar, same size, same copies)."""
    component = host.plugins.component("engine", engine)
    assert component is not None
    original = component.factory

    class IdleOnly:
        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.lookbehind, self.lookahead, self.max_batch = inner.lookbehind, inner.lookahead, inner.max_batch

        def open(self, fmt: Any) -> None:
            self.inner.open(fmt)

        def render(self, jobs: Any) -> list[Any]:
            return [self.inner.idle(job.index).copy() for job in jobs]

        def idle(self, index: int) -> Any:
            return self.inner.idle(index)

        def close(self) -> None:
            self.inner.close()

    host.plugins.components[("engine", engine)] = replace(component, factory=lambda h, s: IdleOnly(original(h, s)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default=TEXT)
    parser.add_argument("--repeat", type=int, default=1, help="repeat the text N times (longer runs)")
    parser.add_argument("--threads", type=int, default=0, help="OpenCV threads (0: OpenCV's default)")
    parser.add_argument("--modes", default="idle-ref,fast,realtime")
    args = parser.parse_args()
    if args.threads:
        import cv2

        cv2.setNumThreads(args.threads)
    text = " ".join([args.text] * args.repeat)
    console = Console()
    rows = []
    probe = PacingProbe()
    with tempfile.TemporaryDirectory() as folder:
        for mode in args.modes.split(","):
            console.print(f"running {mode} ...")
            rows.append((mode, run(mode, text, Path(folder) / f"{mode}.mp4", probe if mode == "realtime" else None)))
    reference = next((report for mode, report in rows if mode == "idle-ref"), None)

    table = Table(title=f"default profile, 1280x720 @ 25 fps, {os.cpu_count()} cores", header_style="bold")
    for column in ("mode", "frames", "frames/s", "x real time", "vs idle-ref", "engine p50/p95 ms",
                   "file out p50/p95 ms", "audio in to air p50/p95 ms", "overruns", "dropped"):
        table.add_column(column, justify="left" if column == "mode" else "right")

    def pair(stats: dict[str, Any]) -> str:
        return f"{stats['p50_ms']:.2f} / {stats['p95_ms']:.2f}" if stats.get("count") else "-"

    for mode, report in rows:
        stages = report["stages"]
        ratio = report["frames_per_second"] / reference["frames_per_second"] if reference else float("nan")
        table.add_row(
            mode, str(report["frames"]), f"{report['frames_per_second']:.1f}", f"{report['speed']:.2f}",
            f"{ratio:.2f}", pair(stages.get("engine_frame", {})), pair(stages.get("output:file", {})),
            pair(stages.get("audio_to_air", {})), str(report["overruns"]), str(report["dropped_frames"]),
        )
    console.print(table)
    if len(probe.times) > 10:
        grid = Table(title="pacing of the realtime run: departure from the frame grid", header_style="bold")
        for column in ("clock", "frames", "p50 ms", "p95 ms", "max ms", "drift ppm"):
            grid.add_column(column, justify="left" if column == "clock" else "right")
        for name, times in (("scheduler (realtime run)", probe.times),
                            ("time.sleep loop (reference)", sleep_loop(len(probe.times), probe.fps))):
            p50, p95, worst, drift = pacing(times, probe.fps)
            grid.add_row(name, str(len(times)), f"{p50:.2f}", f"{p95:.2f}", f"{worst:.2f}", f"{drift:+.0f}")
        console.print(grid)
    voice = rows[0][1]["stages"]
    console.print(
        f"voice: first audio p50 {voice.get('voice_first_audio', {}).get('p50_ms', 0):.0f} ms; "
        f"real-time factor x1000 p50 {voice.get('voice_rtf_x1000', {}).get('p50_ms', 0):.0f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
