#!/usr/bin/env python3
"""Seconds per training step of each training stage on this machine (CPU unless --device says otherwise).

Each stage is a :data:`STAGES` entry: a function ``(batch, device, bf16)`` that builds the stage's models and
optimisers and returns a zero-argument callable running one full training step (forward, loss, backward, optimiser
step) on random inputs of the stage's shapes (speed does not depend on the values), with its batch unit and
default batch sizes. A new stage added there is picked up by the table.

- ``syncnet``: one ``train syncnet`` step; the batch counts samples, half of them matched pairs' in-sync and half
  their off-sync audio (``pairs x2 samples``), so the rate is samples/s.
- ``generator``: one ``train generator`` step (sync term on, so the frozen expert is back-propagated through);
  the batch counts five-frame windows, so 1 window = 5 generated frames and the rate is frames/s.
- ``finetune``: the same with only the face encoder trained (``train finetune``).
- ``gan``: the same with the visual-quality discriminator and its own step (``train gan``).
- ``alternate``: a ``train generator --alternate`` step with ``--disc-every 1``: the generator step against the
  sync discriminator, then the sync discriminator's step (the generator's output for a batch of the same size, in
  eval mode, and real pairs of as many windows: 3x the batch in lower-half windows).

The expert is a SyncNet with random weights (the timing does not depend on them). Default batch sizes are per
stage (syncnet 4,8,16,32; the generator-type stages, several seconds a step on a CPU, 1,2,4); ``--batches``
replaces them for every stage.

Columns: seconds per step (median of the timed steps after one warm-up step) and the rate (samples or frames
per second); with ``--bf16`` also the same under bfloat16 autocast and the bf16/fp32 speed ratio (fp32 s/step
over bf16 s/step, both measured in this run: above 1 means bf16 is faster).

    python scripts/bench_training.py [--stages syncnet,generator,finetune,gan,alternate] [--batches 1,2,4] [--steps 3]
                                     [--device cpu] [--bf16]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

StepRunner = Callable[[], None]
StageBuilder = Callable[[int, str, bool], StepRunner]

WINDOW_FRAMES = 5
"""Frames in one generator window (the reference training's ``T = 5``)."""


@dataclass(frozen=True)
class Stage:
    """A benchmarked training stage: its builder, what its batch counts and how that turns into a rate."""

    build: StageBuilder
    unit: str
    """What one batch element is, for the table."""
    rate_unit: str
    """``samples/s`` or ``frames/s``."""
    items: Callable[[int], int]
    """Samples or frames one step of a batch size processes (5 frames per generator window)."""
    batches: tuple[int, ...] = (4, 8, 16, 32)
    """Default batch sizes."""


def syncnet_stage(batch: int, device: str, bf16: bool = False) -> StepRunner:
    """One SyncNet expert step on ``batch`` samples (``batch / 2`` matched pairs), as `train syncnet` runs it."""
    from anchorcast_plugins.engines.wav2lip.training.syncnet import PairBatch, SyncNetTrainer

    trainer = SyncNetTrainer(device, lr=1e-4, seed=0, bf16=bf16)
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


def window_batch(batch: int) -> Any:
    """A random generator batch of ``batch`` five-frame windows (faces and targets in [0, 1], mels normal)."""
    from anchorcast_plugins.engines.wav2lip.training.windows import WindowBatch

    rng = np.random.default_rng(0)
    return WindowBatch(
        faces=rng.random((batch, 6, WINDOW_FRAMES, 96, 96), dtype=np.float32),
        mels=rng.standard_normal((batch, WINDOW_FRAMES, 1, 80, 16), dtype=np.float32),
        sync_mels=rng.standard_normal((batch, 1, 80, 16), dtype=np.float32),
        targets=rng.random((batch, 3, WINDOW_FRAMES, 96, 96), dtype=np.float32),
        windows=np.zeros((batch, 3), np.int64),
    )


def generator_runner(batch: int, device: str, bf16: bool, *, disc: float = 0.0, **options: Any) -> StepRunner:
    """One :class:`GeneratorTrainer` step with the sync term on, against a random-weight expert."""
    from anchorcast_plugins.engines.wav2lip.models import SyncNet
    from anchorcast_plugins.engines.wav2lip.training.generator_trainer import GeneratorTrainer, LossWeights

    expert = SyncNet().to(device)
    trainer = GeneratorTrainer(expert, device, lr=1e-4, seed=0, bf16=bf16, **options)
    data, weights = window_batch(batch), LossWeights(disc=disc)

    def step() -> None:
        trainer.step(data, weights, sync_on=True)

    return step


def generator_stage(batch: int, device: str, bf16: bool = False) -> StepRunner:
    """One `train generator` step on ``batch`` five-frame windows: all of the generator trained."""
    return generator_runner(batch, device, bf16)


def finetune_stage(batch: int, device: str, bf16: bool = False) -> StepRunner:
    """One `train finetune` step: only the face encoder trained (audio encoder and face decoder frozen)."""
    return generator_runner(batch, device, bf16, trainable="face_encoder")


def gan_stage(batch: int, device: str, bf16: bool = False) -> StepRunner:
    """One `train gan` step: the generator with the adversarial term, then one discriminator step."""
    return generator_runner(batch, device, bf16, disc=0.07, discriminator=True, betas=(0.5, 0.999))


def alternate_stage(batch: int, device: str, bf16: bool = False) -> StepRunner:
    """One `train generator --alternate` step (disc every 1): the generator step judged by the sync
    discriminator, then the discriminator's step on real pairs and the generator's output with shifted audio."""
    from anchorcast_plugins.engines.wav2lip.models import SyncNet
    from anchorcast_plugins.engines.wav2lip.training.alternate import SyncDiscriminator
    from anchorcast_plugins.engines.wav2lip.training.generator_trainer import GeneratorTrainer, LossWeights
    from anchorcast_plugins.engines.wav2lip.training.losses import frames_to_windows
    from anchorcast_plugins.engines.wav2lip.training.syncnet import PairBatch

    expert = SyncNet().to(device)
    trainer = GeneratorTrainer(expert, device, lr=1e-4, seed=0, bf16=bf16)
    disc = SyncDiscriminator(expert, device, lr=1e-4, bf16=bf16)
    trainer.judge = disc.model
    data, weights = window_batch(batch), LossWeights()
    rng = np.random.default_rng(1)
    real = PairBatch(faces=rng.random((batch, 15, 48, 96), dtype=np.float32),
                     in_sync=rng.standard_normal((batch, 1, 80, 16), dtype=np.float32),
                     off_sync=rng.standard_normal((batch, 1, 80, 16), dtype=np.float32),
                     windows=np.zeros((batch, 2), np.int64))

    def step() -> None:
        trainer.step(data, weights, sync_on=True)
        generated = trainer.predict(data)
        disc.train_step(real, frames_to_windows(generated), data.sync_mels)

    return step


def syncnet_samples(batch: int) -> int:
    return 2 * max(1, batch // 2)


def window_frames(batch: int) -> int:
    return WINDOW_FRAMES * batch


GENERATOR_BATCHES = (1, 2, 4)
WINDOWS = "5-frame windows"

STAGES: dict[str, Stage] = {
    "syncnet": Stage(syncnet_stage, "pairs x2 samples", "samples/s", syncnet_samples),
    "generator": Stage(generator_stage, WINDOWS, "frames/s", window_frames, GENERATOR_BATCHES),
    "finetune": Stage(finetune_stage, WINDOWS, "frames/s", window_frames, GENERATOR_BATCHES),
    "gan": Stage(gan_stage, WINDOWS, "frames/s", window_frames, GENERATOR_BATCHES),
    "alternate": Stage(alternate_stage, WINDOWS, "frames/s", window_frames, GENERATOR_BATCHES),
}


def time_steps(run: StepRunner, steps: int, device: str) -> float:
    """Median seconds of ``steps`` steps after one warm-up step."""
    from anchorcast_plugins.engines.wav2lip.devices import synchronize

    run()
    synchronize(device)
    seconds = []
    for _ in range(steps):
        started = time.perf_counter()
        run()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def measure(stage: Stage, batch: int, device: str, bf16: bool, steps: int) -> float | str:
    """Seconds per step, or the first line of the error (out of memory, no bf16 kernels) when it fails."""
    try:
        return time_steps(stage.build(batch, device, bf16), steps, device)
    except (RuntimeError, MemoryError) as error:
        return str(error).splitlines()[0][:40] if str(error) else type(error).__name__
    finally:
        gc.collect()


def batch_list(text: str) -> tuple[int, ...]:
    values = tuple(int(b) for b in text.split(",") if b.strip())
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"batch sizes must be positive integers, got {text!r}")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of {', '.join(STAGES)}")
    parser.add_argument("--batches", type=batch_list, default=None,
                        help="comma-separated batch sizes for every stage (default per stage: syncnet 4,8,16,32; "
                             "generator, finetune, gan and alternate 1,2,4)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per cell (default 3)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mlu or auto")
    parser.add_argument("--bf16", action="store_true",
                        help="also time each cell under bfloat16 autocast and show the bf16/fp32 speed ratio")
    args = parser.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    for stage in stages:
        if stage not in STAGES:
            parser.error(f"unknown stage {stage!r}; known: {', '.join(STAGES)}")
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    from anchorcast_plugins.engines.wav2lip.training.common import training_device

    device, description = training_device(args.device)
    if args.bf16:
        description += " vs bfloat16 autocast"
    console = Console(width=None if sys.stdout.isatty() else 150)
    table = Table(title=f"training step time on {description}, torch {torch.__version__}", header_style="bold")
    columns = ["stage", "batch", "unit", "fp32 s/step", "fp32 rate"]
    if args.bf16:
        columns += ["bf16 s/step", "bf16 rate", "bf16/fp32 speed"]
    for column in columns:
        table.add_column(column, justify="left" if column in ("stage", "unit") else "right")
    precisions = (False, True) if args.bf16 else (False,)
    for name in stages:
        stage = STAGES[name]
        for batch in args.batches or stage.batches:
            row = [name, str(batch), stage.unit]
            seconds: dict[bool, float | str] = {}
            for bf16 in precisions:
                result = measure(stage, batch, device, bf16, args.steps)
                seconds[bf16] = result
                label = "bf16" if bf16 else "fp32"
                if isinstance(result, str):
                    row += ["failed", result]
                    console.print(f"{name} batch {batch} {label}: failed: {result}", highlight=False)
                else:
                    rate = stage.items(batch) / result
                    row += [f"{result:.2f}", f"{rate:.1f} {stage.rate_unit}"]
                    console.print(f"{name} batch {batch} {label}: {result:.2f} s/step", highlight=False)
            if args.bf16:
                fp32, bf16_seconds = seconds[False], seconds[True]
                if isinstance(fp32, float) and isinstance(bf16_seconds, float):
                    row.append(f"{fp32 / bf16_seconds:.2f}x")
                else:
                    row.append("-")
            table.add_row(*row)
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
