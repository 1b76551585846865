#!/usr/bin/env python3
"""Seconds per training step of each training stage on this machine (CPU unless --device says otherwise).

Each stage is a :data:`STAGES` entry: a function that builds the stage's models and optimiser for a batch size and
returns a zero-argument callable running one full training step (forward, loss, backward, optimiser step) on
random inputs of the stage's shapes (speed does not depend on the values). Add the generator, fine-tune and GAN
stages there as they are written; the table picks them up.

Columns: seconds per step (median of the timed steps after one warm-up step), samples/s, and the batch size.

    python scripts/bench_training.py [--stages syncnet] [--batches 4,8,16,32] [--steps 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

StepRunner = Callable[[], None]
StageBuilder = Callable[[int, str], StepRunner]


def syncnet_stage(batch: int, device: str) -> StepRunner:
    """One SyncNet expert step on ``batch`` samples (``batch / 2`` matched pairs), as `train syncnet` runs it."""
    from anchorcast_plugins.training.syncnet import PairBatch, SyncNetTrainer

    trainer = SyncNetTrainer(device, lr=1e-4, seed=0)
    rng = np.random.default_rng(0)
    pairs = max(1, batch // 2)
    data = PairBatch(
        faces=rng.random((pairs, 15, 48, 96), dtype=np.float32),
        in_sync=rng.standard_normal((pairs, 1, 80, 16), dtype=np.float32),
        off_sync=rng.standard_normal((pairs, 1, 80, 16), dtype=np.float32),
        windows=np.zeros((pairs, 2), np.int64),
    )

    def step() -> None:
        trainer.step(data)

    return step


STAGES: dict[str, StageBuilder] = {
    "syncnet": syncnet_stage,
    # "generator": ..., "finetune": ..., "gan": ...  (add each stage's builder here as it is written)
}


def time_steps(run: StepRunner, steps: int, device: str) -> float:
    """Median seconds of ``steps`` steps after one warm-up step."""
    from anchorcast_plugins.wav2lip.devices import synchronize

    run()
    synchronize(device)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        run()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--batches", default="4,8,16,32", help="comma-separated batch sizes (default 4,8,16,32)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per cell (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mlu or auto")
    args = parser.parse_args()
    from anchorcast_plugins.training.common import training_device

    device, description = training_device(args.device)
    console = Console()
    table = Table(title=f"training step time on {description}, torch {torch.__version__}", header_style="bold")
    for column in ("stage", "batch", "s/step", "samples/s"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage in [s.strip() for s in args.stages.split(",") if s.strip()]:
        if stage not in STAGES:
            parser.error(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
        for batch in [int(b) for b in args.batches.split(",") if b.strip()]:
            try:
                seconds = time_steps(STAGES[stage](batch, device), args.steps, device)
            except (RuntimeError, MemoryError) as error:  # out of memory: report and go on
                table.add_row(stage, str(batch), "failed", str(error).splitlines()[0][:40])
                continue
            table.add_row(stage, str(batch), f"{seconds:.2f}", f"{batch / seconds:.1f}")
            console.print(f"{stage} batch {batch}: {seconds:.2f} s/step", highlight=False)
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
