#!/usr/bin/env python3
"""How well a trained lip-sync expert tells in-sync audio from audio shifted by ``--shift-min`` or more frames, on
held-out clips of a data set: one table, two rows.

- ``windows``: single five-frame windows, each with its own audio and the audio of a start at least
  ``--shift-min`` frames away (``--pairs`` matched pairs), as ``train syncnet`` evaluates during training;
- ``clips``: whole clips, each in sync against itself with all its audio shifted by 1, 2 and 3 times
  ``--shift-min`` frames either way, scored by the mean window similarity (as ``prepare --expert`` judges clips).

Accuracy classifies both members of every pair with a similarity threshold chosen on training clips (so the
classes weigh equally and nothing held out tunes it); pair accuracy is the fraction of pairs whose in-sync member
scores higher. Held-out clips are the run's (``--run``, read from its metrics.json; default: the folder of
``--expert`` when it holds one) or else the data set's own split by ``--heldout`` and ``--seed``.

    python scripts/eval_expert.py --expert RUN/syncnet.safetensors --data DATASET [--pairs 1024] [--clips 64]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.training.dataset import Dataset
from anchorcast_plugins.engines.wav2lip.training.syncnet import (
    PairSampler,
    SyncNetTrainer,
    evaluate,
    evaluate_clips,
    some_clips,
)


def split(dataset: Dataset, run: Path | None, heldout: float, seed: int) -> tuple[Dataset, Dataset, str]:
    metrics = run / "metrics.json" if run is not None else None
    if metrics is not None and metrics.is_file():
        ids = json.loads(metrics.read_text()).get("data", {}).get("heldout_ids")
        if ids:
            held = set(ids)
            return (dataset.subset([c.id for c in dataset.clips if c.id not in held]), dataset.subset(ids),
                    f"held out by run {run}")
    train, held_out = dataset.split(heldout, seed=seed)
    return train, held_out, f"held out by --heldout {heldout} --seed {seed}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--expert", required=True, help="syncnet weights (file or store name)")
    parser.add_argument("--data", type=Path, required=True, help="data set folder")
    parser.add_argument("--run", type=Path, default=None, help="training run whose held-out clips to use")
    parser.add_argument("--heldout", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shift-min", type=int, default=5)
    parser.add_argument("--pairs", type=int, default=1024, help="held-out window pairs (1024)")
    parser.add_argument("--clips", type=int, default=64, help="held-out clips (64)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    console = Console(stderr=True)
    try:
        from anchorcast_plugins.engines.wav2lip.training.generator import load_expert

        expert = load_expert(args.expert, args.device)
        dataset = Dataset.load(args.data)
    except InputError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        return 2
    run = args.run or (Path(args.expert).parent if Path(args.expert).is_file() else None)
    train, held_out, how = split(dataset, run, args.heldout, args.seed)
    held_clips = some_clips(held_out, args.clips, args.seed + 1)
    calibration_clips = some_clips(train, args.clips, args.seed + 2)

    trainer = SyncNetTrainer(args.device)
    trainer.model = expert
    started = time.perf_counter()
    windows = evaluate(trainer, PairSampler(held_out, args.shift_min).fixed(args.seed + 1, args.pairs),
                       PairSampler(train, args.shift_min).fixed(args.seed + 2, args.pairs))
    clips = evaluate_clips(expert, held_clips, calibration_clips, args.shift_min, args.device)
    took = time.perf_counter() - started

    table = Table(title=f"expert {args.expert} on {len(held_out)} held-out clips of {dataset.folder} ({how})",
                  header_style="bold")
    shifts = list(clips.get("clip_accuracy_by_shift", {}))
    for column in ["level", "pairs", "accuracy", "pair accuracy", *[f"acc. shift ±{s}" for s in shifts]]:
        table.add_column(column, justify="left" if column == "level" else "right")
    table.add_row(f"windows (shift >= {args.shift_min})", str(windows["pairs"]), f"{windows['accuracy']:.1%}",
                  f"{windows['pair_accuracy']:.1%}", *["-"] * len(shifts))
    if clips:
        table.add_row(f"clips ({clips['clips']})", str(clips["clip_pairs"]), f"{clips['clip_accuracy']:.1%}",
                      f"{clips['clip_pair_accuracy']:.1%}",
                      *[f"{clips['clip_accuracy_by_shift'][s]:.1%}" for s in shifts])
    Console(width=None if sys.stdout.isatty() else 150).print(table)
    console.print(f"eval loss {windows['eval_loss']:.4f} on windows; took {took:.0f} s", highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
