"""The engine's entry point to the Wav2Lip backends, :func:`backend_for_avatar`: the avatar's face features
(cached in its folder), the backend (by name, or ``auto``: the choice stored with the weights, measured when none
applies, see :mod:`.decisions`), and ``predict(mel, frame_indices)``.

The measuring itself lives in :mod:`.measurement`; its names are re-exported here for existing callers.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import asdict
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anchorcast import setup_progress
from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.backends import (
    BACKEND_NAMES,
    FEATURE_SHAPES,
    Backend,
    Calibration,
    Features,
    LazyModel,
    encode_features,
    make_calibration,
    resolve_model,
    select_frames,
)
from anchorcast_plugins.engines.wav2lip.decisions import Decision, DecisionStore, decision_key
from anchorcast_plugins.engines.wav2lip.devices import DeviceChoice
from anchorcast_plugins.engines.wav2lip.measurement import (  # noqa: F401  (re-exported)
    BackendReport,
    PredictionError,
    Tolerance,
    Unavailable,
    choose_backend,
    make_backend,
    prediction_error,
)
from anchorcast_plugins.engines.wav2lip.openvino_build import BuildInfo

if TYPE_CHECKING:
    from torch import nn


logger = logging.getLogger(__name__)

MEASURE_BATCH = 2
"""The batch size candidates are timed at, unless told otherwise."""
ENCODE_CHUNK = 16
"""Avatar frames encoded per step of the feature-encoding progress."""
BUILD_ESTIMATE_S = {"openvino-fp32": 4.0, "openvino-int8": 12.0}
"""First guesses of a model build on a small CPU, until one has been timed here."""

# --- features -------------------------------------------------------------------------------------------------


def generator_faces(crops: np.ndarray) -> np.ndarray:
    """The generator's face input for avatar crops (N, 96, 96, 3) uint8 BGR: (N, 6, 96, 96) float32 in [0, 1], the
    crop with its lower half zeroed, then the crop itself as the reference (the reference's inference input)."""
    faces = np.asarray(crops, dtype=np.float32).transpose(0, 3, 1, 2) / np.float32(255.0)
    masked = faces.copy()
    masked[:, :, faces.shape[2] // 2 :] = 0
    return np.ascontiguousarray(np.concatenate([masked, faces], axis=1))


def load_or_encode_features(
    model: nn.Module | LazyModel, crops: np.ndarray, path: Path, *, device: str = "cpu", dtype: Any = np.float16
) -> list[np.ndarray]:
    """The avatar's per-frame face-encoder features, read (memory-mapped) from ``path`` when it holds them for
    these crops, otherwise encoded (reported as the set-up step "encoding face features") and saved there: one
    (N, 290816) ``.npy``, returned as seven (N, C, H, W) views."""
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
        flat = np.empty((len(crops), width), dtype=dtype)
        with setup_progress.step("encoding face features", len(crops), unit="frames") as step:
            for start in range(0, len(crops), ENCODE_CHUNK):
                chunk = crops[start : start + ENCODE_CHUNK]
                features = encode_features(resolve_model(model), generator_faces(chunk), dtype=dtype, device=device)
                flat[start : start + len(chunk)] = np.concatenate([f.reshape(len(chunk), -1) for f in features], axis=1)
                step.update(start + len(chunk))
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


# --- the engine's entry point: a backend bound to one avatar -------------------------------------------------


class AvatarBackend:
    """A backend bound to one avatar's cached features: ``predict(mel (B,1,80,16), frames)`` with prepared-frame
    indices -> (B, 3, 96, 96) float32 BGR in [0, 1]. ``reports`` tell what was measured when it was chosen (now,
    or when the stored ``decision`` was made)."""

    def __init__(
        self, backend: Backend, features: Features, reports: list[BackendReport], decision: Decision | None = None
    ) -> None:
        self.backend = backend
        self.features = features
        self.reports = reports
        self.decision = decision
        """The stored decision this backend follows or just made (``auto`` only)."""

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
    model: nn.Module | LazyModel,
    device: DeviceChoice,
    avatar: Any,
    weights_id: str,
    *,
    request: str = "auto",
    calibration_mels: np.ndarray | Callable[[], np.ndarray],
    cache_dir: Path | None = None,
    batch_size: int = MEASURE_BATCH,
    streams: int = 1,
    tolerance: Tolerance | None = None,
    candidates: Sequence[str] | None = None,
    decisions: DecisionStore | None = None,
    remeasure: bool = False,
    samples: int = 16,
    log: Callable[[str], None] | None = None,
) -> AvatarBackend:
    """Everything the engine needs at start-up: the avatar's features (cached in ``avatar.features_path``) and the
    backend ``request`` names: ``auto``, the decision stored for these weights, avatar, machine and settings
    (``decisions``, default the weights folder's; measured again when none applies, when its backend cannot be
    built any more, or when ``remeasure``), or the fastest of ``candidates`` within ``tolerance``, measured and
    stored; or ``torch``, ``openvino-fp32``, ``openvino-int8``, used whatever its error (logged), never stored.
    ``calibration_mels`` (speech mel windows (M, 1, 80, 16), or a function making them) is used only when
    something is measured or an int8 model built. OpenVINO models are cached in ``cache_dir`` (default: the
    avatar folder's ``backends``); each candidate is timed and judged on ``samples`` (mel window, frame) pairs.
    ``avatar`` needs ``crops`` (N, 96, 96, 3) uint8 BGR, ``features_path(weights_id)``
    and ``folder`` (and ``source_sha256`` when it has one)."""
    say = log or logger.info
    features = load_or_encode_features(model, avatar.crops, avatar.features_path(weights_id), device=device.device)
    candidates, tolerance = _candidates(request, device, tolerance, candidates)
    cache = Path(cache_dir) if cache_dir is not None else Path(avatar.folder) / "backends"
    avatar_id = str(getattr(avatar, "source_sha256", None) or Path(avatar.folder).name)
    sets = _CalibrationSets(calibration_mels, features, batch_size, samples)
    store = (decisions or DecisionStore(weights_id)) if request == "auto" else None
    builder = _ReportingBuilder(cache, weights_id, avatar_id, store)
    key: dict[str, Any] = {}
    if store is not None:
        key = decision_key(weights_id=weights_id, avatar=avatar, device=device.device, candidates=candidates,
                           tolerance=asdict(tolerance), batch_size=batch_size, streams=streams)
        decision, why = (None, "asked to measure again") if remeasure else store.lookup(key)
        if decision is not None:
            try:
                backend, _ = builder(model, decision.backend, device, cache, weights_id, avatar_id, sets.lazy, streams)
            except (InputError, Unavailable, RuntimeError, OSError, ValueError) as error:
                why = f"the decided backend {decision.backend} cannot be built any more ({error})"
            else:
                say(f"wav2lip: backend {decision.summary()}")
                return AvatarBackend(backend, features, decision.reports, decision)
        say(f"wav2lip: measuring backends: {why}")
    with setup_progress.step("measuring backends", len(candidates), unit="backends") as step:
        backend, reports = choose_backend(
            model, sets.calibration, device=device, cache_dir=cache, weights_id=weights_id, avatar_id=avatar_id,
            candidates=candidates, tolerance=tolerance, batch_size=batch_size, streams=streams,
            evaluation=sets.evaluation, repeats=1, log=say, progress=step.update, builder=builder,
        )  # fmt: skip
    if request not in ("auto", "torch", "torch-fp32", "torch-fp16") and backend.name != request:
        reason = next((r.skipped for r in reports if r.name == request and r.skipped), "it could not be built")
        raise InputError(
            f"backend {request} cannot be used: {reason}", hint='use backend = "auto" to fall back to torch'
        )
    stored = store.store(key, backend.name, reports) if store is not None else None
    return AvatarBackend(backend, features, reports, stored)


def _candidates(
    request: str, device: DeviceChoice, tolerance: Tolerance | None, candidates: Sequence[str] | None
) -> tuple[tuple[str, ...], Tolerance]:
    if request == "auto":
        default = BACKEND_NAMES if device.kind == "cpu" else ("torch-fp32",)
        return tuple(candidates or default), tolerance or Tolerance()
    if request in ("torch", *BACKEND_NAMES, "torch-fp16"):
        return (request,), Tolerance(mean_abs=1.0, max_abs=1.0, psnr_db=0.0)  # asked for by name: anything finite
    raise InputError(
        f"backend {request!r} is not one of auto, torch, {', '.join(BACKEND_NAMES[1:])}",
        hint='use backend = "auto" to take the fastest one whose error against fp32 is within tolerance',
    )


class _CalibrationSets:
    """The calibration and evaluation sets, made from the speech mel windows only when first needed (making the
    windows synthesises speech)."""

    def __init__(
        self, mels: np.ndarray | Callable[[], np.ndarray], features: Features, batch_size: int, samples: int
    ) -> None:
        self._mels = mels
        self._features = features
        self._batch_size = batch_size
        self._samples = samples
        self.lazy = _LazySequence(lambda: self.calibration)

    @cached_property
    def _split(self) -> tuple[np.ndarray, np.ndarray]:
        source = self._mels() if callable(self._mels) else self._mels
        mels = np.asarray(source, dtype=np.float32).reshape(-1, 1, 80, 16)
        split = max(1, len(mels) * 2 // 3) if len(mels) >= 6 else len(mels)
        return mels[:split], mels[split:] if split < len(mels) else mels  # judge on speech not used to calibrate

    @cached_property
    def calibration(self) -> Calibration:
        return make_calibration(self._split[0], self._features, count=32)

    @cached_property
    def evaluation(self) -> Calibration:
        return make_calibration(self._split[1], self._features, count=self._samples, batch_size=self._batch_size,
                                seed=1)


class _LazySequence(Sequence[Any]):
    """A sequence made on first use: a model build reads the calibration set only when it must build."""

    def __init__(self, make: Callable[[], Sequence[Any]]) -> None:
        self._make = make

    @cached_property
    def _items(self) -> Sequence[Any]:
        return self._make()

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: Any) -> Any:
        return self._items[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)


class _ReportingBuilder:
    """:func:`make_backend`, reporting an OpenVINO model that must be built (not loaded) as a set-up step."""

    def __init__(self, cache: Path, weights_id: str, avatar_id: str, store: DecisionStore | None) -> None:
        self.cache, self.weights_id, self.avatar_id, self.store = cache, weights_id, avatar_id, store

    def __call__(self, model: nn.Module | LazyModel, name: str, device: DeviceChoice, *args: Any) -> tuple[Backend, BuildInfo | None]:
        if device.kind != "cpu" or name not in BUILD_ESTIMATE_S or self._cached(name):
            return make_backend(model, name, device, *args)
        what = "export + calibration + compile" if name == "openvino-int8" else "export + compile"
        estimate = (self.store.build_seconds(name) if self.store is not None else None) or BUILD_ESTIMATE_S[name]
        with setup_progress.step(f"building {name} ({what})", estimate_s=estimate):
            return make_backend(model, name, device, *args)

    def _cached(self, name: str) -> bool:
        """Whether the model is in the cache (as :func:`~.openvino_build.build_openvino_backend` names it); only
        decides what is shown."""
        try:
            from anchorcast_plugins.engines.wav2lip.openvino_build import QuantisationSettings, cache_key

            key = cache_key(name, self.weights_id, self.avatar_id, QuantisationSettings())
        except Exception:  # OpenVINO missing: make_backend says so
            return True
        return (self.cache / f"decoder-{name}-{key}.xml").is_file()
