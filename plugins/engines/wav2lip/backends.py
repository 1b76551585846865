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

OpenVINO models are cached on disk (``cache_dir``) keyed by weights id, avatar id and :data:`BACKEND_VERSION`, so
later runs load them in about a second. :func:`choose_backend` times the candidates on the calibration set and
picks the fastest whose error against fp32 is within tolerance. OpenVINO backends built with ``streams=2`` run in
throughput mode: keep two batches in flight with ``submit``.

The engine's entry point is :func:`backend_for_avatar`: features cached in the avatar folder, calibration from the
avatar's frames and speech, the choice, and ``predict(mel, frame_indices)``.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import math
import os
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.devices import DeviceChoice, select_device, synchronize

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


# --- BatchNorm folding and cached features ---------------------------------------------------------------


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """An equivalent eval-mode model with every BatchNorm2d that follows a Conv2d/ConvTranspose2d in a Sequential
    folded into that convolution's weight and bias (the BatchNorm becomes an Identity)."""
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


@torch.no_grad()
def _fold_into(conv: nn.Conv2d | nn.ConvTranspose2d, norm: nn.BatchNorm2d) -> None:
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


@torch.inference_mode()
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
    if faces.ndim != 4 or faces.shape[1:] != (6, 96, 96):
        raise ValueError(f"faces must be (N, 6, 96, 96), got {faces.shape}")
    model = model.eval()
    parameter = next(model.parameters())
    outputs: list[list[np.ndarray]] = [[] for _ in FEATURE_SHAPES]
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
        self, model: nn.Module, device: DeviceChoice | None = None, *, threads: int | None = None
    ) -> None:
        self.device = device or select_device("cpu")
        self.name = "torch-fp16" if self.device.half else "torch-fp32"
        if self.device.kind == "cpu":
            torch.set_num_threads(threads or cpu_cores())
        folded = fold_batchnorm(model)
        self.model = folded.to(
            device=self.device.device, dtype=self.device.dtype, memory_format=torch.channels_last
        )

    @torch.inference_mode()
    def predict(self, mel: np.ndarray, features: Features) -> np.ndarray:
        audio = self._tensor(mel)
        skips = [self._tensor(feature) for feature in features]
        out = self.model.decode(audio, skips)
        return out.float().cpu().numpy()

    def _tensor(self, array: np.ndarray) -> torch.Tensor:
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


# --- OpenVINO build and cache ----------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantisationSettings:
    """How the int8 model is made (part of the cache key)."""

    per_channel: bool = True
    reduce_range: bool = False
    """7-bit weights; only useful where an int8 kernel would saturate (OpenVINO's kernels do not need it)."""
    keep_float: tuple[str, ...] = ("final_conv", "sigmoid")


@dataclass
class BuildInfo:
    """How a cached model came to be, and how long it took."""

    backend: str
    path: str
    cached: bool
    seconds: float
    key: str
    details: dict[str, Any] = field(default_factory=dict)


def openvino_available() -> str | None:
    """None when OpenVINO can be imported, otherwise why not."""
    try:
        import openvino  # noqa: F401
    except Exception as error:
        return f"openvino is not usable ({type(error).__name__}: {error})"
    return None


@functools.cache
def openvino_core() -> Any:
    """The one ``openvino.Core`` of the process, kept for its whole life.

    Each Core's CPU plugin installs its own signal stack (``sigaltstack``) on the thread that first compiles with
    it, and puts back the one it found when its last compiled model goes. Compiled models from several Cores
    going in another order than they came (a discarded candidate backend, a rebuilt cache entry) left a freed
    stack installed, and the next Ctrl-C (a signal handler runs on that stack) crashed the process with SIGSEGV.
    """
    import openvino as ov

    return ov.Core()


