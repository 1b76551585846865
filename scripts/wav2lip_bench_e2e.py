"""End to end for scripts/bench_wav2lip.py: ``anchorcast run`` on the bench clip as a subprocess (pace fast, file
output, 1280x720), its wall time, the time until its first frame left the outputs, and its ``--metrics`` JSON;
cold (a fresh ANCHORCAST_HOME) or warm; and, when a checkout is given, the official Wav2Lip inference script."""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wav2lip_bench_inputs import FACE_BOX, ClipInputs, fresh_home, write_profile

CLI = Path(__file__).resolve().parent / "wav2lip_bench_cli.py"
OFFICIAL_QUOTED_S = 47.2
"""The official inference.py on the 10 s clip, median, 2-core machine (issue 16; measured before this work)."""
ISSUE_OLD_FAST_S = {"auto": 20.4, "torch": 24.7}
"""``anchorcast run`` on the 10 s clip before this work (issue 16), for the reader; the table's ratios use the old
fast pace measured in the same run."""


@dataclass(frozen=True)
class Variant:
    """One way of running the clip."""

    label: str
    backend: str
    assignments: tuple[str, ...] = ()
    old: bool = False
    pythonpath: str | None = None
    """Where ``anchorcast`` and ``anchorcast_plugins`` are imported from instead (another revision's tree)."""


VARIANTS = (
    Variant("this build, backend auto", "auto"),
    Variant("old fast pace, backend auto", "auto", ("engine.throughput_batch=4", "engine.remeasure=true"), old=True),
    Variant("this build, backend torch", "torch"),
    Variant("old fast pace, backend torch", "torch", ("engine.throughput_batch=4", "engine.remeasure=true"), old=True),
)


@dataclass
class Run:
    """One ``anchorcast run``: seconds from launch to exit and to the first frame out, and its metrics."""

    wall_s: float
    first_frame_s: float | None
    ready_s: float | None
    """The engine's own "ready in" (its open()), from the -v log."""
    frames: int
    metrics: dict[str, Any] = field(default_factory=dict)


def run_clip(inputs: ClipInputs, home: Path, work: Path, variant: Variant, *, timeout: float = 900) -> Run:
    """``anchorcast -v run PROFILE --metrics ... --set engine.backend=...`` with ANCHORCAST_HOME=``home``."""
    work.mkdir(parents=True, exist_ok=True)
    profile = write_profile(work / "bench.toml", inputs, work / "out.mp4")
    metrics, first = work / "metrics.json", work / "first-frame.txt"
    for stale in (metrics, first):
        stale.unlink(missing_ok=True)
    command = [sys.executable, str(CLI), "-v", "run", str(profile), "--metrics", str(metrics),
               "--set", f"engine.backend={variant.backend}"]  # fmt: skip
    for assignment in variant.assignments:
        command += ["--set", assignment]
    env = {**os.environ, "ANCHORCAST_HOME": str(home), "W2L_BENCH_FIRST_FRAME": str(first), "COLUMNS": "200"}
    if variant.pythonpath:
        env["PYTHONPATH"] = variant.pythonpath
    launched = time.time()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    wall = time.time() - launched
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    report = json.loads(metrics.read_text())
    ready = re.findall(r"ready in ([0-9.]+) s", result.stdout + result.stderr)
    first_s = float(first.read_text()) - launched if first.is_file() else None
    return Run(wall, first_s, float(ready[-1]) if ready else None, int(report["frames"]), report)


def before_variants(revision: str, work: Path) -> tuple[Variant, ...]:
    """The code as it was at ``revision`` (a git revision of this repository, e.g. the commit before issue 16's
    work), exported with ``git archive`` and imported in place of this build's: its fast pace, measured in the
    same run, instead of this build's emulation of it."""
    repository = Path(__file__).resolve().parent.parent
    tree = work / "before-tree"
    if tree.exists():
        shutil.rmtree(tree)
    tree.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(repository), "archive", "--format=tar", revision],
                             capture_output=True, check=False)
    if archive.returncode != 0:
        raise SystemExit(f"--before {revision}: git archive failed: {archive.stderr.decode(errors='replace')}")
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive.stdout, check=True)
    imports = work / "before-imports"  # the package names the installed distribution maps to these folders
    imports.mkdir(exist_ok=True)
    for name, folder in (("anchorcast", "anchorcast"), ("anchorcast_plugins", "plugins")):
        link = imports / name
        link.unlink(missing_ok=True)
        link.symlink_to(tree / folder, target_is_directory=True)
    short = revision[:12]
    return (
        Variant(f"anchorcast {short} (before), backend auto", "auto", old=True, pythonpath=str(imports)),
        Variant(f"anchorcast {short} (before), backend torch", "torch", old=True, pythonpath=str(imports)),
    )


