#!/usr/bin/env python3
"""Benchmark the face3d engine on this machine and print a table: the coefficient model and the render, per frame.

Rows:

- ``model torch, N thread(s)``: the coefficient model over a batch of 8 frame jobs at 25 fps (one pass over the
  union of their windows, as the engine runs it), per frame; random weights (speed does not depend on them);
- ``model onnxruntime`` / ``model openvino``: the same pass exported
  (:mod:`anchorcast_plugins.engines.face3d.export`), where the export applies (a batch with its full 1.2 s
  context; the engine falls back to torch otherwise);
- ``render WxH, aa N``: the head drawn by OpenGL (moderngl on EGL: the GL renderer is named above the table), the
  blend, normals and readback included, with 0 (aliased) or 4 multisamples; ``of which blend + normals``: the
  numpy part of a frame (the expression weights blended into the vertices, the normals recomputed), any size;
- ``engine WxH``: the whole engine's ``render(jobs)`` in batches of 8 (model + idle motion + render + tagging),
  which is what the scheduler sees; with the shipped weights where the package has them.

Columns: ms per frame wall-clock and CPU (all the process's threads), and frames/s from the wall time. The goal
is 25 frames/s at 512x512 with the model, on 2 cores. Each cell is the median of timed passes after a warm-up.
The CPU time says what a frame costs where other processes share the cores (wall time then grows, CPU time
hardly does); the load average is printed with the table.

    python scripts/bench_face3d.py [--short] [--passes N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from anchorcast.components import FrameJob
from anchorcast.media import StreamFormat

GOAL_FPS = 25.0
BATCH = 8
FPS = Fraction(25)


def timed(call: Callable[[], object], passes: int, per: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds per item over ``passes`` calls, each doing ``per`` items."""
    call()
    walls, cpus = [], []
    for _ in range(passes):
        wall, cpu = time.perf_counter(), time.process_time()
        call()
        walls.append((time.perf_counter() - wall) * 1000 / per)
        cpus.append((time.process_time() - cpu) * 1000 / per)
    return statistics.median(walls), statistics.median(cpus)


