"""Measuring Wav2Lip backends: accuracy against the fp32 reference and timing on a calibration set, and the
choice of the fastest within tolerance (:func:`choose_backend`). The engine reaches it through
:func:`~.backend_choice.backend_for_avatar`, which stores the choice (:mod:`.decisions`)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.backends import (
    BACKEND_NAMES,
    FEATURE_SHAPES,
    Backend,
    Calibration,
    Features,
    LazyModel,
    TorchBackend,
)
from anchorcast_plugins.engines.wav2lip.devices import DeviceChoice, select_device, synchronize
from anchorcast_plugins.engines.wav2lip.openvino_build import BuildInfo, build_openvino_backend

# --- accuracy and automatic choice -----------------------------------------------------------------------


if TYPE_CHECKING:
    from torch import nn


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
    model: nn.Module | LazyModel,
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
    progress: Callable[[int, int], None] | None = None,
    builder: Callable[..., tuple[Backend, BuildInfo | None]] | None = None,
) -> tuple[Backend, list[BackendReport]]:
    """Builds the candidate backends (int8 ones calibrated on ``calibration``), runs each over ``evaluation``
    (default: the calibration set; pass other frames and speech for an unbiased figure) in batches of
    ``batch_size``, timing it and comparing its predictions with fp32's, and returns the fastest one within
    ``tolerance``; fp32 torch is always acceptable. On CUDA/MLU only the torch backend (float16) is used. OpenVINO
    models are cached in ``cache_dir``.
    ``progress(done, total)`` is called after each candidate; ``builder`` (default :func:`make_backend`, same
    arguments) builds one."""
    build = builder or make_backend
    device = device or select_device("auto")
    tolerance = tolerance or Tolerance()
    evaluation = evaluation or calibration
    batches = _rebatch(evaluation, batch_size)
    reports: list[BackendReport] = []
    usable: list[tuple[float, Backend, BackendReport]] = []
    reference: np.ndarray | None = None  # fp32 torch's predictions on ``batches``
    for done, name in enumerate(candidates, start=1):
        if progress is not None and done > 1:
            progress(done - 1, len(candidates))
        report = BackendReport(name)
        reports.append(report)
        try:
            backend, report.build = build(
                model, name, device, cache_dir, weights_id, avatar_id, calibration, streams
            )
        except (InputError, Unavailable) as error:
            report.skipped = str(error)
            continue
        report.name = backend.name
        # one pass both times the backend and gives the predictions its error is judged on
        predictions, report.frames_per_s = _timed_pass(backend, batches, repeats, device)
        if device.kind != "cpu":  # only torch runs on accelerators; no fp32 reference to compare with
            usable.append((report.frames_per_s, backend, report))
            continue
        if isinstance(backend, TorchBackend):
            report.error = PredictionError(0.0, 0.0, math.inf)  # it is the fp32 reference
            usable.append((report.frames_per_s, backend, report))
            reference = predictions if reference is None else reference
            continue
        if reference is None:
            reference_backend = TorchBackend(model, device)
            reference = np.concatenate([reference_backend.predict(mel, f) for mel, f in batches])
        report.error = prediction_error(reference, predictions)
        if tolerance.accepts(report.error):
            usable.append((report.frames_per_s, backend, report))
        else:
            report.skipped = "error against fp32 over tolerance"
            backend.close()
    if progress is not None:
        progress(len(candidates), len(candidates))
    if not usable:
        backend = TorchBackend(model, device)
        report = BackendReport(backend.name, _timed_pass(backend, batches, repeats, device)[1])
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


class Unavailable(Exception):
    """A candidate that cannot run on this device."""


def make_backend(
    model: nn.Module | LazyModel,
    name: str,
    device: DeviceChoice,
    cache_dir: Path | None,
    weights_id: str,
    avatar_id: str,
    calibration: Calibration,
    streams: int,
) -> tuple[Backend, BuildInfo | None]:
    """The backend ``name`` (OpenVINO ones loaded from or built into ``cache_dir``; ``calibration`` is read only
    when an int8 model must be built); raises Unavailable when it cannot run on ``device``."""
    if name in ("torch-fp32", "torch-fp16", "torch"):
        return TorchBackend(model, device), None
    if name in ("openvino-fp32", "openvino-int8"):
        if device.kind != "cpu":
            raise Unavailable(f"OpenVINO runs on the CPU here, the device is {device.device}")
        if cache_dir is None:
            raise Unavailable("no cache folder given")
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


def _timed_pass(
    backend: Backend, batches: Sequence[tuple[np.ndarray, Features]], repeats: int, device: Any
) -> tuple[np.ndarray, float]:
    """The backend's predictions for ``batches`` and its frames per second making them, after one warm-up batch
    (at least ``repeats`` batches are timed, cycling over them; with several streams, that many are in flight)."""
    backend.predict(*batches[0])
    order = [batches[i % len(batches)] for i in range(max(repeats, backend.streams, len(batches)))]
    synchronize(device)
    started = time.perf_counter()
    if backend.streams > 1:
        futures = [backend.submit(mel, features) for mel, features in order]
        outputs = [future.result() for future in futures]
    else:
        outputs = [backend.predict(mel, features) for mel, features in order]
    synchronize(device)
    rate = sum(len(mel) for mel, _ in order) / (time.perf_counter() - started)
    return np.concatenate(outputs[: len(batches)]), rate
