"""``anchorcast train generator|finetune|gan`` on the command line: options to config, the run, its summary."""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping
from typing import Any

from rich.console import Console
from rich.table import Table

from anchorcast_plugins.engines.wav2lip.training.common import TrainingInterrupted
from anchorcast_plugins.engines.wav2lip.training.generator import GeneratorConfig, train_generator


def config_from_args(args: argparse.Namespace, stage: str) -> GeneratorConfig:
    names = GeneratorConfig.__dataclass_fields__
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    for name in ("data", "out", "expert", "init", "video"):
        value = getattr(args, name, None)
        values[name] = None if value is None else str(value)
    values["stage"] = stage
    return GeneratorConfig(**values)


def run_generator(host: Any, args: argparse.Namespace, stage: str = "generator") -> int:
    """Runs ``anchorcast train generator|finetune|gan``; 130 when interrupted (the checkpoint is saved)."""
    del host
    console = Console(stderr=True)
    config = config_from_args(args, stage)
    started = time.perf_counter()
    try:
        metrics = train_generator(config, console)
    except (TrainingInterrupted, KeyboardInterrupt):
        console.print(f"[yellow]interrupted[/]; the last checkpoint in {config.out} stands; continue with the same "
                      "command and --resume", highlight=False)
        return 130
    print_summary(console, f"{stage} run {config.out}", metrics)
    files = ", ".join(["generator.safetensors"] + (["discriminator.safetensors"] if stage == "gan" else [])
                      + (["syncnet.safetensors (the sync discriminator as trained)"] if config.alternate else []))
    console.print(f"weights: {files} in {config.out} (use it as a profile's weights, or import it with "
                  f"`anchorcast weights import`); {metrics.get('seconds_per_step', 0):.2f} s/step; took "
                  f"{time.perf_counter() - started:.0f} s", highlight=False)
    return 0


def print_summary(console: Console, title: str, metrics: Mapping[str, Any]) -> None:
    """Initial and final held-out figures of a generator-type run."""
    table = Table(title=title, header_style="bold")
    for column in ("held out", "before", "after"):
        table.add_column(column, justify="left" if column == "held out" else "right")
    initial, final = metrics.get("initial", {}), metrics.get("final", {})
    labels = {"eval_l1": "L1", "eval_sync": "sync loss (expert)", "eval_sync_similarity": "sync similarity (expert)",
              "eval_sync_disc": "sync loss (sync discriminator)", "disc_accuracy": "sync discriminator accuracy",
              "eval_perceptual": "perceptual",
              "eval_msssim": "1 - MS-SSIM", "mouth_l1": "mouth L1", "input_mouth_l1": "mouth L1 of unchanged input",
              "mouth_jitter": "mouth jitter", "real_mouth_motion": "real mouth motion"}
    for key, label in labels.items():
        if key in final:
            before = initial.get(key)
            table.add_row(label, "-" if before is None else f"{before:.4f}", f"{final[key]:.4f}")
    console.print(table)
