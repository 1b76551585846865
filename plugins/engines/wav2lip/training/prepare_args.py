"""Command-line arguments of ``anchorcast train prepare`` (argparse only, so listing commands stays fast; the
command itself lives in :mod:`.prepare`)."""

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
    parser.add_argument("--expert", default=None, metavar="WEIGHTS",
                        help="a lip-sync expert (weights name or file of kind syncnet): drop clips it finds off-sync")
    parser.add_argument("--max-offset", type=int, default=2, metavar="FRAMES",
                        help="with --expert: drop a clip whose best audio offset is further than this (default 2)")
