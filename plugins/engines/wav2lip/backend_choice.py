"""Choosing a Wav2Lip backend: accuracy against the fp32 reference, timing on the calibration set, and the
engine's entry point, :func:`backend_for_avatar` (features cached in the avatar folder, calibration from the
avatar's frames and speech, the choice, and ``predict(mel, frame_indices)``)."""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.backends import (
    BACKEND_NAMES,
    FEATURE_SHAPES,
    Backend,
    Calibration,
    Features,
    TorchBackend,
    encode_features,
    make_calibration,
    select_frames,
)
from anchorcast_plugins.engines.wav2lip.devices import DeviceChoice, select_device, synchronize
from anchorcast_plugins.engines.wav2lip.openvino_build import (
    BuildInfo,
    build_openvino_backend,
)

# --- accuracy and automatic choice -----------------------------------------------------------------------


@dataclass(frozen=True)
class PredictionError:
    """How far predictions are from the fp32 reference. ``psnr_db`` is computed over the 96x96 predictions
    scaled to uint8 (rounded), the region that the paste puts into the frame."""

    max_abs: float
    mean_abs: float
    psnr_db: float

    def __str__(self) -> str:
        return f"max {self.max_abs:.4f}, mean {self.mean_abs:.5f}, PSNR {self.psnr_db:.1f} dB"


@dataclass(frozen=True)
class Tolerance:
    """The most a faster backend may differ from fp32 to be chosen."""

    mean_abs: float = 0.01
    max_abs: float = 0.25
    psnr_db: float = 32.0

    def accepts(self, error: PredictionError) -> bool:
        return error.mean_abs <= self.mean_abs and error.max_abs <= self.max_abs and error.psnr_db >= self.psnr_db


def prediction_error(reference: np.ndarray, candidate: np.ndarray) -> PredictionError:
    """Max and mean absolute error of [0,1] predictions, and the PSNR of their uint8 renderings."""
    if reference.shape != candidate.shape:
        raise ValueError(f"shapes differ: {reference.shape} vs {candidate.shape}")
    if not np.all(np.isfinite(candidate)):
        return PredictionError(math.inf, math.inf, 0.0)
    difference = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    to_uint8 = lambda x: np.clip(np.rint(x.astype(np.float64) * 255.0), 0, 255)  # noqa: E731
    mse = float(np.mean((to_uint8(reference) - to_uint8(candidate)) ** 2))
    psnr = math.inf if mse == 0 else 10.0 * math.log10(255.0**2 / mse)
    return PredictionError(float(difference.max()), float(difference.mean()), psnr)


@dataclass
class BackendReport:
    """One candidate as :func:`choose_backend` measured it."""

    name: str
    frames_per_s: float | None = None
    error: PredictionError | None = None
    build: BuildInfo | None = None
    chosen: bool = False
    skipped: str | None = None
    """Why the candidate could not be used or was not chosen."""

    def __str__(self) -> str:
        if self.frames_per_s is None:
            return f"{self.name}: unavailable ({self.skipped})"
        text = f"{self.name}: {self.frames_per_s:.1f} frames/s"
        if self.error is not None:
            text += f", vs fp32 {self.error}"
        if self.build is not None:
            text += f", {'loaded' if self.build.cached else 'built'} in {self.build.seconds:.1f} s"
        if self.skipped:
            text += f" ({self.skipped})"
        return text + (" [chosen]" if self.chosen else "")


