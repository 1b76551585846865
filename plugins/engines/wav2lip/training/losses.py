"""The generator's loss terms and the image measures the training stages report.

All images are (..., 3, 96, 96) BGR in [0, 1] (the Wav2Lip face crop).

- :func:`ms_ssim`: multi-scale SSIM over three scales (96, 48, 24 pixels): the reference five-scale MS-SSIM
  needs images of at least 161 pixels, so the first three of its scale weights are used, renormalised;
- :class:`ExpertFeatures`: the perceptual term. Nothing may be downloaded here, so instead of an ImageNet network
  the features are the frozen lip-sync expert's own face encoder (trained on exactly these lower-half crops),
  read after each of its resolution changes;
- :data:`MOUTH_ROWS` / :data:`MOUTH_COLUMNS`: the mouth box of a crop made with the engine's padding (chin
  included), where :func:`mouth_l1` and :func:`mouth_jitter` measure.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

MOUTH_ROWS = slice(60, 88)
MOUTH_COLUMNS = slice(24, 72)
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001)
"""The first three scale weights of Wang et al.'s MS-SSIM (renormalised in :func:`ms_ssim`)."""
_C1, _C2 = 0.01**2, 0.03**2


def _gaussian_window(size: int, sigma: float, channels: int, like: torch.Tensor) -> torch.Tensor:
    coords = torch.arange(size, dtype=like.dtype, device=like.device) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).expand(channels, 1, size, size).contiguous()


def _ssim_parts(x: torch.Tensor, y: torch.Tensor, window: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image mean SSIM and mean contrast-structure term, with a valid (unpadded) Gaussian window."""
    channels = x.size(1)
    mu_x = F.conv2d(x, window, groups=channels)
    mu_y = F.conv2d(y, window, groups=channels)
    sigma_x = F.conv2d(x * x, window, groups=channels) - mu_x**2
    sigma_y = F.conv2d(y * y, window, groups=channels) - mu_y**2
    sigma_xy = F.conv2d(x * y, window, groups=channels) - mu_x * mu_y
    contrast_structure = (2 * sigma_xy + _C2) / (sigma_x + sigma_y + _C2)
    luminance = (2 * mu_x * mu_y + _C1) / (mu_x**2 + mu_y**2 + _C1)
    return (luminance * contrast_structure).flatten(1).mean(1), contrast_structure.flatten(1).mean(1)


def ms_ssim(x: torch.Tensor, y: torch.Tensor, window_size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    """Mean three-scale MS-SSIM of image batches ``x`` and ``y`` (N,3,H,W) in [0, 1]; 1 when equal.

    Negative contrast-structure values are clamped to a small positive number before the weighted product, so the
    result and its gradient stay finite early in training."""
    x, y = x.flatten(0, -4), y.flatten(0, -4)
    window = _gaussian_window(window_size, sigma, x.size(1), x)
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=x.dtype, device=x.device)
    weights = weights / weights.sum()
    values = []
    for scale in range(len(MS_SSIM_WEIGHTS)):
        ssim, contrast_structure = _ssim_parts(x, y, window)
        last = scale == len(MS_SSIM_WEIGHTS) - 1
        values.append((ssim if last else contrast_structure).clamp(min=1e-4))
        if not last:
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
    stacked = torch.stack(values, dim=1)
    return torch.prod(stacked ** weights, dim=1).mean()


def frames_to_windows(frames: torch.Tensor) -> torch.Tensor:
    """(B,3,T,96,96) frames -> (B,3T,48,96) lower halves stacked frame-major, as the expert takes them."""
    lower = frames[:, :, :, frames.size(3) // 2 :]
    return torch.cat([lower[:, :, i] for i in range(lower.size(2))], dim=1)


class ExpertFeatures(nn.Module):
    """The perceptual feature extractor: the frozen expert's face encoder, read after each stride (four feature
    maps of 64 to 512 channels). ``forward`` gives the mean of the per-layer L1 distances."""

    TAPS = (3, 7, 10, 13)
    """Indices in ``SyncNet.face_encoder`` after which a feature map is read (the last block of each scale)."""

    def __init__(self, expert: nn.Module) -> None:
        super().__init__()
        self.blocks = expert.face_encoder
        for parameter in self.blocks.parameters():
            parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> ExpertFeatures:
        return super().train(False)  # the expert's BatchNorm statistics stay frozen

    def forward(self, generated: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x, y = frames_to_windows(generated), frames_to_windows(target)
        distances = []
        last = max(self.TAPS)
        for index, block in enumerate(self.blocks):
            x = block(x)
            with torch.no_grad():
                y = block(y)
            if index in self.TAPS:
                distances.append(F.l1_loss(x, y))
            if index == last:
                break
        return torch.stack(distances).mean()


def mouth(frames: torch.Tensor) -> torch.Tensor:
    """The mouth box of frames (..., 3, 96, 96)."""
    return frames[..., MOUTH_ROWS, MOUTH_COLUMNS]


def mouth_l1(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean absolute difference of two frame sets in the mouth box (0-1 scale)."""
    return float((mouth(a) - mouth(b)).abs().mean())


def mouth_motion(frames: torch.Tensor) -> float:
    """The mean absolute frame-to-frame change in the mouth box of consecutive frames (T,3,96,96)."""
    if len(frames) < 2:
        return 0.0
    return float((mouth(frames[1:]) - mouth(frames[:-1])).abs().mean())


def mouth_jitter(output: torch.Tensor, real: torch.Tensor) -> float:
    """How far the output's frame-to-frame mouth motion is from the real video's: the mean absolute difference of
    consecutive-frame changes in the mouth box. ``output`` and ``real`` are (T,3,96,96), consecutive frames of one
    clip; 0 when the output moves exactly as the real mouth does."""
    if len(output) < 2:
        return 0.0
    moved = mouth(output[1:]) - mouth(output[:-1])
    real_moved = mouth(real[1:]) - mouth(real[:-1])
    return float((moved - real_moved).abs().mean())
