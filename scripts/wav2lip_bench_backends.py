"""The generator-only backend table of scripts/bench_wav2lip.py (rows torch eager reference, torch-fp32,
openvino-fp32, openvino-int8, openvino-int8 x2 by batch size; GFLOP/s and the ratio to fp32 and int8 GEMMs measured
in the same run), and the timing helpers the other wav2lip bench modules share."""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table
from torch import nn

from anchorcast_plugins.engines.wav2lip import backend_choice as choice
from anchorcast_plugins.engines.wav2lip import backends as wb
from anchorcast_plugins.engines.wav2lip import openvino_build as ovb
from anchorcast_plugins.engines.wav2lip.models import Wav2Lip

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.wav2lip_inputs import avatar_faces


def gemm_fp32(n: int = 4096) -> float:
    """GFLOP/s of torch.mm on two n x n fp32 matrices."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / _median_time(lambda: torch.mm(a, b)) / 1e9


def gemm_int8(n: int = 4096) -> float | None:
    """GOP/s of torch's quantized linear (fbgemm, uint8 activations x int8 weights, int32 accumulation)."""
    warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
    try:
        torch.backends.quantized.engine = "fbgemm"
        x = torch.quantize_per_tensor(torch.rand(n, n), 1 / 255, 0, torch.quint8)
        w = torch.quantize_per_tensor(torch.randn(n, n) / 10, 0.01, 0, torch.qint8)
        packed = torch.ops.quantized.linear_prepack(w, None)
        return 2 * n**3 / _median_time(lambda: torch.ops.quantized.linear(x, packed, 0.5, 128)) / 1e9
    except Exception:
        return None


def _median_time(run: Callable[[], Any], warmup: int = 2, repeats: int = 5) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def count_flops(model: nn.Module, run: Callable[[], Any]) -> float:
    """FLOPs (2 per multiply-add) of the convolutions ``run`` executes on ``model``, biases left out."""
    total = 0.0

    def conv_hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        nonlocal total
        kernel = math.prod(module.kernel_size)
        if isinstance(module, nn.ConvTranspose2d):  # every input element is scattered through the kernel
            total += 2.0 * inputs[0].numel() * module.out_channels * kernel / module.groups
        else:
            total += 2.0 * output.numel() * module.in_channels * kernel / module.groups

    hooks = [
        m.register_forward_hook(conv_hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d)
    ]
    try:
        with torch.inference_mode():
            run()
    finally:
        for hook in hooks:
            hook.remove()
    return total


def measure(
    run: Callable[[], Any],
    batch: int,
    seconds: float,
    *,
    in_flight: int = 1,
    submit: Any = None,
    passes: int = 2,
    min_count: int = 5,
) -> dict[str, float]:
    """frames/s and latency per batch (p50/p95, ms), from the faster of ``passes`` timed passes (other work on a
    shared machine slows single passes). With ``in_flight`` > 1, ``submit()`` returns futures and that many
    batches are kept running; latency is then per request (submit to result). Each pass times at least
    ``min_count`` batches."""
    for _ in range(2):
        run()
    first = time.perf_counter()
    run()
    estimate = time.perf_counter() - first
    count = int(min(60, max(min_count, seconds / passes / max(estimate, 1e-6) * in_flight)))
    results = [_timed_pass(run, submit, count, batch, in_flight) for _ in range(passes)]
    return max(results, key=lambda result: result["fps"])


def _timed_pass(run: Callable[[], Any], submit: Any, count: int, batch: int, in_flight: int) -> dict[str, float]:
    latencies: list[float] = []
    started = time.perf_counter()
    if in_flight > 1:
        pending: list[tuple[float, Any]] = []
        for _ in range(count):
            if len(pending) == in_flight:
                since, future = pending.pop(0)
                future.result()
                latencies.append(time.perf_counter() - since)
            pending.append((time.perf_counter(), submit()))
        for since, future in pending:
            future.result()
            latencies.append(time.perf_counter() - since)
    else:
        for _ in range(count):
            since = time.perf_counter()
            run()
            latencies.append(time.perf_counter() - since)
    wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "fps": count * batch / wall,
        "p50_ms": float(np.percentile(ms, 50)),
        "p95_ms": float(np.percentile(ms, 95)),
    }


