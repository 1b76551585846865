#!/usr/bin/env python3
"""Benchmark the speech denoiser (RNNoise, plugins/sources/noise_suppression.py) and print three tables.

- **SNR**: eSpeak speech with white, pink or babble-like noise (six other eSpeak talkers) added at 0, 5, 10 and
  20 dB: the SNR over the speech before and after (the clean speech's power over the power of what the audio
  differs from it by), the gain, how far the noise-only stretches fall and how far the speech's level moves;
- **cost**: CPU and wall milliseconds per second of audio, whole recordings (``denoise_audio``) and streaming in
  20 ms blocks (``StreamingDenoiser``), against pyrnnoise's own ``RNNoise`` class (audiolab resampling) in the
  same run, with where each puts the speech (the output's lag against the clean speech, in samples);
- **added latency** of the live denoiser at 16 kHz in 20 ms blocks: computed (its ``latency_seconds``), measured
  offline (the lag of its output) and, where PulseAudio is installed, through the ``mic`` source and a PulseAudio
  loopback (how much later a sound leaves a denoising mic source than an undenoised one recording it at once);
  beside it what soxr's streaming resampler would make it (the output it holds back on 20 ms blocks).

    python scripts/bench_denoise.py [--short]

``--short`` (CI): white and babble noise at 16 kHz only, one timed pass.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from anchorcast_plugins.sources.noise_suppression import StreamingDenoiser, denoise_audio  # noqa: E402
from tests.noisy_speech import NoisySpeech, db, noisy_speech  # noqa: E402

SNRS = (0.0, 5.0, 10.0, 20.0)
BLOCK_S = 0.02


def snr_rows(noises: tuple[str, ...], rate: int) -> list[list[str]]:
    rows = []
    for kind in noises:
        for snr in SNRS:
            case = noisy_speech(rate, snr, kind)
            out = denoise_audio(case.noisy, rate).audio
            snr_in, snr_out = case.snr_db(case.noisy), case.snr_db(out)
            noise_drop = db(case.noisy[case.quiet]) - db(out[case.quiet])
            speech = db(out[case.speech]) - db(case.clean[case.speech])
            rows.append([kind, f"{rate // 1000} kHz", f"{snr_in:.1f}", f"{snr_out:.1f}", f"{snr_out - snr_in:+.1f}",
                         f"{noise_drop:.1f}", f"{speech:+.1f}"])
    return rows


def timed(call: Callable[[], np.ndarray], seconds: float, passes: int) -> tuple[float, float, np.ndarray]:
    """Median CPU and wall ms per second of audio over ``passes`` calls (after one warm-up); the last output."""
    out = call()
    cpus, walls = [], []
    for _ in range(passes):
        wall, cpu = time.perf_counter(), time.process_time()
        out = call()
        walls.append((time.perf_counter() - wall) * 1000 / seconds)
        cpus.append((time.process_time() - cpu) * 1000 / seconds)
    return statistics.median(cpus), statistics.median(walls), out


def lag(out: np.ndarray, clean: np.ndarray) -> int:
    """Samples by which ``out`` is late against ``clean`` (the cross-correlation peak)."""
    n = max(len(out), len(clean))
    size = 2 * n
    correlation = np.fft.irfft(np.fft.rfft(out, size) * np.conj(np.fft.rfft(clean, size)), size)
    peak = int(np.argmax(correlation))
    return peak - size if peak > n else peak


def streamed(case: NoisySpeech) -> np.ndarray:
    block = round(case.rate * BLOCK_S)
    denoiser = StreamingDenoiser(case.rate, block)
    padded = np.concatenate([case.noisy, np.zeros(-len(case.noisy) % block, np.float32)])
    return np.concatenate([denoiser.process(padded[i: i + block]) for i in range(0, len(padded), block)])


def reference(case: NoisySpeech) -> np.ndarray:
    """pyrnnoise's own RNNoise class on the whole recording, as its denoise_wav does it (int16 in and out)."""
    from pyrnnoise import RNNoise

    denoiser = RNNoise(case.rate)
    samples = np.round(case.noisy * 32767).astype(np.int16)[np.newaxis, :]
    frames = [frame for _, frame in denoiser.denoise_chunk(samples, partial=True)]
    return np.concatenate(frames, axis=1)[0].astype(np.float32) / 32768


