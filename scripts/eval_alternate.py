#!/usr/bin/env python3
"""Frozen expert against alternating training (``train generator --alternate``): the same synthetic data, seed,
starting weights and number of generator steps, one run of each, and a table of what came out.

1. A synthetic data set (``anchorcast train synth``) in ``WORK/data``;
2. a lip-sync expert trained on it (``anchorcast train syncnet``, ``--expert-steps`` steps) in ``WORK/expert``,
   unless ``--expert`` names one; the generator runs hold out the same clips as the expert did (same seed);
3. ``train generator`` twice from the same random start, ``--steps`` steps each, the sync term on from the start
   (``--sync-on-below inf``; tens of steps never reach the default switch-on loss): ``frozen`` (the expert
   frozen, as without ``--alternate``) and ``alternating`` (``--alternate --disc-every N --disc-lr LR``).

Columns, all on held-out clips at the end of each run:

- ``mouth L1``: mean absolute error of the generated mouth box against the real frames (0-1 scale);
- ``expert sync loss`` / ``expert sync sim``: the frozen ORIGINAL expert's BCE and mean cosine similarity of the
  generated windows with their own audio (what it judges "in sync"; higher similarity is better);
- ``disc accuracy``: the sync judge's off-sync detection accuracy on real held-out pairs (``train syncnet``'s
  ``accuracy``): for ``frozen`` the expert itself, for ``alternating`` the trained sync discriminator;
- ``disc steps``, ``s/step`` (mean, first step left out) and ``wall s`` (the whole run, evaluations included).

    python scripts/eval_alternate.py [--short] [--work DIR] [--steps 40] [--batch 2] [--clips 8] [--seconds 2]
                                     [--expert-steps 200] [--expert WEIGHTS] [--disc-every 1] [--disc-lr 1e-4]
                                     [--json table.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

SHORT = {"clips": 3, "seconds": 1.2, "expert_steps": 4, "expert_batch": 4, "steps": 2, "batch": 1,
         "eval_windows": 2, "eval_pairs": 6, "eval_every": 100, "heldout": 0.34}
"""``--short`` (CI): enough to run every part once, not to learn anything."""


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="folder for the data and runs (default: temporary)")
    parser.add_argument("--short", action="store_true", help="a tiny run of every part (CI)")
    parser.add_argument("--clips", type=int, default=8, help="synthetic clips (8)")
    parser.add_argument("--seconds", type=float, default=2.0, help="seconds per clip (2.0)")
    parser.add_argument("--expert", default=None, help="a trained expert to use instead of training one")
    parser.add_argument("--expert-steps", type=int, default=200, help="train syncnet steps (200)")
    parser.add_argument("--expert-batch", type=int, default=8, help="train syncnet batch (8)")
    parser.add_argument("--steps", type=int, default=40, help="generator steps per arm (40)")
    parser.add_argument("--batch", type=int, default=2, help="generator batch (2)")
    parser.add_argument("--eval-every", type=int, default=20, help="held-out evaluation every N steps (20)")
    parser.add_argument("--eval-windows", type=int, default=16, help="held-out generator windows (16)")
    parser.add_argument("--eval-pairs", type=int, default=32, help="held-out real pairs for the accuracy (32)")
    parser.add_argument("--disc-every", type=int, default=1, help="generator steps per discriminator step (1)")
    parser.add_argument("--disc-lr", type=float, default=1e-4, help="the sync discriminator's learning rate (1e-4)")
    parser.add_argument("--disc-floor", type=float, default=0.6, help="the collapse floor (0.6)")
    parser.add_argument("--lr", type=float, default=1e-4, help="the generator's learning rate (1e-4)")
    parser.add_argument("--heldout", type=float, default=0.25, help="fraction of clips held out (0.25)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data, the split and the runs (0)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mlu or auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)
    if args.short:
        for name, value in SHORT.items():
            setattr(args, name, value)
    return args


def train_expert(args: argparse.Namespace, data: Path, work: Path, console: Console) -> tuple[Path, dict[str, Any]]:
    from anchorcast_plugins.engines.wav2lip.training.syncnet import SyncNetConfig, train_syncnet

    out = work / "expert"
    metrics = train_syncnet(SyncNetConfig(data=str(data), out=str(out), steps=args.expert_steps,
                                          batch=args.expert_batch, lr=5e-4, eval_every=max(args.expert_steps, 1),
                                          eval_pairs=args.eval_pairs, save_every=max(args.expert_steps, 1),
                                          heldout=args.heldout, seed=args.seed, device=args.device), console)
    return out / "syncnet.safetensors", metrics.get("final", {})


def run_arm(args: argparse.Namespace, arm: str, data: Path, expert: Path, work: Path,
            console: Console) -> dict[str, Any]:
    from anchorcast_plugins.engines.wav2lip.training.generator import GeneratorConfig, train_generator

    alternate = arm == "alternating"
    config = GeneratorConfig(out=str(work / arm), stage="generator", data=str(data), expert=str(expert),
                             steps=args.steps, batch=args.batch, lr=args.lr, sync_on_below=float("inf"),
                             eval_every=args.eval_every, eval_windows=args.eval_windows, eval_pairs=args.eval_pairs,
                             save_every=max(args.steps, 1), heldout=args.heldout, seed=args.seed, device=args.device, alternate=alternate,
                             disc_every=args.disc_every, disc_lr=args.disc_lr, disc_floor=args.disc_floor)
    started = time.perf_counter()
    metrics = train_generator(config, console)
    seconds = time.perf_counter() - started
    final = metrics["final"]
    return {"arm": arm, "steps": args.steps, "disc_steps": metrics.get("alternation", {}).get("disc_steps", 0),
            "mouth_l1": final["mouth_l1"], "initial_mouth_l1": metrics["initial"]["mouth_l1"],
            "expert_sync_loss": final["eval_sync"], "expert_sync_similarity": final["eval_sync_similarity"],
            "disc_accuracy": final.get("disc_accuracy"), "seconds_per_step": metrics.get("seconds_per_step"),
            "seconds": round(seconds, 1), "paused_at": metrics.get("alternation", {}).get("paused_at"),
            "initial_disc_accuracy": metrics["evals"][0].get("disc_accuracy")}


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    console = Console(stderr=True)
    work_dir = tempfile.TemporaryDirectory() if args.work is None else None
    work = Path(work_dir.name) if work_dir else args.work.expanduser()
    work.mkdir(parents=True, exist_ok=True)
    try:
        from anchorcast_plugins.engines.wav2lip.training.dataset import Dataset
        from anchorcast_plugins.engines.wav2lip.training.synth import make_synthetic_dataset

        data = work / "data"
        started = time.perf_counter()
        if (data / "dataset.json").is_file():
            Dataset.load(data)
        else:
            make_synthetic_dataset(data, clips=args.clips, seconds=args.seconds, seed=args.seed, speakers=1)
        console.print(f"data: {args.clips} synthetic clips of {args.seconds:g} s in {data} "
                      f"({time.perf_counter() - started:.0f} s)", highlight=False)
        expert_summary: dict[str, Any] = {}
        if args.expert:
            expert = Path(args.expert).expanduser()
        else:
            started = time.perf_counter()
            expert, expert_summary = train_expert(args, data, work, console)
            expert_summary["seconds"] = round(time.perf_counter() - started, 1)
        rows = [run_arm(args, arm, data, expert, work, console) for arm in ("frozen", "alternating")]
        # the frozen arm's judge is the expert: its accuracy is the alternating run's first evaluation, on the same
        # held-out pairs before any discriminator step
        rows[0]["disc_accuracy"] = rows[1]["initial_disc_accuracy"]
        print_table(rows, args)
        if args.json:
            args.json.write_text(json.dumps({"arms": rows, "expert": expert_summary, "options": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}, indent=1) + "\n")
    finally:
        if work_dir is not None:
            work_dir.cleanup()
    return 0


def print_table(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    console = Console(width=None if sys.stdout.isatty() else 150)
    table = Table(title=f"frozen expert vs alternating: {args.steps} generator steps of batch {args.batch}, "
                        f"{args.clips} synthetic clips, seed {args.seed}, disc every {args.disc_every}, "
                        f"disc lr {args.disc_lr:g}", header_style="bold")
    columns = ("arm", "disc steps", "mouth L1 (start)", "mouth L1", "expert sync loss", "expert sync sim",
               "disc accuracy", "s/step", "wall s")
    for column in columns:
        table.add_column(column, justify="left" if column == "arm" else "right")
    for row in rows:
        table.add_row(row["arm"], str(row["disc_steps"]), f"{row['initial_mouth_l1']:.4f}", f"{row['mouth_l1']:.4f}",
                      f"{row['expert_sync_loss']:.4f}", f"{row['expert_sync_similarity']:.4f}",
                      "-" if row["disc_accuracy"] is None else f"{row['disc_accuracy']:.3f}",
                      f"{row['seconds_per_step']:.2f}", f"{row['seconds']:.0f}")
    console.print(table)


if __name__ == "__main__":
    raise SystemExit(main())
