#!/usr/bin/env python3
"""Benchmark the Wav2Lip engine on this machine's CPU: the generator's backends, the engine by pacing mode,
start-up cold and warm, and ``anchorcast run`` end to end on a 1280x720 clip, against the figures before issue 16.

Reading guide. **Generator backends** (random weights, 96x96): frames/s, latency per batch and GFLOP/s of each
inference backend alone, as ratios to fp32/int8 GEMMs measured in the same run (is the backend near what the CPU can
do?). **Backends by mode**: frames/s by backend and batch size, live (latency mode, one stream, each batch one
request) against fast (OpenVINO compiled for throughput with one stream per core and the batch's sub-batches of
``max_batch`` in flight; torch on one worker thread): "generator" is the inference alone, "engine" is
``Wav2LipEngine.render`` (mel windows + generator + feathered paste at 1280x720), the rate a fast run can reach.
**Start-up (engine.open)**: in process, cold (a fresh ANCHORCAST_HOME holding only the weights: the avatar is
prepared, its features encoded, the backends measured, OpenVINO models built) and warm (all cached, the stored
backend decision reused), with the engine's own breakdown and the first batch, against ``remeasure=true``
(measuring on every run, the behaviour before) in the same run. **Start-up (process)**: ``anchorcast run`` as a
subprocess: seconds from launch to the first frame out of the outputs (imports and opening included) and in all.
**End to end**: ``anchorcast run`` on the clip (pace fast, file output), warm, median of interleaved repeats: this
build against the old fast pace (``engine.throughput_batch=4`` and ``engine.remeasure=true``) measured in the same
run, and against the official inference script (47.2 s for the 10 s clip, quoted from issue 16 unless
``--official`` runs it here). Figures from a busy machine are low and noisy: take final ones on a quiet machine.

    python scripts/bench_wav2lip.py [--short] [--repeat 3] [--clip-seconds 10] [--json PATH] [--official DIR]

``--short`` (CI, about a minute and a half on 2 cores): batch 4 (and 8 by mode, openvino-int8 only), 1 s cells,
a 2048^2 GEMM, a 3 s clip, one repeat, the auto rows only, no cold process run nor remeasured open. ``ONEDNN_MAX_CPU_ISA=AVX2`` makes OpenVINO and torch's oneDNN kernels behave as on an
AVX2-only CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from wav2lip_bench_backends import backend_table, cpu_line
from wav2lip_bench_e2e import (
    ISSUE_OLD_FAST_S,
    VARIANTS,
    before_variants,
    cold_runs,
    official_run,
    quoted_official,
    warm_runs,
)
from wav2lip_bench_engine import MODE_BACKENDS, backends_by_mode, startup
from wav2lip_bench_inputs import make_inputs

from anchorcast_plugins.engines.wav2lip import backends as wb

ISSUE_COLD_S = {"auto": 75.5, "torch": 39.9}
"""First ``anchorcast run`` on a new avatar, 10 s clip, before this work (issue 16)."""
ISSUE_READY_S = {"auto": 5.9, "torch": 2.0}
"""The engine's "ready in" of a warm run before this work (issue 16)."""
TARGETS = {"end_to_end_s": 13.0, "warm_startup_s": 2.0, "first_run_s": 30.0}
"""Issue 16's done-when figures, for the 10 s clip."""


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    console = Console(width=None if sys.stdout.isatty() else 200)
    say = lambda text: console.print(text, style="dim", highlight=False)  # noqa: E731
    load_before = os.getloadavg()
    started = time.perf_counter()
    console.print(f"CPU: {cpu_line()}; {args.threads} threads; load average {load_before[0]:.2f} at start")
    work = Path(args.work or tempfile.mkdtemp(prefix="w2l-bench-"))
    results: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "cpu": cpu_line()}
    try:
        inputs = make_inputs(work / "inputs", args.clip_seconds)
        say(f"inputs in {work}: {args.clip_seconds:g} s of eSpeak speech, a 1280x720 still, random weights")

        say("start-up in process (engine.open)")
        engine_rows = startup(inputs, work, cold=True, remeasure_too=not args.short)
        results["startup_engine"] = engine_rows
        process_rows = [] if args.short else cold_runs(inputs, work, ("auto", "torch"))

        ids = engine_rows[-1]["ids"]
        results["backend_table"] = backend_table(
            console, batches=args.batches, threads=args.threads, seconds=args.seconds, skip=args.skip,
            cache_dir=args.cache_dir or Path(ids["cache_dir"]), gemm_n=2048 if args.short else 4096,
            min_count=2 if args.short else 5,
            **({} if args.cache_dir else {"weights_id": ids["weights_id"], "avatar_id": ids["avatar_id"]}),
        )  # fmt: skip

        say("backends by mode")
        modes = backends_by_mode(inputs, work, batches=args.mode_batches, seconds=args.seconds,
                                 passes=1 if args.short else 2, backends=args.mode_backends,
                                 min_count=2 if args.short else 5, log=say)  # fmt: skip
        results["modes"] = modes
        console.print(_modes_table(modes, args.threads))

        say(f"end to end: anchorcast run on the {args.clip_seconds:g} s clip, {args.repeat} interleaved repeat(s)")
        variants = VARIANTS
        if args.before:
            this = [v for v in VARIANTS if not v.old]
            before = before_variants(args.before, work)
            variants = (this[0], before[0], this[1], before[1])
        variants = tuple(v for v in variants if not args.short or v.backend == "auto")
        warm = warm_runs(inputs, work / "engine-home", work / "e2e", args.repeat, variants, log=say)
        official = (official_run(args.official, args.official_checkpoint, inputs, args.repeat) if args.official
                    else quoted_official(args.clip_seconds))  # fmt: skip
        results["end_to_end"], results["official"] = warm, official
        process_rows += [{"case": f"warm, {row['label']}", **row} for row in warm]
        results["startup_process"] = process_rows

        console.print(_startup_table(engine_rows))
        console.print(_process_table(process_rows))
        console.print(_end_to_end_table(warm, official, args.clip_seconds))
        results["verdicts"] = _verdicts(engine_rows, process_rows, warm, args.clip_seconds)
        for line in results["verdicts"]:
            console.print(line, highlight=False)
    finally:
        if not args.work and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    results["seconds"] = time.perf_counter() - started
    results["load_average"] = {"start": load_before[0], "end": os.getloadavg()[0]}
    console.print(f"bench took {results['seconds']:.0f} s; load average {load_before[0]:.2f} at start, "
                  f"{os.getloadavg()[0]:.2f} at the end (other work on the machine lowers every figure)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="the CI mode (see above)")
    parser.add_argument("--batches", default=None, help="generator table batch sizes (default 1,2,4,8,16)")
    parser.add_argument("--mode-batches", default=None, help="backends-by-mode batch sizes (default 1,4,8,16)")
    parser.add_argument("--threads", type=int, default=wb.cpu_cores(), help="torch and OpenVINO threads")
    parser.add_argument("--seconds", type=float, default=None, help="measuring time per cell (default 3, short 1)")
    parser.add_argument("--repeat", type=int, default=None, help="end-to-end repeats (default 3, short 1)")
    parser.add_argument("--clip-seconds", type=float, default=None, help="clip length (default 10, short 3)")
    parser.add_argument("--cache-dir", type=Path, default=None,
                        help="build the generator table's OpenVINO models here (default: use the engine's)")
    parser.add_argument("--skip", default=None, help="generator table rows to leave out, comma-separated")
    parser.add_argument("--before", metavar="REV", default=None,
                        help="run the end-to-end rows' \"before\" with this git revision's code (e.g. the commit "
                             "before issue 16) instead of emulating the old fast pace")
    parser.add_argument("--official", type=Path, default=None, help="a Rudrabha/Wav2Lip checkout to run here")
    parser.add_argument("--official-checkpoint", type=Path, default=None,
                        help="its checkpoint (default DIR/checkpoints/wav2lip.pth)")
    parser.add_argument("--work", type=Path, default=None, help="keep inputs and homes here (default: temporary)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--json", type=Path, default=None, help="also write every result here")
    args = parser.parse_args(argv)
    short = args.short
    args.batches = _ints(args.batches or ("4" if short else "1,2,4,8,16"))
    args.mode_batches = _ints(args.mode_batches or ("4,8" if short else "1,4,8,16"))
    args.mode_backends = ("openvino-int8",) if short else MODE_BACKENDS
    args.seconds = args.seconds or (1.0 if short else 3.0)
    args.repeat = args.repeat or (1 if short else 3)
    args.clip_seconds = args.clip_seconds or (3.0 if short else 10.0)
    default_skip = "torch eager (reference),openvino-fp32,openvino-int8 x2" if short else ""
    args.skip = {s.strip() for s in (args.skip if args.skip is not None else default_skip).split(",") if s.strip()}
    return args


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",")]


