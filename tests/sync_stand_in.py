"""A stand-in lip-sync expert with a known answer and clips made for it, for testing what scores clips by audio
offset (``prepare --expert``, the expert's whole-clip evaluation) without training a SyncNet."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from anchorcast_plugins.engines.wav2lip.training.dataset import Dataset, DatasetWriter


class BrightnessExpert(torch.nn.Module):
    """Embeds a five-frame window as the centred per-frame lower-face brightness and a mel window as its centred
    loudness in five steps: in sync exactly when loudness follows brightness."""

    def __init__(self) -> None:
        super().__init__()
        self.face_encoder = _Centred(lambda x: x.view(len(x), 5, 3, 48, 96).mean(dim=(2, 3, 4)))
        self.audio_encoder = _Centred(
            lambda m: torch.nn.functional.adaptive_avg_pool1d(m.mean(dim=2), 5).view(len(m), 5))


class _Centred(torch.nn.Module):
    def __init__(self, reduce: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.reduce = reduce

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = self.reduce(x)
        return (values - values.mean(dim=1, keepdim=True))[:, :, None, None]


def clip_with_delay(frames: int, delay: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Faces whose lower half flickers at random and a mel whose loudness follows it ``delay`` frames later."""
    rng = np.random.default_rng(seed)
    brightness = rng.random(frames + 20)
    faces = np.zeros((frames, 96, 96, 3), np.uint8)
    faces[:, 48:] = (brightness[:frames, None, None, None] * 255).astype(np.uint8)
    columns = 1 + frames * 640 // 200
    frame_of_column = np.arange(columns) * 25 // 80
    mel = np.repeat(brightness[np.clip(frame_of_column - delay, 0, None)][None, :], 80, axis=0)
    return faces, mel.astype(np.float32)


def write_delayed_clips(writer: DatasetWriter, delays: dict[str, int], frames: int, seed: int = 0) -> None:
    """Adds one clip per ``name: delay`` to ``writer`` (speaker ``anna``), its mel made by :func:`clip_with_delay`."""
    for k, (name, delay) in enumerate(delays.items()):
        faces, mel = clip_with_delay(frames, delay, seed=seed + k)
        writer.add(name, "anna", faces, np.zeros(frames * 640, np.float32), f"{name}.mp4")
        np.save(writer.partial / "clips" / name / "mel.npy", mel)


def delayed_dataset(folder: Path, delays: dict[str, int], frames: int, seed: int = 0) -> Dataset:
    """A finished data set of :func:`write_delayed_clips` clips."""
    with DatasetWriter(folder) as writer:
        write_delayed_clips(writer, delays, frames, seed)
        return writer.finish()
