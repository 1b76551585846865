"""The coefficient model: log-mel audio to the face model's 53 ARKit expression weights, one set per video frame.

Features. The Wav2Lip log-mel (:mod:`anchorcast_plugins.engines.wav2lip.audio`: 16 kHz, pre-emphasis 0.97,
periodic Hann 800, 80 Slaney bands 55-7600 Hz, values in [-4, 4]) with two changes: the hop is 160 samples
(10 ms, 100 columns a second) instead of 200, so that a 25 fps frame is exactly 4 columns; and the signal is
padded with zeros, as the host's timeline is, instead of reflected. Column ``c`` is the spectrum of the
pre-emphasised samples ``[160 c - 400, 160 c + 400)`` and so reads raw samples ``160 c - 401 .. 160 c + 399``.

Frames. Frame ``t`` at ``fps`` starts at sample ``a_t = floor(16000 t / fps)`` (the host's media clock) and owns
the columns centred inside it, ``ceil(a_t / 160) <= c < ceil(a_(t+1) / 160)``: exactly 4 at 25 fps, 3 or 4 at
30 fps, at least one for any fps up to 100. Its coefficients are the sigmoid of the mean of its columns' logits.

Model. A linear input projection, a periodic sinusoidal positional encoding, a 6-layer Transformer encoder and a
linear head. Every layer attends :attr:`CoefficientConfig.layer_window` columns back; the first also attends
:data:`LOOKAHEAD_COLUMNS` ahead and the other layers are causal, so a column's output never reads features more
than 5 columns ahead. Frame ``t``'s last column is at most ``(a_(t+1) + 159) / 160 - 1``, so its output reads raw
samples up to ``a_(t+1) + 1198`` (:data:`LOOKAHEAD_SAMPLES` after the frame, 74.9 ms; at 25 fps 1040, 65 ms),
within :data:`LOOKAHEAD_S`. Backwards the receptive field is ``6 x 20`` columns plus half an FFT window:
:data:`LOOKBEHIND_SAMPLES` (1.225 s) before the frame's first sample. Within those bounds the output is exactly a
function of the audio there, which is what lets :class:`StreamingCoefficients` reproduce the full-sequence output
from a :class:`~anchorcast.components.FrameJob`-style context.
"""

from __future__ import annotations

import dataclasses
import json
import math
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from numpy.lib.stride_tricks import sliding_window_view
from torch import nn

from anchorcast.errors import InputError

# The Wav2Lip mel's spectral core (window, FFT, filterbank, normalisation): reused so both engines' features agree.
from ..wav2lip.audio import N_FFT, N_MELS, PREEMPHASIS, SAMPLE_RATE, frame_start_sample, mel_columns_from_frames
from .asset import SHIPPED_ASSET