def _fmt(value: float | None, digits: int = 1) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _modes_table(rows: list[dict[str, Any]], threads: int) -> Table:
    table = Table(title=f"Backends by mode, {threads} CPU threads: generator alone and engine render (1280x720)")
    for column in ("backend", "mode", "batch", "streams", "generator frames/s", "gen p50 ms", "gen p95 ms",
                   "engine frames/s", "engine p50 ms", "engine p95 ms", "engine x live"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("backend", "mode") else "right", no_wrap=True)
    live = {(r["backend"], r["batch"]): r["engine"]["fps"] for r in rows if r["mode"] == "live"}
    for row in rows:
        gen, eng = row["generator"], row["engine"]
        table.add_row(
            row["backend"], row["mode"], str(row["batch"]), str(row["streams"]), f"{gen['fps']:.1f}",
            f"{gen['p50_ms']:.0f}", f"{gen['p95_ms']:.0f}", f"{eng['fps']:.1f}", f"{eng['p50_ms']:.0f}",
            f"{eng['p95_ms']:.0f}", f"{eng['fps'] / live[(row['backend'], row['batch'])]:.2f}",
        )  # fmt: skip
    return table


def _startup_table(rows: list[dict[str, Any]]) -> Table:
    before = next((r["open_s"] for r in rows if "remeasure" in r["case"]), None)
    table = Table(title="Start-up in process, pace fast: engine.open() and its first batch")
    for column in ("case", "backend", "open s", "weights s", "avatar s", "backend s", "first batch s",
                   "to first frame s", "open x as before"):  # fmt: skip
        table.add_column(column, justify="left" if column in ("case", "backend") else "right", no_wrap=True)
    for row in rows:
        timings = row["timings"]
        table.add_row(
            row["case"], f"{row['backend']} x{row['streams']}", f"{row['open_s']:.2f}",
            _fmt(timings.get("weights_s"), 2), _fmt(timings.get("avatar_s"), 2), _fmt(timings.get("backend_s"), 2),
            f"{row['first_batch_s']:.2f} ({row['batch']})", f"{row['first_frame_s']:.2f}",
            _fmt(before / row["open_s"] if before else None, 2),
        )  # fmt: skip
    return table


