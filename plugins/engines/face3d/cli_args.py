"""Arguments of ``anchorcast facemodel``. Light on purpose: every ``anchorcast`` invocation builds its parser with
them, so nothing here imports numpy or pygltflib (the commands in :mod:`.commands` do)."""

from __future__ import annotations

import argparse
from pathlib import Path

DEFAULT_IMPORT_OUT = Path("face_model.npz")


def configure_facemodel(parser: argparse.ArgumentParser) -> None:
    """Adds ``import DIR [--out PATH] [--identities N]`` and ``export-glb OUT.glb [--asset PATH] [--sparse]``."""
    actions = parser.add_subparsers(dest="facemodel_action", metavar="ACTION", required=True)
    add = actions.add_parser(
        "import", help="make a compact face-model asset from an ICT-FaceKit folder",
        description="Read an unpacked ICT-FaceKit folder (FaceXModel/ with the neutral OBJ, the expression and "
                    "identity OBJs and vertex_indices.json) and write a compact .npz asset: face, head and neck, "
                    "mouth, gums and tongue, teeth and eyes, triangulated, float16 deltas, UVs.")
    add.add_argument("folder", type=Path, metavar="DIR", help="the ICT-FaceKit folder (or its FaceXModel/)")
    add.add_argument("--out", type=Path, metavar="PATH", default=DEFAULT_IMPORT_OUT,
                     help=f"the asset to write (default: {DEFAULT_IMPORT_OUT})")
    add.add_argument("--identities", type=_count, metavar="N",
                     help="keep only the first N identity modes (default: all the folder has)")
    export = actions.add_parser(
        "export-glb", help="write the head as glTF 2.0 with its expressions as named morph targets",
        description="Write a face-model asset as a binary glTF 2.0 file: the neutral head, one morph target per "
                    "expression named in mesh.extras.targetNames (ARKit names), for three.js and avatar tools.")
    export.add_argument("out", type=Path, metavar="OUT.glb", help="the .glb file to write")
    export.add_argument("--asset", type=Path, metavar="PATH",
                        help="a face-model asset (default: the bundled ICT-FaceKit head)")
    export.add_argument("--sparse", action="store_true",
                        help="store each morph target sparse: only the vertices it moves more than 0.01 mm "
                             "(the bundled head: 5.5 MB instead of 18 MB)")


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value