def cold_runs(inputs: ClipInputs, template_work: Path, backends: tuple[str, ...]) -> list[dict[str, Any]]:
    """The first run on a new avatar for each backend: a fresh ANCHORCAST_HOME (weights only) each time."""
    rows = []
    for backend in backends:
        home = fresh_home(inputs.home, template_work / f"cold-home-{backend}")
        run = run_clip(inputs, home, template_work / f"cold-{backend}", Variant(f"cold, {backend}", backend))
        rows.append({"case": f"first run (cold), backend {backend}", **_run_fields(run)})
    return rows


def warm_runs(inputs: ClipInputs, home: Path, work: Path, repeat: int, variants: tuple[Variant, ...] = VARIANTS,
              log: Any = print) -> list[dict[str, Any]]:
    """Each variant ``repeat`` times on the warm ``home``, interleaved (one of each, then again), so a slow spell
    on a shared machine falls on all of them; the medians."""
    runs: dict[str, list[Run]] = {variant.label: [] for variant in variants}
    for index in range(repeat):
        for variant in variants:
            run = run_clip(inputs, home, work / "warm", variant)
            runs[variant.label].append(run)
            log(f"  {variant.label} #{index + 1}: {run.wall_s:.1f} s, first frame at {run.first_frame_s or 0:.1f} s")
    rows = []
    for variant in variants:
        done = runs[variant.label]
        rows.append({
            "label": variant.label, "backend": variant.backend, "old": variant.old, "repeats": len(done),
            "wall_s": statistics.median(r.wall_s for r in done), "walls_s": [r.wall_s for r in done],
            "first_frame_s": _median([r.first_frame_s for r in done]), "ready_s": _median([r.ready_s for r in done]),
            "frames": done[0].frames,
            "engine_s": _median([_engine_seconds(r) for r in done]),
            "batch_size_mean": done[0].metrics.get("batch_size_mean"),
        })  # fmt: skip
    return rows


def official_run(checkout: Path, checkpoint: Path | None, inputs: ClipInputs, repeat: int) -> dict[str, Any]:
    """The official ``inference.py`` of a Rudrabha/Wav2Lip checkout on the same still, speech and face box (its
    ``--box`` is top, bottom, left, right); median wall of ``repeat`` runs, frames = 25 per second of speech."""
    x, y, w, h = FACE_BOX
    checkpoint = checkpoint or checkout / "checkpoints" / "wav2lip.pth"
    command = [sys.executable, "inference.py", "--checkpoint_path", str(checkpoint), "--face", str(inputs.still),
               "--audio", str(inputs.speech), "--box", str(y), str(y + h), str(x), str(x + w)]  # fmt: skip
    walls = []
    for _ in range(repeat):
        started = time.time()
        result = subprocess.run(command, cwd=checkout, capture_output=True, text=True, timeout=1800)
        if result.returncode != 0:
            raise RuntimeError(f"official inference.py failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        walls.append(time.time() - started)
    return {"label": "official inference.py (measured here)", "wall_s": statistics.median(walls), "walls_s": walls,
            "frames": round(inputs.seconds * 25), "measured": True}  # fmt: skip


def quoted_official(seconds: float) -> dict[str, Any]:
    return {"label": "official inference.py", "wall_s": OFFICIAL_QUOTED_S, "frames": 250, "measured": False,
            "note": "quoted from issue 16 (10 s clip), not measured here" + ("" if seconds == 10 else
                    f"; this run's clip is {seconds:g} s, so its ratios to it are not like for like")}  # fmt: skip


def _run_fields(run: Run) -> dict[str, Any]:
    return {"wall_s": run.wall_s, "first_frame_s": run.first_frame_s, "ready_s": run.ready_s, "frames": run.frames,
            "engine_s": _engine_seconds(run)}  # fmt: skip


def _engine_seconds(run: Run) -> float | None:
    """The engine's own work over the run: its batches' total time, from the metrics' mean and count."""
    stage = run.metrics.get("stages", {}).get("engine_batch", {})
    return stage["mean_ms"] * stage["count"] / 1000 if stage.get("count") else None


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None