def cache_key(backend: str, weights_id: str, avatar_id: str | None, settings: QuantisationSettings) -> str:
    """A short hash of everything the cached model depends on."""
    import openvino as ov

    parts = {
        "backend": backend,
        "weights": weights_id,
        "avatar": avatar_id if backend == "openvino-int8" else None,
        "version": BACKEND_VERSION,
        "openvino": ov.__version__,
        "quantisation": asdict(settings) if backend == "openvino-int8" else None,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def build_openvino_backend(
    model: nn.Module,
    backend: str,
    *,
    cache_dir: Path,
    weights_id: str,
    avatar_id: str | None = None,
    calibration: Calibration | None = None,
    streams: int = 1,
    threads: int | None = None,
    settings: QuantisationSettings | None = None,
) -> tuple[OpenVinoBackend, BuildInfo]:
    """An OpenVINO backend (``openvino-fp32`` or ``openvino-int8``), loaded from ``cache_dir`` when a model for the
    same weights (and, for int8, the same avatar) was built before; otherwise exported, quantised on
    ``calibration`` and saved there. Raises InputError when OpenVINO is missing."""
    if backend not in ("openvino-fp32", "openvino-int8"):
        raise ValueError(f"not an OpenVINO backend: {backend}")
    reason = openvino_available()
    if reason is not None:
        raise InputError(f"backend {backend} needs OpenVINO: {reason}", hint=_INSTALL_HINT)

    settings = settings or QuantisationSettings()
    started = time.perf_counter()
    key = cache_key(backend, weights_id, avatar_id, settings)
    cache_dir = Path(cache_dir)
    xml = cache_dir / f"decoder-{backend}-{key}.xml"
    cached = xml.is_file() and xml.with_suffix(".bin").is_file()
    details: dict[str, Any] = {}
    if not cached:
        if backend == "openvino-int8" and not calibration:
            raise ValueError("openvino-int8 needs a calibration set of (mel, features) pairs")
        details = _build_ir(model, backend, xml, calibration, settings)
        _write_json(xml.with_suffix(".json"), {"weights": weights_id, "avatar": avatar_id, **details})
    config: dict[str, Any] = {
        "INFERENCE_NUM_THREADS": threads or cpu_cores(),
        # fp32 semantics everywhere: CPUs with AMX would otherwise silently run the float parts in bfloat16.
        "INFERENCE_PRECISION_HINT": "f32",
    }
    if streams > 1:
        config |= {"PERFORMANCE_HINT": "THROUGHPUT", "NUM_STREAMS": streams}
    else:
        config |= {"PERFORMANCE_HINT": "LATENCY"}
    try:
        compiled = openvino_core().compile_model(openvino_core().read_model(xml), "CPU", config)
    except RuntimeError:
        if not cached:
            raise
        xml.unlink(missing_ok=True)  # a damaged cache entry: build it again
        return build_openvino_backend(
            model, backend, cache_dir=cache_dir, weights_id=weights_id, avatar_id=avatar_id,
            calibration=calibration, streams=streams, threads=threads, settings=settings,
        )  # fmt: skip
    info = BuildInfo(backend, str(xml), cached, time.perf_counter() - started, key, details)
    return OpenVinoBackend(compiled, backend, streams), info


def _build_ir(
    model: nn.Module, backend: str, xml: Path, calibration: Calibration | None, settings: QuantisationSettings
) -> dict[str, Any]:
    """Exports the folded decode path to ONNX, quantises it for int8, and saves OpenVINO IR at ``xml``."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="w2l-export-", dir=xml.parent) as scratch:
        started = time.perf_counter()
        onnx_path = Path(scratch) / "decoder-fp32.onnx"
        export_decoder_onnx(model, onnx_path)
        details: dict[str, Any] = {"export_s": round(time.perf_counter() - started, 2)}
        if backend == "openvino-int8":
            started = time.perf_counter()
            assert calibration is not None
            quantised = Path(scratch) / "decoder-int8.onnx"
            quantise_decoder(onnx_path, quantised, calibration, settings)
            onnx_path = quantised
            details |= {"quantise_s": round(time.perf_counter() - started, 2), "calibration": len(calibration)}
        ir = openvino_core().read_model(onnx_path)
        temporary = Path(scratch) / "model.xml"
        ov.save_model(ir, temporary, compress_to_fp16=False)
        os.replace(temporary.with_suffix(".bin"), xml.with_suffix(".bin"))
        os.replace(temporary, xml)  # the .xml last: its presence marks a complete entry
    return details


class _Decoder(nn.Module):
    """The decode path with the seven skip features as separate inputs (an exportable signature)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
        return self.model.decode(mel, list(features))


def export_decoder_onnx(model: nn.Module, path: Path, *, opset: int = 17) -> None:
    """Writes the BatchNorm-folded decode path as ONNX: inputs ``mel`` (B,1,80,16) and ``face0``..``face6``, output
    ``pred`` (B,3,96,96), batch dimension dynamic."""
    folded = fold_batchnorm(model).float()
    mel = torch.zeros(1, 1, 80, 16)
    features = [torch.zeros(1, *shape) for shape in FEATURE_SHAPES]
    names = [*INPUT_NAMES, "pred"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice; it needs no onnxscript
        torch.onnx.export(
            _Decoder(folded),
            (mel, *features),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=["pred"],
            dynamic_axes={name: {0: "batch"} for name in names},
            opset_version=opset,
            dynamo=False,
        )


class _CalibrationReader:
    """Feeds (mel, features) pairs to ONNX Runtime's calibrator."""

    def __init__(self, calibration: Calibration) -> None:
        self._items: Iterator[tuple[np.ndarray, Features]] = iter(calibration)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._items, None)
        if item is None:
            return None
        mel, features = item
        return dict(zip(INPUT_NAMES, _inputs(mel, features), strict=True))

    def rewind(self) -> None:  # pragma: no cover - ONNX Runtime calls it only for some calibrators
        raise NotImplementedError


def quantise_decoder(
    source: Path, target: Path, calibration: Calibration, settings: QuantisationSettings | None = None
) -> None:
    """Post-training static quantisation of the exported decoder (QDQ: int8 per-channel weights, uint8 activations
    calibrated by min/max on ``calibration``), keeping the final 1x1 convolution and the sigmoid in float."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    settings = settings or QuantisationSettings()
    graph = onnx.load(str(source), load_external_data=False).graph

    class Reader(_CalibrationReader, CalibrationDataReader):
        pass

    quiet = _DropRecordsFrom("onnxruntime")
    logging.getLogger().addFilter(quiet)  # its advice to pre-process goes to the root logger as warnings
    try:
        quantize_static(
            str(source),
            str(target),
            Reader(calibration),
            quant_format=QuantFormat.QDQ,
            per_channel=settings.per_channel,
            reduce_range=settings.reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=_float_nodes(graph, settings.keep_float),
        )
    finally:
        logging.getLogger().removeFilter(quiet)


class _DropRecordsFrom(logging.Filter):
    def __init__(self, package: str) -> None:
        super().__init__()
        self.package = package

    def filter(self, record: logging.LogRecord) -> bool:
        return f"{os.sep}{self.package}{os.sep}" not in record.pathname


def _float_nodes(graph: Any, keep: Sequence[str]) -> list[str]:
    """Names of the nodes to leave unquantised: the sigmoid and the convolution feeding it."""
    sigmoid = next(node for node in graph.node if node.op_type == "Sigmoid")
    producer = next(node for node in graph.node if sigmoid.input[0] in node.output)
    chosen = []
    if "sigmoid" in keep:
        chosen.append(sigmoid.name)
    if "final_conv" in keep:
        chosen.append(producer.name)
    return chosen


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True))


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
