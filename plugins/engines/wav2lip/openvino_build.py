"""OpenVINO backends of the Wav2Lip generator: the decode path exported to ONNX, quantised to int8 on the avatar's
own calibration set, saved as OpenVINO IR in a cache keyed by what it depends on, and compiled by the process's
one ``openvino.Core`` (see :mod:`~anchorcast_plugins.engines.wav2lip.backends` for the backends themselves)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.backends import (
    _INSTALL_HINT,
    BACKEND_VERSION,
    FEATURE_SHAPES,
    INPUT_NAMES,
    Calibration,
    Features,
    OpenVinoBackend,
    _inputs,
    cpu_cores,
    fold_batchnorm,
    resolve_model,
)

if TYPE_CHECKING:
    from torch import nn

    from anchorcast_plugins.engines.wav2lip.backends import LazyModel

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
    model: nn.Module | LazyModel,
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
    model: nn.Module | LazyModel, backend: str, xml: Path, calibration: Calibration | None,
    settings: QuantisationSettings,
) -> dict[str, Any]:
    """Exports the folded decode path to ONNX, quantises it for int8, and saves OpenVINO IR at ``xml``."""
    import openvino as ov

    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="w2l-export-", dir=xml.parent) as scratch:
        started = time.perf_counter()
        onnx_path = Path(scratch) / "decoder-fp32.onnx"
        export_decoder_onnx(resolve_model(model), onnx_path)
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


def _decoder(model: nn.Module) -> nn.Module:
    """The decode path with the seven skip features as separate inputs (an exportable signature)."""
    import torch
    from torch import nn

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, mel: torch.Tensor, *features: torch.Tensor) -> torch.Tensor:
            return self.model.decode(mel, list(features))

    return Decoder()


def export_decoder_onnx(model: nn.Module, path: Path, *, opset: int = 17) -> None:
    """Writes the BatchNorm-folded decode path as ONNX: inputs ``mel`` (B,1,80,16) and ``face0``..``face6``, output
    ``pred`` (B,3,96,96), batch dimension dynamic."""
    import torch

    folded = fold_batchnorm(model).float()
    mel = torch.zeros(1, 1, 80, 16)
    features = [torch.zeros(1, *shape) for shape in FEATURE_SHAPES]
    names = [*INPUT_NAMES, "pred"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice; it needs no onnxscript
        torch.onnx.export(
            _decoder(folded),
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


