#!/usr/bin/env python3
"""Draws the face3d head at neutral, jawOpen, mouthFunnel and mouthSmile (both sides) side by side, labelled:
the README's picture ``docs/face3d-expressions.png``. With ``--from-run``, instead: runs ``anchorcast run face3d``
(the bundled profile and weights, or ``--weights``) and saves a speaking frame of its MP4, ``docs/face3d.png``.

The renderer is the engine's (:mod:`anchorcast_plugins.engines.face3d.render`), with 4x multisampling for smooth
edges, on the engine's default background colour.

    python scripts/face3d_expressions.py [--out docs/face3d-expressions.png] [--size 360x420]
    python scripts/face3d_expressions.py --from-run [--weights coeffs.safetensors] [--out docs/face3d.png]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from anchorcast_plugins.engines.face3d.asset import SHIPPED_ASSET, FaceModel
from anchorcast_plugins.engines.face3d.engine import DEFAULT_BACKGROUND
from anchorcast_plugins.engines.face3d.render import Framing, HeadRenderer

PANELS: tuple[tuple[str, dict[str, float]], ...] = (
    ("neutral", {}),
    ("jawOpen", {"jawOpen": 1.0}),
    ("mouthFunnel", {"mouthFunnel": 1.0}),
    ("mouthSmile_L + _R", {"mouthSmile_L": 1.0, "mouthSmile_R": 1.0}),
)
ROOT = Path(__file__).resolve().parent.parent
LABEL_HEIGHT = 40


def panels(face: FaceModel, width: int, height: int) -> list[np.ndarray]:
    """One RGB picture per entry of :data:`PANELS`, the face filling most of the height."""
    top = float(face.neutral[:, 1].max())
    chin = float(face.neutral[face.landmarks[8], 1])
    scale = 0.8 * height / (top - chin)
    framing = Framing(scale, (width / 2, 0.06 * height + scale * top))
    renderer = HeadRenderer(face, width, height, background=DEFAULT_BACKGROUND, samples=4, framing=framing)
    try:
        pictures = []
        for _, named in PANELS:
            weights = np.zeros(len(face.expression_names), np.float32)
            for name, value in named.items():
                weights[face.expression_index(name)] = value
            pictures.append(renderer.render(weights)[..., :3].copy())
        return pictures
    finally:
        renderer.close()


def frame_of_run(out: Path, weights: Path | None) -> int:
    """Runs the face3d profile and saves the frame whose mouth is open at the 95th percentile of the run (a
    speaking frame, not an outlier)."""
    import av

    from anchorcast_plugins.engines.face3d.render import Framing

    with tempfile.TemporaryDirectory() as folder:
        video = Path(folder) / "face3d.mp4"
        command = [sys.executable, "-m", "anchorcast", "run", "face3d", "--out", str(video)]
        if weights is not None:
            command += ["--set", f"engine.weights={weights.resolve()}"]
        subprocess.run(command, check=True, cwd=folder)
        with av.open(str(video)) as container:
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    face = FaceModel.load(SHIPPED_ASSET)
    height, width = frames[0].shape[:2]
    framing = Framing.for_size(face, width, height)
    mouth = face.neutral[face.landmarks[48:68]]
    xs, ys = framing.centre[0] + framing.scale * mouth[:, 0], framing.centre[1] - framing.scale * mouth[:, 1]
    box = (slice(int(ys.min()) - 8, int(ys.max()) + 40), slice(int(xs.min()) - 8, int(xs.max()) + 8))
    still = frames[0][box].astype(np.int16)
    opening = np.array([np.abs(frame[box].astype(np.int16) - still).mean() for frame in frames])
    chosen = int(np.argsort(opening)[int(0.95 * (len(frames) - 1))])
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(frames[chosen]).save(out, optimize=True)
    print(f"wrote {out}: frame {chosen} of {len(frames)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=None, help="default: docs/face3d-expressions.png, or "
                        "docs/face3d.png with --from-run")
    parser.add_argument("--size", default="360x420", help="one panel, WIDTHxHEIGHT")
    parser.add_argument("--from-run", action="store_true", help="a frame of `anchorcast run face3d` instead")
    parser.add_argument("--weights", type=Path, default=None, help="with --from-run: a checkpoint instead of the "
                        "shipped weights")
    args = parser.parse_args(argv)
    if args.from_run:
        return frame_of_run(args.out or ROOT / "docs" / "face3d.png", args.weights)
    args.out = args.out or ROOT / "docs" / "face3d-expressions.png"
    width, height = (int(v) for v in args.size.lower().split("x"))
    face = FaceModel.load(SHIPPED_ASSET)
    row = np.concatenate(panels(face, width, height), axis=1)
    strip = np.empty((LABEL_HEIGHT, row.shape[1], 3), np.uint8)
    strip[:] = DEFAULT_BACKGROUND
    sheet = Image.fromarray(np.concatenate([row, strip], axis=0))
    draw = ImageDraw.Draw(sheet)
    try:
        font: ImageFont.ImageFont | ImageFont.FreeTypeFont = ImageFont.truetype("DejaVuSans.ttf", 20)
    except OSError:
        font = ImageFont.load_default()
    for k, (label, _) in enumerate(PANELS):
        box = draw.textbbox((0, 0), label, font=font)
        x = k * width + (width - (box[2] - box[0])) / 2
        draw.text((x, height + (LABEL_HEIGHT - (box[3] - box[1])) / 2 - box[1]), label, fill=(230, 232, 236),
                  font=font)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.out, optimize=True)
    print(f"wrote {args.out} ({sheet.width}x{sheet.height})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
