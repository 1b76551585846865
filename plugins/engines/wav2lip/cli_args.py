"""Arguments of the Wav2Lip plugin's commands. Light on purpose: every ``anchorcast`` invocation builds its parser
with them, so nothing here may import torch, OpenCV or PyAV (the commands' run functions do)."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure_weights(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``anchorcast weights``: ``import FILE [--name NAME] [--overwrite]``, ``list`` and
    ``bench NAME [--avatar PATH] [--face-box X,Y,W,H] [--backend-batch N] ...``."""
    actions = parser.add_subparsers(dest="weights_action", metavar="ACTION", required=True)
    add = actions.add_parser("import", help="verify a Wav2Lip checkpoint and store a safetensors copy",
                             description="Verify a Wav2Lip checkpoint (any public container: .pth, TorchScript "
                             ".pt, .safetensors) and store a safetensors copy in the weights folder.")
    add.add_argument("file", type=Path, help="the checkpoint file")
    add.add_argument("--name", help="store name (default: from the file name); profiles use it as `weights`")
    add.add_argument("--overwrite", action="store_true", help="replace other weights stored under this name")
    actions.add_parser("list", help="list the stored weights")
    bench = actions.add_parser(
        "bench", help="measure the backends for weights and an avatar now, and store the choice runs use",
        description="Measure every candidate backend (speed, and error against fp32) for the weights NAME and an "
                    "avatar, and store the choice with the weights: runs with backend = \"auto\" and the same "
                    "weights, avatar, machine and settings then start without measuring.")
    bench.add_argument("name", metavar="NAME", help="stored weights name (or a checkpoint path)")
    bench.add_argument("--avatar", type=Path, metavar="PATH",
                       help="a portrait, a video or an avatar folder (default: the bundled portrait)")
    bench.add_argument("--face-box", metavar="X,Y,W,H", help="the face box, as the profile's engine.face_box")
    bench.add_argument("--backend-batch", type=int, default=2, metavar="N",
                       help="batch size the backends are timed at (default: 2, as runs use)")
    bench.add_argument("--inference-streams", type=int, default=None, metavar="N",
                       help="OpenVINO inference streams, as the run's (default: both 1, as live runs use, and one "
                            "per core up to 4, as pace = \"fast\" runs use)")
    bench.add_argument("--device", default="auto", help="auto, cpu, cuda[:N] or mlu[:N] (default: auto)")
    bench.add_argument("--fps", type=float, default=25.0, metavar="N",
                       help="the stream's frame rate, which a video avatar is prepared at (default: 25)")

def configure_avatar(parser: argparse.ArgumentParser) -> None:
    """Adds ``prepare SOURCE [--out DIR] [--face-box x,y,w,h] [--fps N] [--max-seconds S]``."""
    actions = parser.add_subparsers(dest="avatar_action", metavar="ACTION", required=True)
    prepare = actions.add_parser(
        "prepare", help="detect the face in an image or video once and store an avatar folder",
        description="Prepare an avatar folder (frames, face boxes, crops, paste mask) that runs reuse. "
                    "Without --out it goes where a profile naming SOURCE looks for it.")
    prepare.add_argument("source", type=Path, metavar="SOURCE", help="a portrait image (png, jpg) or a video")
    prepare.add_argument("--out", type=Path, metavar="DIR", help="the avatar folder to write")
    prepare.add_argument("--face-box", metavar="X,Y,W,H",
                         help="a fixed face box for every frame (skips detection)")
    prepare.add_argument("--fps", type=float, metavar="N", help="resample a video to N frames per second")
    prepare.add_argument("--max-seconds", type=float, metavar="S", help="use only the first S seconds of a video")