def cpu_line() -> str:
    try:
        flags_text = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags_text = ""
    flags = next((line for line in flags_text.splitlines() if line.startswith("flags")), "") + " "
    isa = [
        name for name in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f" {name} " in flags
    ]
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA")
    names = [line.split(":", 1)[1].strip() for line in flags_text.splitlines() if line.startswith("model name")]
    model = names[0] if names else platform.processor() or platform.machine()
    return f"{model}; {', '.join(isa)}" + (f"; ONEDNN_MAX_CPU_ISA={cap}" if cap else "")


def backend_table(
    console: Console,
    *,
    batches: list[int],
    threads: int,
    seconds: float,
    cache_dir: Path | None = None,
    skip: set[str] | None = None,
    weights_id: str = "bench-random-seed0",
    avatar_id: str = "bench-astronaut",
    gemm_n: int = 4096,
    min_count: int = 5,
) -> dict[str, Any]:
    """Measures and prints the generator-only backend table; returns its figures (JSON-ready). OpenVINO models
    are built in ``cache_dir`` (a temporary folder by default) or loaded from it when ``weights_id`` and
    ``avatar_id`` name models already there (the engine's own, see scripts/bench_wav2lip.py)."""
    skip = skip or set()
    torch.set_num_threads(threads)
    gemm32 = gemm_fp32(gemm_n)
    gemm8 = gemm_int8(gemm_n)
    console.print(f"CPU: {cpu_line()}; {threads} threads; torch {torch.__version__}")
    console.print(
        f"GEMM {gemm_n}^2, same run: fp32 torch.mm {gemm32:.0f} GFLOP/s; int8 torch quantized linear (fbgemm) "
        + (f"{gemm8:.0f} GOP/s" if gemm8 else "unavailable")
    )

    torch.manual_seed(0)
    model = Wav2Lip().eval()
    biggest = max(batches)
    rng = np.random.default_rng(0)
    faces_np = avatar_faces(biggest)
    mel_np = np.clip(rng.normal(-1.5, 1.5, size=(biggest, 1, 80, 16)), -4, 4).astype(np.float32)
    features = wb.encode_features(model, faces_np, dtype=np.float16)
    faces, mel = torch.from_numpy(faces_np), torch.from_numpy(mel_np)
    full_flops = count_flops(model, lambda: model(mel[:1], faces[:1]))
    decode_flops = count_flops(model, lambda: model.decode(mel[:1], model.encode_face(faces[:1]))) - count_flops(
        model, lambda: model.encode_face(faces[:1])
    )
    console.print(
        f"FLOPs per frame: full generator {full_flops / 1e9:.2f} G; cached-features decode {decode_flops / 1e9:.2f} G "
        f"(face encoder {100 * (1 - decode_flops / full_flops):.1f}% left out); cached features "
        f"{wb.feature_bytes_per_frame(np.float16) / 1e6:.2f} MB per avatar frame in float16"
    )

    rows: list[dict[str, Any]] = []
    reference_full = model
    torch_backend = wb.TorchBackend(model, threads=threads)

    def add_rows(
        label: str, flops: float, int8: bool, run_for: Callable[[int], Callable[[], Any]], **extra: Any
    ) -> None:
        if label.split(" ")[0] in skip or label in skip:
            return
        for batch in batches:
            stats = measure(
                run_for(batch), batch, seconds, min_count=min_count, **{k: v(batch) for k, v in extra.items()}
            )
            gflops = stats["fps"] * flops / 1e9
            rows.append(
                {
                    "backend": label,
                    "batch": batch,
                    **stats,
                    "gflops": gflops,
                    "x_fp32_gemm": gflops / gemm32,
                    "x_int8_gemm": gflops / gemm8 if int8 and gemm8 else None,
                }
            )
            console.print(f"  {label} batch {batch}: {stats['fps']:.1f} frames/s", style="dim")

    with torch.inference_mode():
        add_rows(
            "torch eager (reference)", full_flops, False, lambda b: lambda: reference_full(mel[:b], faces[:b])
        )
    feats = lambda b: [f[:b] for f in features]  # noqa: E731
    add_rows("torch-fp32", decode_flops, False, lambda b: lambda: torch_backend.predict(mel_np[:b], feats(b)))

    calibration = wb.make_calibration(mel_np, features, count=16)
    cache = Path(cache_dir or tempfile.mkdtemp(prefix="w2l-bench-"))
    notes: list[str] = []
    errors: dict[str, str] = {}
    reference = torch_backend.predict(mel_np, features)
    for name, streams in (("openvino-fp32", 1), ("openvino-int8", 1), ("openvino-int8", 2)):
        label = name if streams == 1 else f"{name} x{streams}"
        if name in skip or label in skip:
            continue
        if ovb.openvino_available() is not None:
            notes.append(f"{label}: {ovb.openvino_available()}")
            continue
        build_args = {
            "cache_dir": cache,
            "weights_id": weights_id,
            "avatar_id": avatar_id,
            "calibration": calibration,
            "threads": threads,
        }
        backend, info = ovb.build_openvino_backend(model, name, streams=streams, **build_args)
        if not info.cached:
            backend.close()
            backend, warm = ovb.build_openvino_backend(model, name, streams=streams, **build_args)
            notes.append(
                f"{label}: built in {info.seconds:.1f} s {info.details}, loaded from cache in {warm.seconds:.2f} s"
            )
        errors[label] = str(choice.prediction_error(reference, backend.predict(mel_np, features)))
        int8 = name.endswith("int8")
        if streams == 1:
            add_rows(label, decode_flops, int8, lambda b, be=backend: lambda: be.predict(mel_np[:b], feats(b)))
        else:
            add_rows(
                label,
                decode_flops,
                int8,
                lambda b, be=backend: lambda: be.predict(mel_np[:b], feats(b)),
                in_flight=lambda b, n=streams: n,
                submit=lambda b, be=backend: lambda: be.submit(mel_np[:b], feats(b)),
            )
        backend.close()

    table = Table(title=f"Wav2Lip generator on {threads} CPU threads (random weights, 96x96)")
    for column in ("backend", "batch", "frames/s", "p50 ms", "p95 ms", "GFLOP/s", "x fp32 GEMM", "x int8 GEMM"):
        table.add_column(column, justify="left" if column == "backend" else "right")
    best: dict[str, float] = {}
    for row in rows:
        best[row["backend"]] = max(best.get(row["backend"], 0.0), row["fps"])
        table.add_row(
            row["backend"],
            str(row["batch"]),
            f"{row['fps']:.1f}",
            f"{row['p50_ms']:.0f}",
            f"{row['p95_ms']:.0f}",
            f"{row['gflops']:.0f}",
            f"{row['x_fp32_gemm']:.2f}",
            "" if row["x_int8_gemm"] is None else f"{row['x_int8_gemm']:.2f}",
        )
    console.print(table)
    for label, fps in best.items():
        target = 25.0 if "int8" in label else 16.0
        verdict = "meets" if fps >= target else "below"
        console.print(f"best {label}: {fps:.1f} frames/s ({verdict} the {target:.0f} frames/s target)")
    for label, error in errors.items():
        console.print(f"{label} vs torch-fp32 on these inputs (PSNR over the 96x96 predictions as uint8): {error}")
    for note in notes:
        console.print(note)
    return {"gemm_fp32": gemm32, "gemm_int8": gemm8, "rows": rows, "errors": errors, "notes": notes}
