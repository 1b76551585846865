"""How in sync an expert finds a whole clip at each audio offset: the basis of ``prepare --expert`` (find a clip's
offset) and of the expert's clip-level evaluation (tell a clip from the same clip with its audio shifted).

A clip's score at offset ``k`` is the mean cosine similarity of every five-frame face window starting at ``t``
with the sync audio window starting at ``t + k`` (the audio ``k`` frames late), over the starts where both
exist. Embeddings are computed once per window, so scoring many offsets costs one pass over the clip.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from anchorcast_plugins.training.common import mixed_precision
from anchorcast_plugins.training.dataset import (
    FPS,
    MEL_COLUMNS_PER_SECOND,
    MEL_STEP,
    SYNC_FRAMES,
    lower_halves,
    mel_start,
)

OFFSET_SEARCH = 8
"""Frames searched either side of 0 by :func:`sync_offset`."""
CHUNK = 64


class ClipEmbeddings:
    """L2-normalised face embeddings of every five-frame window and audio embeddings of every sync window of one
    clip (start ``t`` for both, ``0 <= t < starts``)."""

    def __init__(self, faces: torch.Tensor, audio: torch.Tensor) -> None:
        self.faces = faces
        self.audio = audio

    @property
    def starts(self) -> int:
        return len(self.faces)

    @classmethod
    def of(cls, expert: Any, faces: npt.NDArray[np.uint8], mel: npt.NDArray[np.float32], device: str = "cpu",
           bf16: bool = False) -> ClipEmbeddings:
        """Embeds a clip's (N,96,96,3) BGR crops and its (80, columns) mel with ``expert`` (a SyncNet: any module
        with ``face_encoder`` and ``audio_encoder``), in eval mode and without gradients."""
        columns = mel.shape[1]
        last = min(len(faces) - SYNC_FRAMES, (FPS * (columns - MEL_STEP + 1) - 1) // MEL_COLUMNS_PER_SECOND)
        starts = range(0, last + 1)
        if last < 0:
            empty = torch.zeros(0, 1)
            return cls(empty, empty)
        was_training = getattr(expert, "training", False)
        if hasattr(expert, "eval"):
            expert.eval()
        try:
            with torch.no_grad(), mixed_precision(device, bf16):
                face_windows = [lower_halves(faces[t : t + SYNC_FRAMES]) for t in starts]
                mel_windows = [mel[None, :, mel_start(t) : mel_start(t) + MEL_STEP] for t in starts]
                face_embeddings = _embed(expert.face_encoder, face_windows, device)
                audio_embeddings = _embed(expert.audio_encoder, mel_windows, device)
        finally:
            if hasattr(expert, "train"):
                expert.train(was_training)
        return cls(face_embeddings, audio_embeddings)

    def score(self, offset: int, min_windows: int = 1) -> float | None:
        """The clip's mean similarity with the audio ``offset`` frames late, or None where fewer than
        ``min_windows`` starts have both a face window and an audio window that far apart."""
        first, last = max(0, -offset), min(self.starts, self.starts - offset)
        if last - first < max(1, min_windows):
            return None
        faces, audio = self.faces[first:last], self.audio[first + offset : last + offset]
        return float((faces * audio).sum(dim=1).mean())

    def pair(self, offset: int, min_windows: int = 1) -> tuple[float, float] | None:
        """``(in sync, shifted)``: the mean similarity of the face windows that have audio ``offset`` frames late,
        with their own audio and with that audio; None as for :meth:`score`."""
        first, last = max(0, -offset), min(self.starts, self.starts - offset)
        if last - first < max(1, min_windows):
            return None
        faces = self.faces[first:last]
        in_sync = (faces * self.audio[first:last]).sum(dim=1).mean()
        shifted = (faces * self.audio[first + offset : last + offset]).sum(dim=1).mean()
        return float(in_sync), float(shifted)

    def scores(self, offsets: Iterable[int], min_fraction: float = 0.25) -> dict[int, float]:
        """:meth:`score` at each offset that leaves at least ``min_fraction`` of the clip's windows."""
        floor = max(1, int(self.starts * min_fraction))
        found = {offset: self.score(offset, floor) for offset in offsets}
        return {offset: value for offset, value in found.items() if value is not None}


def _embed(encoder: Any, windows: list[npt.NDArray[np.float32]], device: str) -> torch.Tensor:
    parts = []
    for i in range(0, len(windows), CHUNK):
        batch = torch.from_numpy(np.stack(windows[i : i + CHUNK])).to(device)
        parts.append(encoder(batch).float().flatten(1))
    return torch.nn.functional.normalize(torch.cat(parts), dim=1).cpu()


def sync_offset(expert: Any, faces: npt.NDArray[np.uint8], mel: npt.NDArray[np.float32],
                search: int = OFFSET_SEARCH) -> tuple[int, float, float]:
    """The audio offset (frames, within ``±search``) at which the expert finds a clip most in sync (the nearest
    to 0 among equals). Returns ``(best offset, its score, the score at offset 0)``; ``(0, 0.0, 0.0)`` for a
    clip too short for one window."""
    embeddings = ClipEmbeddings.of(expert, faces, mel)
    scores = embeddings.scores(range(-search, search + 1))
    if not scores:
        return 0, 0.0, 0.0
    best = max(scores, key=lambda o: (scores[o], -abs(o)))
    return best, scores[best], scores.get(0, 0.0)
