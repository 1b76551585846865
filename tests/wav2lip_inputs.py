"""Realistic generator inputs cut from the bundled astronaut photo, shared by the backend tests and
scripts/bench_wav2lip.py; and an ANCHORCAST_HOME holding random generator weights, for the engine tests."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

ASTRONAUT = Path(__file__).resolve().parent.parent / "plugins" / "engines" / "assets" / "astronaut.png"
FACE_BOX = (50, 185, 165, 290)  # top, bottom, left, right of the face in the 512x512 photo


def avatar_faces(count: int, seed: int = 0, brightness_jitter: float = 0.0) -> np.ndarray:
    """(count, 6, 96, 96) generator inputs: lower-half-masked target + reference, BGR in [0, 1]. The box moves a
    few pixels per frame, as in a video avatar; ``brightness_jitter`` also scales each frame's brightness by up to
    that fraction."""
    image = cv2.imread(str(ASTRONAUT))
    rng = np.random.default_rng(seed)
    faces = []
    for _ in range(count):
        dy, dx = (int(v) for v in rng.integers(-6, 7, size=2))
        top, bottom, left, right = FACE_BOX
        crop = cv2.resize(
            image[top + dy : bottom + dy, left + dx : right + dx], (96, 96), interpolation=cv2.INTER_AREA
        )
        face = crop.astype(np.float32) / 255.0
        if brightness_jitter:
            face = np.clip(face * rng.uniform(1 - brightness_jitter, 1 + brightness_jitter), 0, 1)
        face = face.transpose(2, 0, 1)
        masked = face.copy()
        masked[:, 48:] = 0
        faces.append(np.concatenate([masked, face]))
    return np.stack(faces).astype(np.float32)


@contextmanager
def random_weights_home(root: Path, name: str = "test-gen") -> Iterator[Path]:
    """ANCHORCAST_HOME set to ``root`` for the duration, with seeded random Wav2Lip generator weights imported
    there as ``name`` (the real import path: a safetensors file through the weights store)."""
    import torch
    from safetensors.torch import save_file

    from anchorcast_plugins.engines.wav2lip.models import Wav2Lip

    torch.manual_seed(0)
    checkpoint = root / "generator.safetensors"
    save_file({k: v.contiguous() for k, v in Wav2Lip().state_dict().items()}, str(checkpoint))
    previous = os.environ.get("ANCHORCAST_HOME")
    os.environ["ANCHORCAST_HOME"] = str(root)
    try:
        from anchorcast_plugins.engines.wav2lip.weights_store import import_weights

        import_weights(checkpoint, name)
        yield root
    finally:
        if previous is None:
            del os.environ["ANCHORCAST_HOME"]
        else:
            os.environ["ANCHORCAST_HOME"] = previous
