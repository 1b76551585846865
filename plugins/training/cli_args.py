"""Command-line arguments of ``anchorcast train prepare`` and ``anchorcast train synth`` (argparse only, so
listing commands stays fast; the commands themselves live in :mod:`.prepare` and :mod:`.synth`)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_MIN_SECONDS = 1.0
DEFAULT_MAX_SECONDS = 10.0
DEFAULT_MIN_RESOLUTION = 160
DEFAULT_MIN_FACE = 48


def configure_prepare(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("videos", nargs="+", type=Path, metavar="VIDEO",
                        help="talking-face videos with sound; a folder is searched for videos")
    parser.add_argument("--out", type=Path, required=True, metavar="DATASET", help="data set folder to write")
    parser.add_argument("--speaker", default=None,
                        help="speaker of every video (default: each video's parent folder name)")
    parser.add_argument("--min-seconds", type=float, default=DEFAULT_MIN_SECONDS,
                        help=f"drop clips shorter than this (default {DEFAULT_MIN_SECONDS})")
    parser.add_argument("--max-seconds", type=float, default=DEFAULT_MAX_SECONDS,
                        help=f"split longer stretches into clips of at most this (default {DEFAULT_MAX_SECONDS})")
    parser.add_argument("--min-resolution", type=int, default=DEFAULT_MIN_RESOLUTION, metavar="PIXELS",
                        help=f"drop videos whose shorter side is below this (default {DEFAULT_MIN_RESOLUTION})")
    parser.add_argument("--min-face", type=int, default=DEFAULT_MIN_FACE, metavar="PIXELS",
                        help=f"frames whose face is narrower than this count as lost (default {DEFAULT_MIN_FACE})")


def configure_synth(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="DATASET", help="data set folder to write")
    parser.add_argument("--clips", type=int, default=12, help="number of clips (default 12)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each clip (default 3.0)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the sentences (default 0)")
    parser.add_argument("--speakers", type=int, default=2, choices=(1, 2),
                        help="1: the astronaut; 2: also a mirrored, recoloured portrait with another voice")


def configure_train(parser: argparse.ArgumentParser) -> None:
    """``anchorcast train ACTION``: ``prepare`` and ``synth`` so far (the training stages add theirs)."""
    actions = parser.add_subparsers(dest="train_action", metavar="ACTION", required=True)
    configure_prepare(actions.add_parser(
        "prepare", help="talking-face videos -> a training data set",
        description="Decode talking-face videos, resample them to 25 fps and 16 kHz mono, crop the face of every "
                    "frame to 96x96 and store clips of bounded length, grouped by speaker. Reports what it drops."))
    configure_synth(actions.add_parser(
        "synth", help="a synthetic talking-face data set with known ground truth (no downloads)",
        description="Render the bundled portrait reading sentences with the eSpeak NG voice (the viseme engine, "
                    "mouth driven by phoneme timings) and store it as a training data set."))


def run_train(host: object, args: argparse.Namespace) -> int:
    """Runs the ``anchorcast train`` action parsed by :func:`configure_train` (imports it only now)."""
    if args.train_action == "prepare":
        from anchorcast_plugins.training.prepare import run_prepare

        return run_prepare(host, args)
    if args.train_action == "synth":
        from anchorcast_plugins.training.synth import run_synth

        return run_synth(host, args)
    from anchorcast.errors import InputError

    raise InputError(f"unknown train action {args.train_action!r}", hint="use `prepare` or `synth`")