FEATURE_HOP = 160
COLUMNS_PER_SECOND = SAMPLE_RATE // FEATURE_HOP  # 100
LOOKAHEAD_S = 0.08
"""The most audio after a frame's end that its coefficients may depend on."""
CONTEXT_S = 1.2
"""The feature context a frame's output may reach back over (the layers' windows together)."""
LOOKAHEAD_COLUMNS = (round(LOOKAHEAD_S * SAMPLE_RATE) - N_FFT // 2 + 1) // FEATURE_HOP  # 5
"""Columns past a frame's last one it may use: the largest k with ``160 k + 398 < 1280`` (see the module doc)."""
LOOKAHEAD_SAMPLES = FEATURE_HOP * LOOKAHEAD_COLUMNS + N_FFT // 2 - 1  # 1199
CONTEXT_COLUMNS = round(CONTEXT_S * COLUMNS_PER_SECOND)  # 120
LOOKBEHIND_SAMPLES = FEATURE_HOP * CONTEXT_COLUMNS + N_FFT // 2 + 1  # 19601
CHECKPOINT_FORMAT = "anchorcast-coeffs/1"
FEATURES = {"sample_rate": SAMPLE_RATE, "hop": FEATURE_HOP, "n_fft": N_FFT, "mels": N_MELS, "fmin": 55.0,
            "fmax": 7600.0, "preemphasis": PREEMPHASIS, "padding": "zeros", "scale": "wav2lip [-4, 4]"}
_CHUNK_COLUMNS = 512  # columns per pass of the full-sequence forward: attention is dense within a pass

Float32Array = npt.NDArray[np.float32]


@lru_cache(maxsize=1)
def shipped_expression_names() -> tuple[str, ...]:
    """The 53 ARKit expression names of the shipped face model, in its order (the model's output order)."""
    with np.load(SHIPPED_ASSET, allow_pickle=False) as archive:
        return tuple(str(name) for name in archive["expression_names"])


def _fps(fps: Fraction | float) -> Fraction:
    rate = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(1_000_000)
    if not 0 < rate <= COLUMNS_PER_SECOND:
        raise ValueError(f"fps must be in (0, {COLUMNS_PER_SECOND}]: a frame needs a 10 ms column, got {fps}")
    return rate


def frame_columns(frame_index: int, fps: Fraction | float) -> tuple[int, int]:
    """The columns ``[first, stop)`` frame ``frame_index`` owns (centred on its samples)."""
    rate = _fps(fps)
    return (-(-frame_start_sample(frame_index, rate) // FEATURE_HOP),
            -(-frame_start_sample(frame_index + 1, rate) // FEATURE_HOP))


def frame_count(samples: int, fps: Fraction | float) -> int:
    """Frames :meth:`CoefficientModel.forward` gives for ``features_for`` of ``samples`` samples: every frame
    that ends within the audio rounded up to whole 10 ms (so ``floor(samples * fps / 16000)`` for a multiple
    of 160 samples; otherwise possibly one more, its end taken as silence)."""
    return math.floor(-(-samples // FEATURE_HOP) * _fps(fps) / COLUMNS_PER_SECOND)


def column_samples(low: int, high: int) -> tuple[int, int]:
    """The raw timeline samples ``[begin, end)`` that columns ``low .. high`` read (the sample before the first
    window included, for the pre-emphasis)."""
    return FEATURE_HOP * low - N_FFT // 2 - 1, FEATURE_HOP * high + N_FFT // 2


def columns_from_raw(raw: npt.NDArray[np.float64], count: int) -> Float32Array:
    """(count, 80) columns of raw samples ``column_samples(low, low + count - 1)``."""
    return _mel_columns(raw[1:] - PREEMPHASIS * raw[:-1], count)


def _mel_columns(emphasised: npt.NDArray[np.float64], count: int) -> Float32Array:
    """(count, 80) columns of pre-emphasised audio whose sample ``160 k`` starts column ``k``'s window."""
    frames = sliding_window_view(emphasised[: FEATURE_HOP * (count - 1) + N_FFT], N_FFT)[::FEATURE_HOP]
    return np.ascontiguousarray(mel_columns_from_frames(frames).T)


def features_for(audio: npt.ArrayLike, sample_rate: int = SAMPLE_RATE) -> Float32Array:
    """The (T, 80) float32 features of 16 kHz mono audio, zeros around it: ``T = ceil(N / 160) + 5`` columns,
    the last 5 being the lookahead of the last frames."""
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"the coefficient model needs {SAMPLE_RATE} Hz audio, not {sample_rate} Hz: resample")
    x = np.asarray(audio, np.float64).reshape(-1)
    count = -(-x.size // FEATURE_HOP) + LOOKAHEAD_COLUMNS
    tail = FEATURE_HOP * (count - 1) + N_FFT // 2 - x.size
    padded = np.concatenate([np.zeros(N_FFT // 2 + 1), x, np.zeros(tail)])
    return _mel_columns(padded[1:] - PREEMPHASIS * padded[:-1], count)


@dataclasses.dataclass(frozen=True)
class CoefficientConfig:
    """The model's shape; stored in checkpoints."""

    width: int = 128
    heads: int = 4
    layers: int = 6
    feedforward: int = 512
    dropout: float = 0.1
    layer_window: int = CONTEXT_COLUMNS // 6
    period: int = 256
    """Of the positional encoding, in columns: longer than any attention window, so positions there differ."""

    def __post_init__(self) -> None:
        span = self.layer_window + LOOKAHEAD_COLUMNS + 1  # one layer's attention window
        if self.layers * self.layer_window > CONTEXT_COLUMNS or self.period < span:
            raise ValueError(f"{self}: the layers' windows exceed the {CONTEXT_S} s context or the period")
        if self.width % (2 * self.heads) or self.width // 2 > self.period // 2:
            raise ValueError(f"{self}: width must be a multiple of 2 x heads and at most the period")


def band_mask(size: int, back: int, ahead: int, device: torch.device) -> torch.Tensor:
    """True where query ``i`` must not see key ``j``: outside ``i - back <= j <= i + ahead``."""
    offset = torch.arange(size, device=device)[None, :] - torch.arange(size, device=device)[:, None]
    return (offset < -back) | (offset > ahead)


class CoefficientModel(nn.Module):
    """Log-mel features (B, T, 80) to expression weights (B, frames, 53) in [0, 1]."""

    def __init__(self, config: CoefficientConfig | None = None, expression_names: tuple[str, ...] | None = None):
        super().__init__()
        self.config = config or CoefficientConfig()
        self.expression_names = tuple(expression_names or shipped_expression_names())
        cfg = self.config
        self.input = nn.Linear(N_MELS, cfg.width)
        self.dropout = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, cfg.feedforward, cfg.dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, norm=nn.LayerNorm(cfg.width),
                                             enable_nested_tensor=False)
        self.head = nn.Linear(cfg.width, len(self.expression_names))
        # The first width/2 harmonics of the period: continuous where positions wrap, so a stream of any length
        # only ever shows the model positions 0..period-1.
        angles = 2 * math.pi * torch.arange(1, cfg.width // 2 + 1, dtype=torch.float64) / cfg.period
        self.register_buffer("_angles", angles, persistent=False)

    @property
    def context_columns(self) -> int:
        return self.config.layers * self.config.layer_window

    @property
    def lookbehind_samples(self) -> int:
        """Samples before a frame's first sample its output may depend on (the engine's ``lookbehind``)."""
        return FEATURE_HOP * self.context_columns + N_FFT // 2 + 1

    def positional_encoding(self, first: int, count: int) -> torch.Tensor:
        """(count, width) encodings of absolute columns ``first .. first + count - 1``."""
        positions = (torch.arange(first, first + count, dtype=torch.int64) % self.config.period).double()
        phase = positions[:, None] * self._angles[None, :]
        return torch.stack([phase.sin(), phase.cos()], dim=-1).flatten(1).to(self.input.weight)

    def token_logits(self, mel: torch.Tensor, first: int, keep: tuple[int, int]) -> torch.Tensor:
        """(B, stop - start, 53) logits of absolute columns ``keep = (start, stop)`` from ``mel`` (B, n, 80),
        which holds columns ``first .. first + n - 1`` and must reach from ``max(0, start - context)`` to
        ``stop - 1 + 5`` (or the end of the features)."""
        start, stop = keep
        if first > max(0, start - self.context_columns) or first + mel.shape[1] < stop:
            raise ValueError(f"columns {first}..{first + mel.shape[1] - 1} do not hold the context of {keep}")
        x = self.dropout(self.input(mel) + self.positional_encoding(first, mel.shape[1]))
        low = first
        for depth, layer in enumerate(self.encoder.layers):
            ahead = LOOKAHEAD_COLUMNS if depth == 0 else 0
            x = layer(x, src_mask=band_mask(x.shape[1], self.config.layer_window, ahead, x.device))
            # Later layers need less: the rest of the window back, nothing past ``stop`` (they are causal).
            new_low = max(low, start - (self.config.layers - depth - 1) * self.config.layer_window)
            x, low = x[:, new_low - low : stop - low], new_low
        return self.head(self.encoder.norm(x))

    def forward(self, mel: torch.Tensor, fps: Fraction | float = 25, frames: int | None = None) -> torch.Tensor:
        """Weights (B, frames, 53) for features (B, T, 80); by default every frame whose columns and their
        lookahead are in ``mel``: ``floor((T - 5) * fps / 100)``."""
        if mel.ndim != 3 or mel.shape[-1] != N_MELS:
            raise ValueError(f"expected features of shape (B, T, {N_MELS}), got {tuple(mel.shape)}")
        rate, columns = _fps(fps), mel.shape[1]
        supported = max(0, math.floor((columns - LOOKAHEAD_COLUMNS) * rate / COLUMNS_PER_SECOND))
        frames = supported if frames is None else frames
        if not 0 <= frames <= supported:
            raise ValueError(f"{columns} feature columns hold {supported} frames at {fps} fps, not {frames}")
        indices = np.arange(frames + 1, dtype=np.int64)
        bounds = -(-((indices * SAMPLE_RATE * rate.denominator) // rate.numerator) // FEATURE_HOP)
        if frames == 0:
            return mel.new_zeros(mel.shape[0], 0, len(self.expression_names))
        end = int(bounds[-1])
        pieces = []
        for start in range(0, end, _CHUNK_COLUMNS):
            stop = min(end, start + _CHUNK_COLUMNS)
            low = max(0, start - self.context_columns)
            high = min(columns, stop + LOOKAHEAD_COLUMNS)
            pieces.append(self.token_logits(mel[:, low:high], low, (start, stop)))
        logits = torch.cat(pieces, dim=1)
        counts = np.diff(bounds)
        owner = torch.from_numpy(np.repeat(np.arange(frames), counts)).to(mel.device)
        sums = logits.new_zeros(mel.shape[0], frames, logits.shape[-1]).index_add_(1, owner, logits)
        return torch.sigmoid(sums / torch.from_numpy(counts).to(logits)[None, :, None])

    def save(self, path: Path) -> None:
        """Writes the weights as safetensors with the config, expression names and feature settings."""
        from safetensors.torch import save_file

        metadata = {"format": CHECKPOINT_FORMAT, "config": json.dumps(dataclasses.asdict(self.config)),
                    "expression_names": json.dumps(self.expression_names), "features": json.dumps(FEATURES),
                    "lookahead_columns": str(LOOKAHEAD_COLUMNS)}
        tensors = {key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()}
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        save_file(tensors, str(partial), metadata=metadata)
        partial.replace(path)

    @classmethod
    def load(cls, path: Path) -> CoefficientModel:
        """Reads a checkpoint written by :meth:`save`; an InputError naming the file when it is not one."""
        from safetensors import SafetensorError, safe_open

        if not path.is_file():
            raise InputError(f"{path}: coefficient-model weights not found")
        try:
            with safe_open(str(path), framework="pt", device="cpu") as file:
                metadata = dict(file.metadata() or {})
                tensors = {key: file.get_tensor(key).clone() for key in file.keys()}  # noqa: SIM118 (not a dict)
        except (SafetensorError, OSError, ValueError) as error:
            raise InputError(f"{path}: not a safetensors file ({str(error).splitlines()[0]})") from None
        if metadata.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"{path}: not a coefficient-model checkpoint (format {metadata.get('format')!r}, "
                             f"expected {CHECKPOINT_FORMAT!r})")
        try:
            config = CoefficientConfig(**json.loads(metadata["config"]))
            names = tuple(str(name) for name in json.loads(metadata["expression_names"]))
            features = json.loads(metadata["features"])
            lookahead = int(metadata["lookahead_columns"])
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{path}: coefficient-model checkpoint with bad metadata ({error})") from None
        if features != FEATURES or lookahead != LOOKAHEAD_COLUMNS:
            raise InputError(f"{path}: made for other features ({features}, lookahead {lookahead} columns); "
                             f"this version uses {FEATURES}, lookahead {LOOKAHEAD_COLUMNS}")
        model = cls(config, names)
        expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
        found = {key: tuple(value.shape) for key, value in tensors.items()}
        problems = [f"{key} missing" for key in expected if key not in found]
        problems += [f"unexpected {key}" for key in found if key not in expected]
        problems += [f"{key} has shape {found[key]}, expected {shape}" for key, shape in expected.items()
                     if key in found and found[key] != shape]
        if problems:
            shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
            raise InputError(f"{path}: coefficient-model weights do not fit their config: {shown}")
        model.load_state_dict(tensors)
        return model.eval()


class StreamingCoefficients:
    """One frame's coefficients from the audio around it, equal to :meth:`CoefficientModel.forward` on the
    whole signal (the timeline's zeros included) for that frame.

    ``context`` is 16 kHz audio whose sample ``offset`` is the frame's first sample, as in a FrameJob; it must
    reach :attr:`lookbehind_samples` before that sample (less near the start of the timeline) and
    :data:`LOOKAHEAD_SAMPLES` after the frame, which an engine declaring ``lookbehind = lookbehind_s`` and
    ``lookahead = LOOKAHEAD_S`` receives.
    """

    def __init__(self, model: CoefficientModel, fps: Fraction | float) -> None:
        self.model = model.eval()
        self.fps = _fps(fps)
        self.lookbehind_samples = model.lookbehind_samples
        self.lookbehind_s = self.lookbehind_samples / SAMPLE_RATE

    def frame(self, context: npt.ArrayLike, frame_index: int, offset: int) -> Float32Array:
        """The (53,) float32 weights of frame ``frame_index``."""
        start, stop = frame_columns(frame_index, self.fps)
        low, high = max(0, start - self.model.context_columns), stop - 1 + LOOKAHEAD_COLUMNS
        shift = offset - frame_start_sample(frame_index, self.fps)  # context index of timeline sample 0
        begin, end = (sample + shift for sample in column_samples(low, high))
        audio = np.asarray(context, np.float64).reshape(-1)
        if begin < 0 or end > audio.size:
            raise ValueError(f"frame {frame_index}: the context ({audio.size} samples, frame at {offset}) must "
                             f"cover samples {begin}..{end - 1}: give the engine lookbehind "
                             f"{self.lookbehind_samples} and lookahead {LOOKAHEAD_SAMPLES} samples at 16 kHz")
        mel = columns_from_raw(audio[begin:end], high - low + 1)
        with torch.no_grad():
            features = torch.from_numpy(mel)[None].to(self.model.input.weight)
            logits = self.model.token_logits(features, low, (start, stop))
            return torch.sigmoid(logits[0].mean(dim=0)).cpu().numpy().astype(np.float32)
