"""Realistic generator inputs cut from the bundled astronaut photo, shared by the backend tests and
scripts/bench_wav2lip.py."""

from __future__ import annotations

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
