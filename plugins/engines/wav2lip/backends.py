"""Inference backends for the Wav2Lip generator, built around cached face-encoder features.

For a fixed avatar frame the face encoder's seven skip features do not depend on the audio, so the engine computes
them once per avatar frame (:func:`encode_features`) and per video frame runs only ``decode(mel, features)``. Every
backend answers ``predict(mel (B,1,80,16) float32, features: 7 arrays (B,C,H,W)) -> (B,3,96,96) float32 in [0,1]``:

- ``torch-fp32``: BatchNorm folded into the convolutions, channels_last, ``inference_mode``; on CUDA/MLU the same
  module runs in float16 (``torch-fp16``);
- ``openvino-fp32``: the decode path exported to ONNX and compiled by OpenVINO in float32;
- ``openvino-int8``: the same graph quantised post-training (static, per-channel int8 weights, uint8 activations,
  QDQ format made with ONNX Runtime's quantiser, calibrated on the avatar's own features and speech mel windows)
  and compiled by OpenVINO as int8. The final 1x1 convolution and the sigmoid stay in float for pixel accuracy.

OpenVINO models are built and cached on disk (``cache_dir``) keyed by weights id, avatar id and
:data:`BACKEND_VERSION`, so later runs load them in about a second (:mod:`.openvino_build`).
:func:`~.backend_choice.choose_backend` times the candidates on the calibration set and picks the fastest whose
error against fp32 is within tolerance. OpenVINO backends built with ``streams=2`` run in throughput mode: keep
two batches in flight with ``submit``.

The engine's entry point is :func:`~.backend_choice.backend_for_avatar`: features cached in the avatar folder,
calibration from the avatar's frames and speech, the choice, and ``predict(mel, frame_indices)``.
"""

from __future__ import annotations

import copy
import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np

from anchorcast_plugins.engines.wav2lip.devices import DeviceChoice, select_device

if TYPE_CHECKING:  # torch is imported where a model is built or run: a warm OpenVINO start never needs it
    import torch
    from torch import nn

BACKEND_VERSION = 1
"""Bump when an exported or quantised model would differ: old cache entries are then ignored."""

FEATURE_SHAPES: tuple[tuple[int, int, int], ...] = (
    (16, 96, 96), (32, 48, 48), (64, 24, 24), (128, 12, 12), (256, 6, 6), (512, 3, 3), (512, 1, 1),
)  # fmt: skip
"""Per-frame shapes of the face encoder's skip features, shallowest first."""

BACKEND_NAMES = ("torch-fp32", "openvino-fp32", "openvino-int8")
INPUT_NAMES = ("mel", *(f"face{i}" for i in range(len(FEATURE_SHAPES))))

Features = Sequence[np.ndarray]
"""The seven skip features of a batch of frames, each (B, C, H, W), float32 or float16."""
Calibration = Sequence[tuple[np.ndarray, Features]]
"""(mel (B,1,80,16), features) pairs from the avatar's own frames and speech."""

_INSTALL_HINT = "install the wav2lip extra (pip install 'anchorcast[wav2lip]'), which brings openvino"


def cpu_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# --- the model, built when first needed ------------------------------------------------------------------


class LazyModel:
    """The generator, built on first use. A warm start whose features and OpenVINO model are all cached never
    uses it, and so never loads the checkpoint or imports torch (about 2 s)."""

    def __init__(self, build: Callable[[], nn.Module]) -> None:
        self._build = build
        self._model: nn.Module | None = None

    @property
    def built(self) -> bool:
        return self._model is not None

    def get(self) -> nn.Module:
        if self._model is None:
            self._model = self._build()
        return self._model


def resolve_model(model: nn.Module | LazyModel) -> nn.Module:
    """The model itself, built now if it is a :class:`LazyModel`."""
    return model.get() if isinstance(model, LazyModel) else model


# --- BatchNorm folding and cached features ---------------------------------------------------------------


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """An equivalent eval-mode model with every BatchNorm2d that follows a Conv2d/ConvTranspose2d in a Sequential
    folded into that convolution's weight and bias (the BatchNorm becomes an Identity)."""
    from torch import nn

    model = model if inplace else copy.deepcopy(model)
    model.eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.children())
        for index in range(len(children) - 1):
            conv, norm = children[index], children[index + 1]
            if isinstance(conv, nn.Conv2d | nn.ConvTranspose2d) and isinstance(norm, nn.BatchNorm2d):
                _fold_into(conv, norm)
                module[index + 1] = nn.Identity()
    return model