def frame_jobs(rate: int, lookbehind: float, lookahead: float, first: int, count: int) -> list[FrameJob]:
    """Consecutive jobs over speech-like noise (an amplitude-modulated signal), as the scheduler cuts them."""
    rng = np.random.default_rng(0)
    seconds = (first + count) / float(FPS) + 2
    t = np.arange(int(seconds * rate)) / rate
    audio = (0.2 * rng.standard_normal(t.size) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)
    behind, ahead = round(lookbehind * rate), round(lookahead * rate)
    jobs = []
    for index in range(first, first + count):
        start, end = index * rate // 25, (index + 1) * rate // 25
        low, high = start - behind, end + ahead
        context = np.zeros(high - low, np.float32)
        a, b = max(low, 0), min(high, audio.size)
        context[a - low: b - low] = audio[a:b]
        jobs.append(FrameJob(index, index / 25, context, behind, end - start, 1.0))
    return jobs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="CI mode: 512x512 only, few passes")
    parser.add_argument("--passes", type=int, default=None, help="timed passes per cell (default 15, short 3)")
    args = parser.parse_args(argv)
    passes = args.passes or (3 if args.short else 15)
    sizes = [(512, 512)] if args.short else [(512, 512), (1280, 720)]

    import torch

    from anchorcast_plugins.engines.face3d import export
    from anchorcast_plugins.engines.face3d.asset import SHIPPED_ASSET, FaceModel
    from anchorcast_plugins.engines.face3d.batching import BatchCoefficients
    from anchorcast_plugins.engines.face3d.coeff_model import LOOKAHEAD_S, CoefficientModel
    from anchorcast_plugins.engines.face3d.engine import SHIPPED_WEIGHTS, Face3DEngine
    from anchorcast_plugins.engines.face3d.render import HeadRenderer

    console = Console(width=120)
    torch.manual_seed(0)
    model = CoefficientModel().eval()
    face = FaceModel.load(SHIPPED_ASSET)
    jobs = frame_jobs(16000, model.lookbehind_samples / 16000, LOOKAHEAD_S, 100, BATCH)
    rows: list[tuple[str, float, float]] = []
    default_threads = torch.get_num_threads()

    for threads in sorted({1, min(2, os.cpu_count() or 1)}):
        torch.set_num_threads(threads)
        batch = BatchCoefficients(model, FPS, 16000)
        rows.append((f"model torch, {threads} thread{'s' if threads > 1 else ''}",
                     *timed(lambda b=batch: b(jobs), passes, BATCH)))
    torch.set_num_threads(default_threads)
    reference = BatchCoefficients(model, FPS, 16000)(jobs)
    for runtime in export.RUNTIMES:
        for threads in sorted({1, min(2, os.cpu_count() or 1)}):
            try:
                logits = export.exported_logits(model, runtime, threads=threads)
            except export.ExportUnavailable as why:
                console.print(f"model {runtime}: not measured ({why})")
                break
            batch = BatchCoefficients(model, FPS, 16000, logits)
            error = float(np.abs(batch(jobs) - reference).max())
            rows.append((f"model {runtime}, {threads} thread{'s' if threads > 1 else ''} (max |diff| {error:.0e})",
                         *timed(lambda b=batch: b(jobs), passes, BATCH)))

    # as the model gives them: every weight a little above zero (a sigmoid), the jaw open
    weights = np.random.default_rng(0).uniform(0.0, 0.15, len(face.expression_names)).astype(np.float32)
    weights[face.expression_index("jawOpen")] = 0.4
    renderer_name = ""
    probe = HeadRenderer(face, 64, 64)
    rows.append(("  of which blend + normals (numpy)",
                 *timed(lambda: probe.normals(probe.vertices(weights)), passes, 1)))
    probe.close()
    for width, height in sizes:
        for samples in (0, 4):
            renderer = HeadRenderer(face, width, height, samples=samples)
            renderer_name = renderer.ctx.info["GL_RENDERER"]
            rows.append((f"render {width}x{height}, aa {samples}",
                         *timed(lambda r=renderer: r.render(weights), passes, 1)))
            renderer.close()

    with tempfile.TemporaryDirectory() as folder:
        # the shipped weights where there are (a trained model leaves most weights about zero: less to blend)
        path, trained = SHIPPED_WEIGHTS, True
        if not path.exists():
            path, trained = Path(folder) / "coeffs.safetensors", False
            model.save(path)
        for width, height in sizes:
            engine = Face3DEngine(CoefficientModel.load(path), face, idle_motion=True)
            engine.open(StreamFormat(width, height, FPS, 16000))
            rows.append((f"engine {width}x{height} (batches of {BATCH}, {'shipped' if trained else 'untrained'})",
                         *timed(lambda e=engine: e.render(jobs), passes, BATCH)))
            engine.close()

    table = Table(title=f"face3d: ms per frame ({passes} passes, median)")
    for column in ("", "wall ms", "CPU ms", "frames/s (wall)"):
        table.add_column(column, justify="left" if not column else "right")
    for label, wall, cpu in rows:
        table.add_row(label, f"{wall:.2f}", f"{cpu:.2f}", f"{1000 / wall:.1f}")
    console.print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
                  f"load average {os.getloadavg()[0]:.2f}; torch {torch.__version__}, {default_threads} threads; "
                  f"GL: {renderer_name}")
    console.print(table)
    best_model = min(wall for label, wall, _ in rows if label.startswith("model"))
    render_512 = next(wall for label, wall, _ in rows if label == "render 512x512, aa 0")
    engine_wall, engine_cpu = next((wall, cpu) for label, wall, cpu in rows if label.startswith("engine 512x512"))
    fps, cpu_fps = 1000 / engine_wall, 1000 / engine_cpu
    verdict = "meets" if fps >= GOAL_FPS else "misses"
    console.print(f"512x512: model {best_model:.2f} + render {render_512:.2f} ms per frame (wall); the engine "
                  f"{fps:.1f} frames/s on the wall clock: {verdict} the {GOAL_FPS:.0f} frames/s goal at load "
                  f"{os.getloadavg()[0]:.1f}; its CPU time alone allows {cpu_fps:.1f} frames/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
