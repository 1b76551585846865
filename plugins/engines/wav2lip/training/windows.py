"""The generator's training samples: five-frame windows of a clip with masked targets, a reference window and
the mel windows (see :mod:`.generator` for the layout), and the sampler that draws them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.training.dataset import (
    MEL_STEP,
    SYNC_FRAMES,
    Clip,
    Dataset,
    last_start_by_mel,
    mel_start,
)

CENTRE_OFFSET = 1
"""Frame ``i``'s own mel window starts at frame ``i - 1``: the reference training numbers frames from 1 there
(``get_frame_id(f) + 1``) and crops at ``i - 2``."""


@dataclass(frozen=True)
class WindowBatch:
    """A generator batch (see the module docstring): ``faces`` (B,6,5,96,96), ``mels`` (B,5,1,80,16),
    ``sync_mels`` (B,1,80,16), ``targets`` (B,3,5,96,96), float32 in [0, 1] (mels normalised);
    ``windows`` the (clip index, t, reference start) of each sample."""

    faces: npt.NDArray[np.float32]
    mels: npt.NDArray[np.float32]
    sync_mels: npt.NDArray[np.float32]
    targets: npt.NDArray[np.float32]
    windows: npt.NDArray[np.int64]

    @property
    def references(self) -> npt.NDArray[np.float32]:
        """The unmasked reference frames (B,3,5,96,96): the unchanged input."""
        return self.faces[:, 3:]

    def __len__(self) -> int:
        return len(self.faces)


def window_starts(clip: Clip) -> range:
    """The starts ``t`` whose five frames, own mel windows and sync window all lie inside ``clip``."""
    last_by_mel = last_start_by_mel(clip.mel.shape[1])
    # frame t + 4's own window starts at t + 4 - CENTRE_OFFSET and must end inside the mel, as must the sync window
    return range(CENTRE_OFFSET, min(clip.frames - SYNC_FRAMES, last_by_mel - (SYNC_FRAMES - 1 - CENTRE_OFFSET),
                                    last_by_mel) + 1)


def frames_chw(frames: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """(T,96,96,3) uint8 BGR -> (3,T,96,96) float32 in [0, 1]."""
    return np.ascontiguousarray(np.asarray(frames, np.float32).transpose(3, 0, 1, 2) / 255.0)


class WindowSampler:
    """Draws generator samples from a data set's clips; each reference window is another start of the same clip
    (the reference's "wrong window")."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.clips = dataset.clips
        rows = [(index, t) for index, clip in enumerate(self.clips) for t in window_starts(clip)]
        self.windows = np.array(rows, np.int64).reshape(-1, 2)
        if len(self.windows) == 0:
            raise InputError(f"no clip in {dataset.folder} is long enough for the generator (a clip needs at least "
                             f"{SYNC_FRAMES + 2 * CENTRE_OFFSET + 1} frames)")

    def batch(self, rows: npt.NDArray[np.int64], rng: np.random.Generator,
              reference: Callable[[int], int] | None = None) -> WindowBatch:
        """The samples of ``rows`` (clip index, t); the reference start of row ``k`` is ``reference(k)``, or drawn
        from the clip's other starts."""
        count = len(rows)
        faces = np.empty((count, 6, SYNC_FRAMES, 96, 96), np.float32)
        mels = np.empty((count, SYNC_FRAMES, 1, 80, MEL_STEP), np.float32)
        sync_mels = np.empty((count, 1, 80, MEL_STEP), np.float32)
        targets = np.empty((count, 3, SYNC_FRAMES, 96, 96), np.float32)
        chosen = np.empty((count, 3), np.int64)
        for k, (index, t) in enumerate(rows):
            clip = self.clips[int(index)]
            starts = window_starts(clip)
            if reference is not None:
                u = int(reference(k))
            else:
                others = [s for s in starts if s != t] or [int(t)]
                u = int(others[rng.integers(len(others))])
            targets[k] = frames_chw(clip.faces[t : t + SYNC_FRAMES])
            faces[k, :3] = targets[k]
            faces[k, :3, :, 48:] = 0.0
            faces[k, 3:] = frames_chw(clip.faces[u : u + SYNC_FRAMES])
            for i in range(SYNC_FRAMES):
                start = mel_start(int(t) + i - CENTRE_OFFSET)
                mels[k, i, 0] = clip.mel[:, start : start + MEL_STEP]
            sync_mels[k, 0] = clip.mel[:, mel_start(int(t)) : mel_start(int(t)) + MEL_STEP]
            chosen[k] = (index, t, u)
        return WindowBatch(faces, mels, sync_mels, targets, chosen)

    def sample(self, rng: np.random.Generator, count: int) -> WindowBatch:
        return self.batch(self.windows[rng.integers(len(self.windows), size=count)], rng)

    def sequence(self, index: int) -> WindowBatch | None:
        """Consecutive, non-overlapping windows covering clip ``index`` in order (for the mouth jitter), each with
        the window half the clip away as its reference; None when the clip has too few starts for that reference
        to stay clear of the frames."""
        starts = [int(row[1]) for row in self.windows if row[0] == index]
        if len(starts) < 2 * SYNC_FRAMES:
            return None
        rows = np.array([(index, t) for t in starts[::SYNC_FRAMES]], np.int64)
        half = len(starts) // 2
        return self.batch(rows, np.random.default_rng(0),
                          reference=lambda k: starts[(k * SYNC_FRAMES + half) % len(starts)])

    def fixed(self, seed: int, count: int) -> WindowBatch:
        """A reproducible set of up to ``count`` distinct windows spread over the data (for evaluation)."""
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(len(self.windows))[: min(count, len(self.windows))]
        return self.batch(self.windows[np.sort(chosen)], rng)

