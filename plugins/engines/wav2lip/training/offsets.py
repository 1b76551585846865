"""How in sync an expert finds a whole clip at each audio offset: the basis of ``prepare --expert`` (find a clip's
offset) and of the expert's clip-level evaluation (tell a clip from the same clip with its audio shifted).

A clip's score at offset ``k`` is the mean cosine similarity of every five-frame face window starting at ``t``
with the sync audio window starting at ``t + k`` (the audio ``k`` frames late), over the starts where both
exist. Embeddings are computed once per window, so scoring many offsets costs one pass over the clip.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import numpy.typing as npt
import torch

from anchorcast_plugins.engines.wav2lip.training.common import evaluation, mixed_precision
from anchorcast_plugins.engines.wav2lip.training.dataset import (
    MEL_STEP,
    SYNC_FRAMES,
    lower_halves,
    mel_start,
    sync_start_count,
)

OFFSET_SEARCH = 8
"""Frames searched either side of 0 by :func:`sync_offset`."""
MIN_FRACTION = 0.25
"""An offset is scored only where at least this fraction of the clip's windows have audio that far away."""
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
    def of(cls, expert: torch.nn.Module, faces: npt.NDArray[np.uint8], mel: npt.NDArray[np.float32],
           device: str = "cpu", bf16: bool = False) -> ClipEmbeddings:
        """Embeds a clip's (N,96,96,3) BGR crops and its (80, columns) mel with ``expert`` (a SyncNet: any module
        with ``face_encoder`` and ``audio_encoder``), in eval mode and without gradients."""
        starts = range(sync_start_count(len(faces), mel.shape[1]))
        if not starts:
            empty = torch.zeros(0, 1)
            return cls(empty, empty)
        with evaluation(expert), mixed_precision(device, bf16):
            face_windows = [lower_halves(faces[t : t + SYNC_FRAMES]) for t in starts]
            mel_windows = [mel[None, :, mel_start(t) : mel_start(t) + MEL_STEP] for t in starts]
            return cls(_embed(expert.face_encoder, face_windows, device),
                       _embed(expert.audio_encoder, mel_windows, device))

    def _span(self, offset: int, min_fraction: float) -> tuple[int, int] | None:
        """``(first, last)``: the face-window starts that have audio ``offset`` frames late, or None when they are
        fewer than ``min_fraction`` of the clip's windows (and at least one)."""
        first, last = max(0, -offset), min(self.starts, self.starts - offset)
        return (first, last) if last - first >= max(1, int(self.starts * min_fraction)) else None

    def _mean_similarity(self, first: int, last: int, offset: int) -> float:
        faces, audio = self.faces[first:last], self.audio[first + offset : last + offset]
        return float((faces * audio).sum(dim=1).mean())

    def score(self, offset: int, min_fraction: float = MIN_FRACTION) -> float | None:
        """The clip's mean similarity with the audio ``offset`` frames late (None: too few windows, see
        :meth:`_span`)."""
        span = self._span(offset, min_fraction)
        return None if span is None else self._mean_similarity(*span, offset)

    def pair(self, offset: int, min_fraction: float = MIN_FRACTION) -> tuple[float, float] | None:
        """``(in sync, shifted)``: the mean similarity of the face windows that have audio ``offset`` frames late,
        with their own audio and with that audio (None: too few windows)."""
        span = self._span(offset, min_fraction)
        return None if span is None else (self._mean_similarity(*span, 0), self._mean_similarity(*span, offset))

    def scores(self, offsets: Iterable[int], min_fraction: float = MIN_FRACTION) -> dict[int, float]:
        """:meth:`score` at each offset that leaves enough windows."""
        found = {offset: self.score(offset, min_fraction) for offset in offsets}
        return {offset: value for offset, value in found.items() if value is not None}


def _embed(encoder: torch.nn.Module, windows: list[npt.NDArray[np.float32]], device: str) -> torch.Tensor:
    parts = []
    for i in range(0, len(windows), CHUNK):
        batch = torch.from_numpy(np.stack(windows[i : i + CHUNK])).to(device)
        parts.append(encoder(batch).float().flatten(1))
    return torch.nn.functional.normalize(torch.cat(parts), dim=1).cpu()


def sync_offset(expert: torch.nn.Module, faces: npt.NDArray[np.uint8], mel: npt.NDArray[np.float32],
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
