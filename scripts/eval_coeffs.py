#!/usr/bin/env python3
"""The coefficient model against the teacher on held-out speech, with the viseme engine driven by audio alone as
the baseline, in the same run on the same audio: one table.

Rows: the teacher set's held-out sentences read by the training voices (piper; eSpeak English; eSpeak Mandarin)
and by the held-out voice (English, Mandarin). Per row and source (the model; the viseme engine's audio-only
shape through the teacher's pose table; the teacher itself as the reference):

- mouth L1: mean |source - teacher| over frames and the 25 mouth expressions (``jaw*``, ``mouth*``);
- jaw L1: the same for jawOpen alone;
- r(jaw, env): the correlation of jawOpen with the speech envelope (RMS per 25 fps frame) at lag 0, and the best
  lag in frames within +-5 (positive: the mouth late) with its correlation.

    python scripts/eval_coeffs.py --data TEACHER_SET [--weights plugins/engines/face3d/assets/coeffs.safetensors]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from anchorcast.errors import InputError
from anchorcast_plugins.engines.face3d.coeff_model import CoefficientModel
from anchorcast_plugins.engines.face3d.training_data import Item, load_dataset
from anchorcast_plugins.engines.face3d.training_eval import compare

SHIPPED = (Path(__file__).resolve().parent.parent / "plugins" / "engines" / "face3d" / "assets"
           / "coeffs.safetensors")

ROWS: tuple[tuple[str, Callable[[Item], bool]], ...] = (
    ("held-out sentences, piper", lambda i: i.split == "heldout-sentence" and i.voice.startswith("piper")),
    ("held-out sentences, eSpeak en", lambda i: i.split == "heldout-sentence" and i.voice.startswith("espeak")
     and i.language == "en"),
    ("held-out sentences, eSpeak zh", lambda i: i.split == "heldout-sentence" and i.language == "zh"),
    ("held-out voice, en", lambda i: i.split == "heldout-voice" and i.language == "en"),
    ("held-out voice, zh", lambda i: i.split == "heldout-voice" and i.language == "zh"),
    ("all held out", lambda i: True),
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="teacher data set folder (train coeffs-data)")
    parser.add_argument("--weights", type=Path, default=SHIPPED, help="coefficient-model weights (the shipped)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1)")
    args = parser.parse_args()
    console = Console(width=150)
    torch.set_num_threads(args.threads)
    try:
        model = CoefficientModel.load(args.weights)
        items = load_dataset(args.data, ("heldout-sentence", "heldout-voice"))
    except InputError as error:
        console.print(f"[red]error:[/] {error}", highlight=False)
        return 1
    started = time.perf_counter()
    table = Table(title=f"coefficient model {args.weights.name} vs the viseme engine (audio) against the teacher",
                  header_style="bold")
    for column in ("held out", "utterances", "source", "mouth L1", "jaw L1", "r(jaw, env) lag 0", "best lag (r)"):
        table.add_column(column, justify="left" if column in ("held out", "source") else "right")
    for title, chosen in ROWS:
        subset = [item for item in items if chosen(item)]
        if not subset:
            continue
        figures = compare(model, subset)
        for index, (source, result) in enumerate(figures.items()):
            table.add_row(title if index == 0 else "", str(len(subset)) if index == 0 else "", source,
                          f"{result.mouth_l1:.4f}", f"{result.jaw_l1:.4f}", f"{result.envelope_correlation:.3f}",
                          f"{result.best_lag:+d} ({result.best_correlation:.3f})",
                          end_section=index == len(figures) - 1)
    console.print(table)
    console.print(f"{len(items)} held-out utterances from {args.data}; {time.perf_counter() - started:.0f} s",
                  highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