def _fold_into(conv: nn.Conv2d | nn.ConvTranspose2d, norm: nn.BatchNorm2d) -> None:
    import torch

    with torch.no_grad():
        _fold_weights(conv, norm)


def _fold_weights(conv: nn.Conv2d | nn.ConvTranspose2d, norm: nn.BatchNorm2d) -> None:
    import torch
    from torch import nn

    if conv.groups != 1:
        raise ValueError("folding BatchNorm into a grouped convolution is not supported")
    running_mean, running_var = norm.running_mean, norm.running_var
    assert running_mean is not None and running_var is not None
    gamma = norm.weight if norm.affine else torch.ones_like(running_mean)
    beta = norm.bias if norm.affine else torch.zeros_like(running_mean)
    scale = gamma.double() / torch.sqrt(running_var.double() + norm.eps)
    # Conv2d weights are (out, in, k, k); ConvTranspose2d weights are (in, out, k, k).
    shape = (1, -1, 1, 1) if isinstance(conv, nn.ConvTranspose2d) else (-1, 1, 1, 1)
    weight = conv.weight.double() * scale.reshape(shape)
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    conv.weight.copy_(weight.to(conv.weight.dtype))
    new_bias = ((bias - running_mean.double()) * scale + beta.double()).to(conv.weight.dtype)
    if conv.bias is None:
        conv.bias = nn.Parameter(new_bias)
    else:
        conv.bias.copy_(new_bias)


def feature_bytes_per_frame(dtype: Any = np.float16) -> int:
    """Memory of one avatar frame's cached features (0.58 MB in float16, 1.16 MB in float32)."""
    return sum(math.prod(shape) for shape in FEATURE_SHAPES) * np.dtype(dtype).itemsize


def encode_features(
    model: nn.Module,
    faces: np.ndarray,
    *,
    dtype: Any = np.float16,
    batch_size: int = 16,
    device: str = "cpu",
) -> list[np.ndarray]:
    """The face encoder's seven skip features for avatar faces (N, 6, 96, 96) in [0, 1] (masked target + reference,
    BGR): seven arrays (N, C, H, W) of ``dtype``, shallowest first. Computed once per avatar frame."""
    import torch

    if faces.ndim != 4 or faces.shape[1:] != (6, 96, 96):
        raise ValueError(f"faces must be (N, 6, 96, 96), got {faces.shape}")
    model = model.eval()
    parameter = next(model.parameters())
    outputs: list[list[np.ndarray]] = [[] for _ in FEATURE_SHAPES]
    with torch.inference_mode():
        for start in range(0, len(faces), batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(faces[start : start + batch_size], dtype=np.float32))
            features = model.encode_face(chunk.to(device=parameter.device, dtype=parameter.dtype))
            for store, feature in zip(outputs, features, strict=True):
                store.append(feature.float().cpu().numpy().astype(dtype, copy=False))
    return [np.concatenate(store) for store in outputs]