def _process_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Start-up of the anchorcast run process (subprocess, pace fast; warm rows: medians)")
    for column in ("case", "to first frame s", "engine ready s", "total wall s", "issue 16 (before)"):
        table.add_column(column, justify="left" if column == "case" else "right", no_wrap=True)
    for row in rows:
        backend = row.get("backend") or row["case"].rsplit(" ", 1)[-1]
        if row["case"].startswith("first run"):
            before = f"{ISSUE_COLD_S[backend]:.1f} s wall"
        elif row.get("old"):
            before = f"ready in {ISSUE_READY_S[backend]:.1f} s"
        else:
            before = ""
        table.add_row(row["case"], _fmt(row["first_frame_s"], 2), _fmt(row["ready_s"], 2), f"{row['wall_s']:.2f}",
                      before)
    return table


def _end_to_end_table(rows: list[dict[str, Any]], official: dict[str, Any], clip_s: float) -> Table:
    old = {row["backend"]: row["wall_s"] for row in rows if row["old"]}
    by_wall = official["measured"] or clip_s == 10  # else the quoted 10 s figure only compares as frames/s
    official_fps = official["frames"] / official["wall_s"]
    table = Table(title=f"End to end: anchorcast run on the {clip_s:g} s clip at 1280x720, pace fast, warm")
    versus = "x vs official" + ("" if by_wall else " (frames/s)")
    for column in ("run", "wall s", "first frame s", "frames", "frames/s", versus, "x vs old fast pace",
                   "engine batches s", "issue 16 (before)"):  # fmt: skip
        table.add_column(column, justify="left" if column == "run" else "right", no_wrap=True)
    official_label = official["label"] + ("" if official["measured"] else " (quoted, not measured here)")
    table.add_row(official_label, f"{official['wall_s']:.1f}", "", str(official["frames"]),
                  f"{official['frames'] / official['wall_s']:.1f}", "1.00", "", "", "")
    for row in rows:
        reference = old.get(row["backend"])
        issue = f"{ISSUE_OLD_FAST_S[row['backend']]:.1f} s" if row["old"] else ""
        fps = row["frames"] / row["wall_s"]
        faster = official["wall_s"] / row["wall_s"] if by_wall else fps / official_fps
        table.add_row(
            f"{row['label']} (x{row['repeats']})", f"{row['wall_s']:.2f}", _fmt(row["first_frame_s"], 2),
            str(row["frames"]), f"{fps:.1f}", f"{faster:.2f}",
            _fmt(reference / row["wall_s"] if reference else None, 2), _fmt(row["engine_s"], 1), issue,
        )  # fmt: skip
    return table


def _verdicts(engine_rows: list[dict[str, Any]], process_rows: list[dict[str, Any]], warm: list[dict[str, Any]],
              clip_s: float) -> list[str]:
    """Issue 16's done-when checks (for the 10 s clip; other clip lengths say so)."""
    note = "" if clip_s == 10 else f" ({clip_s:g} s clip: the targets are for the 10 s clip)"
    lines = []
    auto = next(row for row in warm if row["backend"] == "auto" and not row["old"])
    lines.append(_verdict("warm end to end, backend auto", auto["wall_s"], TARGETS["end_to_end_s"]) + note)
    warm_open = next(row for row in engine_rows if row["case"] == "warm")
    lines.append(_verdict("warm start-up (engine.open)", warm_open["open_s"], TARGETS["warm_startup_s"]))
    cold = next((row for row in process_rows if row["case"] == "first run (cold), backend auto"), None)
    if cold is not None:
        lines.append(_verdict("first run on a new avatar, backend auto", cold["wall_s"], TARGETS["first_run_s"])
                     + note)
    return lines


def _verdict(what: str, seconds: float, target: float) -> str:
    return f"{what}: {seconds:.1f} s ({'meets' if seconds <= target else 'misses'} the {target:g} s target)"


if __name__ == "__main__":
    sys.exit(main())