def choose_backend(
    model: nn.Module,
    calibration: Calibration,
    *,
    device: DeviceChoice | None = None,
    cache_dir: Path | None = None,
    weights_id: str = "unknown",
    avatar_id: str = "unknown",
    candidates: Sequence[str] = BACKEND_NAMES,
    tolerance: Tolerance | None = None,
    batch_size: int = 2,
    repeats: int = 4,
    streams: int = 1,
    evaluation: Calibration | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[Backend, list[BackendReport]]:
    """Builds the candidate backends (int8 ones calibrated on ``calibration``), times each at ``batch_size``,
    compares its predictions with fp32 on ``evaluation`` (default: the calibration set; pass other frames and
    speech for an unbiased figure) and returns the fastest one within ``tolerance``; fp32 torch is always
    acceptable. On CUDA/MLU only the torch backend (float16) is used. OpenVINO models are cached in ``cache_dir``."""
    device = device or select_device("auto")
    tolerance = tolerance or Tolerance()
    evaluation = evaluation or calibration
    batches = _rebatch(evaluation, batch_size)
    reports: list[BackendReport] = []
    usable: list[tuple[float, Backend, BackendReport]] = []
    reference: _Reference | None = None
    for name in candidates:
        report = BackendReport(name)
        reports.append(report)
        try:
            backend, report.build = _make_backend(
                model, name, device, cache_dir, weights_id, avatar_id, calibration, streams
            )
        except (InputError, _Unavailable) as error:
            report.skipped = str(error)
            continue
        report.name = backend.name
        report.frames_per_s = _throughput(backend, batches, repeats, device)
        if device.kind != "cpu":  # only torch runs on accelerators; no fp32 reference to compare with
            usable.append((report.frames_per_s, backend, report))
            continue
        if isinstance(backend, TorchBackend):
            report.error = PredictionError(0.0, 0.0, math.inf)  # it is the fp32 reference
            usable.append((report.frames_per_s, backend, report))
            reference = reference or _Reference(backend)
            continue
        reference = reference or _Reference(TorchBackend(model, device))
        predictions = [backend.predict(mel, features) for mel, features in evaluation]
        report.error = prediction_error(reference.predictions(evaluation), np.concatenate(predictions))
        if tolerance.accepts(report.error):
            usable.append((report.frames_per_s, backend, report))
        else:
            report.skipped = "error against fp32 over tolerance"
            backend.close()
    if not usable:
        backend = TorchBackend(model, device)
        report = BackendReport(backend.name, _throughput(backend, batches, repeats, device))
        reports.append(report)
        usable.append((report.frames_per_s or 0.0, backend, report))
    usable.sort(key=lambda item: item[0], reverse=True)
    _, chosen, chosen_report = usable[0]
    chosen_report.chosen = True
    for _, other, _ in usable[1:]:
        if other is not chosen:
            other.close()
    if log is not None:
        for report in reports:
            log(str(report))
    return chosen, reports


class _Reference:
    """The fp32 torch predictions on the calibration set, computed once."""

    def __init__(self, backend: TorchBackend) -> None:
        self.backend = backend
        self._predictions: np.ndarray | None = None

    def predictions(self, calibration: Calibration) -> np.ndarray:
        if self._predictions is None:
            self._predictions = np.concatenate([self.backend.predict(mel, f) for mel, f in calibration])
        return self._predictions


class _Unavailable(Exception):
    """A candidate that cannot run on this device."""


def _make_backend(
    model: nn.Module,
    name: str,
    device: DeviceChoice,
    cache_dir: Path | None,
    weights_id: str,
    avatar_id: str,
    calibration: Calibration,
    streams: int,
) -> tuple[Backend, BuildInfo | None]:
    if name in ("torch-fp32", "torch-fp16", "torch"):
        return TorchBackend(model, device), None
    if name in ("openvino-fp32", "openvino-int8"):
        if device.kind != "cpu":
            raise _Unavailable(f"OpenVINO runs on the CPU here, the device is {device.device}")
        if cache_dir is None:
            raise _Unavailable("no cache folder given")
        return build_openvino_backend(
            model,
            name,
            cache_dir=cache_dir,
            weights_id=weights_id,
            avatar_id=avatar_id,
            calibration=calibration,
            streams=streams,
        )
    raise InputError(f"unknown backend {name!r}", hint=f"one of {', '.join(BACKEND_NAMES)}")


def _rebatch(calibration: Calibration, batch_size: int) -> list[tuple[np.ndarray, list[np.ndarray]]]:
    """The calibration samples regrouped into batches of ``batch_size``."""
    mels = np.concatenate([mel for mel, _ in calibration])
    features = [np.concatenate([item[1][k] for item in calibration]) for k in range(len(FEATURE_SHAPES))]
    return [
        (mels[start : start + batch_size], [feature[start : start + batch_size] for feature in features])
        for start in range(0, len(mels) - batch_size + 1, batch_size)
    ] or [(mels, features)]


def _throughput(
    backend: Backend, batches: Sequence[tuple[np.ndarray, Features]], repeats: int, device: Any
) -> float:
    """Frames per second over ``repeats`` batches after one warm-up batch; with several streams, keeps that many
    batches in flight."""
    backend.predict(*batches[0])
    order = [batches[i % len(batches)] for i in range(max(repeats, backend.streams))]
    synchronize(device)
    started = time.perf_counter()
    if backend.streams > 1:
        futures = [backend.submit(mel, features) for mel, features in order]
        for future in futures:
            future.result()
    else:
        for mel, features in order:
            backend.predict(mel, features)
    synchronize(device)
    return sum(len(mel) for mel, _ in order) / (time.perf_counter() - started)


# --- the engine's entry point: a backend bound to one avatar -------------------------------------------------


def generator_faces(crops: np.ndarray) -> np.ndarray:
    """The generator's face input for avatar crops (N, 96, 96, 3) uint8 BGR: (N, 6, 96, 96) float32 in [0, 1], the
    crop with its lower half zeroed, then the crop itself as the reference (the reference's inference input)."""
    faces = np.asarray(crops, dtype=np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    masked = faces.copy()
    masked[:, :, faces.shape[2] // 2 :] = 0
    return np.ascontiguousarray(np.concatenate([masked, faces], axis=1))


def load_or_encode_features(
    model: nn.Module, crops: np.ndarray, path: Path, *, device: str = "cpu", dtype: Any = np.float16
) -> list[np.ndarray]:
    """The avatar's per-frame face-encoder features, read (memory-mapped) from ``path`` when it holds them for
    these crops, otherwise encoded and saved there: one (N, 290816) ``.npy``, returned as seven (N, C, H, W) views."""
    path = Path(path)
    width = sum(math.prod(shape) for shape in FEATURE_SHAPES)
    flat: np.ndarray | None = None
    if path.is_file():
        try:
            flat = np.load(path, mmap_mode="r")
        except (OSError, ValueError):
            flat = None
        if flat is not None and (flat.shape != (len(crops), width) or flat.dtype != np.dtype(dtype)):
            flat = None
    if flat is None:
        features = encode_features(model, generator_faces(crops), dtype=dtype, device=device)
        flat = np.concatenate([f.reshape(len(crops), -1) for f in features], axis=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(path.name + ".partial")
        with temporary.open("wb") as handle:
            np.save(handle, flat)
        os.replace(temporary, path)
    views, offset = [], 0
    for shape in FEATURE_SHAPES:
        size = math.prod(shape)
        views.append(flat[:, offset : offset + size].reshape(len(flat), *shape))
        offset += size
    return views


class AvatarBackend:
    """A backend bound to one avatar's cached features: ``predict(mel (B,1,80,16), frames)`` with prepared-frame
    indices -> (B, 3, 96, 96) float32 BGR in [0, 1]. ``reports`` tell what was measured when it was chosen."""

    def __init__(self, backend: Backend, features: Features, reports: list[BackendReport]) -> None:
        self.backend = backend
        self.features = features
        self.reports = reports

    @property
    def name(self) -> str:
        return self.backend.name

    @property
    def streams(self) -> int:
        return self.backend.streams

    def predict(self, mel: np.ndarray, frames: Sequence[int] | np.ndarray) -> np.ndarray:
        return self.backend.predict(mel, select_frames(self.features, frames))

    def submit(self, mel: np.ndarray, frames: Sequence[int] | np.ndarray) -> Future[np.ndarray]:
        return self.backend.submit(mel, select_frames(self.features, frames))

    def close(self) -> None:
        self.backend.close()

    def describe(self) -> str:
        return self.backend.describe()


def backend_for_avatar(
    model: nn.Module,
    device: DeviceChoice,
    avatar: Any,
    weights_id: str,
    *,
    request: str = "auto",
    calibration_mels: np.ndarray,
    cache_dir: Path | None = None,
    batch_size: int = 2,
    streams: int = 1,
    tolerance: Tolerance | None = None,
    log: Callable[[str], None] | None = None,
) -> AvatarBackend:
    """Everything the engine needs at start-up: the avatar's features (cached in ``avatar.features_path``), a
    calibration set of the avatar's frames and ``calibration_mels`` (speech mel windows (M, 1, 80, 16)), and the
    backend ``request`` names (``auto``: the fastest within tolerance; or ``torch``, ``openvino-fp32``,
    ``openvino-int8``, used whatever its error, which is logged), with OpenVINO models cached in ``cache_dir`` (default: the avatar folder's ``backends``).
    ``avatar`` needs ``crops`` (N, 96, 96, 3) uint8 BGR, ``features_path(weights_id)`` and ``folder``."""
    features = load_or_encode_features(model, avatar.crops, avatar.features_path(weights_id), device=device.device)
    if request == "auto":
        candidates: Sequence[str] = BACKEND_NAMES if device.kind == "cpu" else ("torch-fp32",)
    elif request in ("torch", *BACKEND_NAMES, "torch-fp16"):
        candidates = (request,)
        tolerance = Tolerance(mean_abs=1.0, max_abs=1.0, psnr_db=0.0)  # asked for by name: anything finite
    else:
        raise InputError(
            f"backend {request!r} is not one of auto, torch, {', '.join(BACKEND_NAMES[1:])}",
            hint='use backend = "auto" to take the fastest one whose error against fp32 is within tolerance',
        )
    mels = np.asarray(calibration_mels, dtype=np.float32).reshape(-1, 1, 80, 16)
    split = max(1, len(mels) * 2 // 3) if len(mels) >= 6 else len(mels)
    held_out = mels[split:] if split < len(mels) else mels  # judge the error on speech not used to calibrate
    calibration = make_calibration(mels[:split], features, count=32)
    evaluation = make_calibration(held_out, features, count=16, batch_size=batch_size, seed=1)
    avatar_id = str(getattr(avatar, "source_sha256", None) or Path(avatar.folder).name)
    backend, reports = choose_backend(
        model,
        calibration,
        device=device,
        cache_dir=Path(cache_dir) if cache_dir is not None else Path(avatar.folder) / "backends",
        weights_id=weights_id,
        avatar_id=avatar_id,
        candidates=candidates,
        tolerance=tolerance,
        batch_size=batch_size,
        streams=streams,
        evaluation=evaluation,
        log=log,
    )
    if request not in ("auto", "torch", "torch-fp32", "torch-fp16") and backend.name != request:
        reason = next((r.skipped for r in reports if r.name == request and r.skipped), "it could not be built")
        raise InputError(
            f"backend {request} cannot be used: {reason}", hint='use backend = "auto" to fall back to torch'
        )
    return AvatarBackend(backend, features, reports)