def cost_rows(rates: tuple[int, ...], passes: int) -> tuple[list[list[str]], dict[str, float]]:
    rows, figures = [], {}
    for rate in rates:
        case = noisy_speech(rate, 10.0)
        seconds = len(case.noisy) / rate
        runs = {
            "denoise_audio (whole recording)": lambda case=case: denoise_audio(case.noisy, case.rate).audio,
            "StreamingDenoiser (20 ms blocks)": lambda case=case: streamed(case),
            "pyrnnoise RNNoise (reference)": lambda case=case: reference(case),
        }
        for name, call in runs.items():
            cpu, wall, out = timed(call, seconds, passes)
            shift = lag(out, case.clean)
            figures[f"{name} {rate}"] = cpu
            rows.append([name, f"{rate // 1000} kHz", f"{cpu:.1f}", f"{wall:.1f}", f"{1000 / wall:.0f}x",
                         f"{shift} ({1000 * shift / rate:.1f} ms)"])
    return rows, figures


def measured_through_mic() -> tuple[float, float] | str:
    """(added ms, baseline ms): how much later a denoising mic source lets a sound out than an undenoised one
    recording it at the same time, and two undenoised ones against each other; or why it was not measured."""
    from tests import pulse as pulse_module

    if (missing := pulse_module.available()) is not None:
        return missing
    from tests.mic_child import RATE
    from tests.mic_denoise_child import left_delay_ms, locate, record_streams

    case = noisy_speech(RATE, 10.0)
    with pulse_module.PulseAudio() as pulse, tempfile.TemporaryDirectory() as folder:
        streams, _ = record_streams(pulse, Path(folder), [False, False, True], case.noisy)
        starts = [locate(streams[f"samples_{n}"], case.clean) for n in range(3)]
        added = left_delay_ms(streams, 2, 0, starts[2], starts[0], len(case.clean))
        baseline = left_delay_ms(streams, 1, 0, starts[1], starts[0], len(case.clean))
    return added, baseline


def soxr_stream_latency_ms(rate: int = 16000, quality: str = "HQ") -> float:
    """The latency the live denoiser would have with soxr's streaming resampler instead of its FIR: RNNoise's
    20 ms plus the most output each soxr stream (up, then down) holds back on 20 ms blocks."""
    import soxr

    def held_back(source: int, target: int, block: int) -> float:
        stream = soxr.ResampleStream(source, target, 1, dtype="float32", quality=quality)
        noise = np.random.default_rng(0).standard_normal(block * 200).astype(np.float32)
        given = produced = 0
        most = 0.0
        for i in range(0, len(noise), block):
            produced += len(stream.resample_chunk(noise[i: i + block]))
            given += block
            most = max(most, given * target / source - produced)
        return most / target

    block = round(rate * BLOCK_S)
    up = held_back(rate, 48000, block)
    down = held_back(48000, rate, block * 48000 // rate)
    return 1000 * (0.020 + up + down)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--short", action="store_true", help="white and babble at 16 kHz, one pass (CI)")
    args = parser.parse_args(argv)
    console = Console(width=120)
    noises = ("white", "babble") if args.short else ("white", "pink", "babble")
    rates = (16000,) if args.short else (16000, 48000)
    passes = 1 if args.short else 5

    snr = Table(title="RNNoise: SNR over the speech, in and out (dB)")
    for column in ("noise", "rate", "SNR in", "SNR out", "gain", "noise-only stretches down", "speech level"):
        snr.add_column(column, justify="left" if column == "noise" else "right")
    for rate in rates:
        for row in snr_rows(noises, rate):
            snr.add_row(*row)

    rows, _ = cost_rows(rates, passes)
    cost = Table(title=f"cost per second of audio ({passes} timed pass{'es' if passes > 1 else ''}, median)")
    for column in ("denoiser", "rate", "CPU ms/s", "wall ms/s", "real time", "output lag, samples"):
        cost.add_column(column, justify="left" if column == "denoiser" else "right")
    for row in rows:
        cost.add_row(*row)

    live = StreamingDenoiser(16000, round(16000 * BLOCK_S))
    case = noisy_speech(16000, 10.0)
    offline = lag(streamed(case), case.clean)
    latency = Table(title="added latency of the live denoiser (16 kHz, 20 ms blocks)")
    latency.add_column("how", justify="left")
    latency.add_column("ms", justify="right")
    latency.add_row("computed (latency_seconds)", f"{1000 * live.latency_seconds:.1f}")
    latency.add_row("measured offline (output lag)", f"{1000 * offline / 16000:.1f}")
    latency.add_row("with soxr streams (HQ) instead of the FIR: computed", f"{soxr_stream_latency_ms():.1f}")
    through = measured_through_mic()
    if isinstance(through, str):
        console.print(f"mic loopback: not measured ({through})")
    else:
        latency.add_row("measured through the mic source (PulseAudio loopback)", f"{through[0]:.1f}")
        latency.add_row("  two undenoised mic sources against each other", f"{through[1]:.1f}")

    console.print(f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
                  f"load average {os.getloadavg()[0]:.2f}")
    console.print(snr)
    console.print(cost)
    console.print(latency)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
