"""The coefficient model exported for the CPU runtimes the project already uses (ONNX Runtime, OpenVINO).

What is exported is the engine's steady-state pass (:mod:`.batching`): a run of frames with its full 1.2 s
context, ``n = (stop - start) + 125`` feature columns in, ``stop - start`` columns of logits out. With the full
context the slicing between layers is fixed (20 columns dropped at the front of every layer, the 5 lookahead
columns after the first). The graph has one length, :data:`COLUMNS` (runs of up to 64 columns: 16 frames at
25 fps); a shorter run is padded at the front, which changes nothing it outputs: no wanted column reaches back
past its own 120 columns of context. The positional encoding is an input (it depends on the absolute column).
Runs near the start of the timeline (less context) and longer ones go to torch.

``scripts/bench_face3d.py`` measures torch against both; the engine uses :data:`PREFERRED` where it is
installed, with torch as the fallback.
"""

from __future__ import annotations

import io
import logging
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from .batching import LogitsFunction, torch_logits
from .coeff_model import LOOKAHEAD_COLUMNS, CoefficientModel, band_mask

log = logging.getLogger(__name__)
RUNTIMES = ("onnxruntime", "openvino")
PREFERRED: str | None = "onnxruntime"
"""The runtime the engine uses (None: torch), from the bench table: ONNX Runtime on one thread beat torch on one
and on two (which also suffers most when other processes share the cores), and OpenVINO on one thread was even."""
Float32Array = npt.NDArray[np.float32]
RUN_COLUMNS = 64
COLUMNS = RUN_COLUMNS + 120 + LOOKAHEAD_COLUMNS
"""The exported graph's input length (for the default model: 120 context columns)."""


class ExportUnavailable(RuntimeError):
    """The runtime is not installed or could not take the model."""


class _SteadyState(nn.Module):
    """``token_logits`` for a run with its full context, as a graph with a dynamic length."""

    def __init__(self, model: CoefficientModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, mel: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        model = self.model
        window = model.config.layer_window
        x = model.input(mel) + positions
        for depth, layer in enumerate(model.encoder.layers):
            ahead = LOOKAHEAD_COLUMNS if depth == 0 else 0
            x = layer(x, src_mask=band_mask(x.shape[1], window, ahead, x.device))
            x = x[:, window: x.shape[1] - ahead]
        return model.head(model.encoder.norm(x))


def export_onnx(model: CoefficientModel, opset: int = 17) -> bytes:
    """Writes the steady-state pass as ONNX: inputs ``mel`` (1, n, 80) and ``positions`` (n, width), output
    ``logits`` (1, n - 125, 53), for ``n = context + 5 + 64`` (:data:`COLUMNS` for the default model)."""
    steady = _SteadyState(model.eval()).eval()
    columns = model.context_columns + LOOKAHEAD_COLUMNS + RUN_COLUMNS
    mel = torch.zeros(1, columns, model.input.in_features)
    positions = model.positional_encoding(0, columns)
    stream = io.BytesIO()
    # with gradients on: under no_grad torch takes its fused encoder-layer kernel, which ONNX has no operator for
    with warnings.catch_warnings(), torch.enable_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's notices
        torch.onnx.export(steady, (mel, positions), stream, input_names=["mel", "positions"],
                          output_names=["logits"], opset_version=opset, dynamo=False)
    return stream.getvalue()


def exported_logits(model: CoefficientModel, runtime: str, threads: int = 1) -> LogitsFunction:
    """A :data:`~.batching.LogitsFunction` running the exported pass in ``runtime`` on ``threads`` threads
    (full-context runs) and torch (the rest); ExportUnavailable when the runtime cannot be used."""
    try:
        graph = export_onnx(model)
        run = _onnxruntime(graph, threads) if runtime == "onnxruntime" else _openvino(graph, threads)
    except ExportUnavailable:
        raise
    except Exception as error:  # the exporters and runtimes raise many kinds
        raise ExportUnavailable(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") \
            from None
    fallback = torch_logits(model)

    context = model.context_columns
    size = context + LOOKAHEAD_COLUMNS + RUN_COLUMNS

    def logits(mel: Float32Array, first: int, keep: tuple[int, int]) -> Float32Array:
        start, stop = keep
        if first != start - context or mel.shape[0] != stop - start + context + LOOKAHEAD_COLUMNS \
                or stop - start > RUN_COLUMNS:
            return fallback(mel, first, keep)
        pad = size - mel.shape[0]
        padded = np.zeros((1, size, mel.shape[1]), np.float32)
        padded[0, pad:] = mel
        positions = np.zeros((size, model.config.width), np.float32)
        with torch.no_grad():
            positions[pad:] = model.positional_encoding(first, mel.shape[0]).numpy()
        return run(padded, positions)[pad:]

    return logits


def _onnxruntime(graph: bytes, threads: int) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as error:
        raise ExportUnavailable(f"onnxruntime is not installed ({error})") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])

    def run(mel: Float32Array, positions: Float32Array) -> Float32Array:
        return session.run(["logits"], {"mel": mel, "positions": positions})[0][0]

    return run


def _openvino(graph: bytes, threads: int) -> Any:
    from ..wav2lip.openvino_build import openvino_available, openvino_core

    why = openvino_available()
    if why is not None:
        raise ExportUnavailable(why)
    core = openvino_core()
    compiled = core.compile_model(core.read_model(graph, b""), "CPU",
                                  {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
                                   "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()

    def run(mel: Float32Array, positions: Float32Array) -> Float32Array:
        request.infer({"mel": mel, "positions": positions})
        return np.array(request.get_output_tensor(0).data[0], np.float32)

    return run


def best_logits(model: CoefficientModel, threads: int = 1) -> LogitsFunction | None:
    """The :data:`PREFERRED` runtime's logits for ``model``, or None (torch) where it cannot be used."""
    if PREFERRED is None:
        return None
    try:
        return exported_logits(model, PREFERRED, threads)
    except ExportUnavailable as why:
        log.info("face3d: the coefficient model runs in torch (%s: %s)", PREFERRED, why)
        return None