def select_frames(features: Features, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
    """The features of the given avatar frames, batched in that order."""
    return [feature[np.asarray(indices)] for feature in features]


def make_calibration(
    mel_windows: np.ndarray, features: Features, *, count: int = 32, batch_size: int = 1, seed: int = 0
) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """A calibration set: ``count`` samples pairing speech mel windows (M, 80, 16) or (M, 1, 80, 16) with avatar
    frames (features of N frames), spread over both, in batches of ``batch_size``."""
    mels = np.asarray(mel_windows, dtype=np.float32).reshape(-1, 1, 80, 16)
    frames = len(features[0])
    if len(mels) == 0 or frames == 0:
        raise ValueError("calibration needs at least one mel window and one avatar frame")
    rng = np.random.default_rng(seed)
    mel_index = np.linspace(0, len(mels) - 1, count).round().astype(int)
    frame_index = rng.permutation(np.resize(np.arange(frames), count))
    pairs = []
    for start in range(0, count, batch_size):
        rows = slice(start, start + batch_size)
        pairs.append((mels[mel_index[rows]], select_frames(features, frame_index[rows])))
    return pairs


# --- backends --------------------------------------------------------------------------------------------


class Backend:
    """Runs the generator's decode path on cached features. ``predict`` is synchronous; ``submit`` returns a
    Future (backends with several inference streams run submitted batches concurrently)."""

    name: str = "backend"
    streams: int = 1
    """How many submitted batches can usefully run at once."""

    def predict(self, mel: np.ndarray, features: Features) -> np.ndarray:
        raise NotImplementedError

    def submit(self, mel: np.ndarray, features: Features) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        try:
            future.set_result(self.predict(mel, features))
        except Exception as error:
            future.set_exception(error)
        return future

    def close(self) -> None:
        """Releases threads and memory; the backend is unusable afterwards."""

    def describe(self) -> str:
        return self.name


class TorchBackend(Backend):
    """The folded generator in torch: channels_last, ``inference_mode``, float16 on accelerators."""

    def __init__(
        self, model: nn.Module | LazyModel, device: DeviceChoice | None = None, *, threads: int | None = None
    ) -> None:
        self.device = device or select_device("cpu")
        import torch

        self.name = "torch-fp16" if self.device.half else "torch-fp32"
        if self.device.kind == "cpu":
            torch.set_num_threads(threads or cpu_cores())
        folded = fold_batchnorm(resolve_model(model))
        self.model = folded.to(
            device=self.device.device, dtype=self.device.dtype, memory_format=torch.channels_last
        )

    def predict(self, mel: np.ndarray, features: Features) -> np.ndarray:
        import torch

        with torch.inference_mode():
            audio = self._tensor(mel)
            skips = [self._tensor(feature) for feature in features]
            out = self.model.decode(audio, skips)
            return out.float().cpu().numpy()

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array))
        tensor = tensor.to(device=self.device.device, dtype=self.device.dtype, non_blocking=True)
        return tensor.contiguous(memory_format=torch.channels_last)

    def describe(self) -> str:
        return f"{self.name} on {self.device.description}"


class OpenVinoBackend(Backend):
    """A compiled OpenVINO decode model. With ``streams`` > 1 it runs in throughput mode: ``submit`` keeps up to that
    many batches in flight (one worker thread and infer request per stream; OpenVINO releases the GIL while it
    infers) and ``predict`` splits a batch across the streams."""

    def __init__(self, compiled: Any, name: str, streams: int) -> None:
        self.name = name
        self.streams = streams
        self._compiled = compiled
        self._request = compiled.create_infer_request()
        self._lock = threading.Lock()
        self._workers = ThreadPoolExecutor(streams, thread_name_prefix="w2l-ov") if streams > 1 else None
        self._local = threading.local()

    def predict(self, mel: np.ndarray, features: Features) -> np.ndarray:
        if self._workers is not None and len(mel) > 1:
            parts = np.array_split(np.arange(len(mel)), min(self.streams, len(mel)))
            futures = [self.submit(mel[part], select_frames(features, part)) for part in parts]
            return np.concatenate([future.result() for future in futures])
        with self._lock:
            return np.array(self._request.infer(_inputs(mel, features))[0], dtype=np.float32)

    def submit(self, mel: np.ndarray, features: Features) -> Future[np.ndarray]:
        if self._workers is None:
            return super().submit(mel, features)
        return self._workers.submit(self._infer_in_worker, _inputs(mel, features))

    def _infer_in_worker(self, inputs: list[np.ndarray]) -> np.ndarray:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self._compiled.create_infer_request()
        return np.array(request.infer(inputs)[0], dtype=np.float32)

    def close(self) -> None:
        if self._workers is not None:
            self._workers.shutdown(wait=True)
        self._workers = None
        self._request = None
        self._compiled = None

    def describe(self) -> str:
        mode = f"throughput mode, {self.streams} streams" if self.streams > 1 else "latency mode"
        return f"{self.name} (OpenVINO, {mode})"


def _inputs(mel: np.ndarray, features: Features) -> list[np.ndarray]:
    arrays = [mel, *features]
    return [np.ascontiguousarray(array, dtype=np.float32) for array in arrays]
