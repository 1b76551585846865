"""The ``mic`` source with ``denoise = true`` through the real PulseAudio loopback: noisy speech played into the
sink comes back with its noise floor lowered and its speech kept, 24.5 ms late (measured at the sample and on the
wall clock against an undenoised capture of the same sound), and a live run takes that delay out of its budget."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anchorcast.errors import InputError
from anchorcast.pacing import SchedulerConfig, budget_for_source
from anchorcast_plugins.sources.mic_source import MicSource
from tests import pulse as pulse_module
from tests.mic_child import CHUNK, RATE, REPO, Child
from tests.noisy_speech import db, espeak
from tests.pulse import PulseAudio

PLAYER_BUFFER_MS = 250
SNR_DB = 10.0
EDGE_S = 1.5
"""Noise alone before and after the speech."""


class DenoiseChild(Child):
    """tests/mic_denoise_child.py in a child process started with the sound server's environment."""

    def __init__(self, mode: str, options: dict[str, Any], env: dict[str, str]) -> None:
        code = "from tests.mic_denoise_child import child_main; child_main()"
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, mode, json.dumps(options)], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines = []


@pytest.fixture(scope="module")
def pulse() -> Iterator[PulseAudio]:
    if pulse_module.available() is not None:
        pytest.skip(str(pulse_module.available()))
    server = PulseAudio()
    try:
        server.start()
        yield server
    finally:
        server.stop()


@dataclass
class Played:
    clean: np.ndarray
    noisy: np.ndarray
    speech: np.ndarray
    """True between the speech's first and last loud sample."""


def noisy_speech(seed: int = 0) -> Played:
    voice = espeak(RATE)
    voice = voice * 0.5 / np.abs(voice).max()
    edge = np.zeros(round(EDGE_S * RATE), np.float32)
    clean = np.concatenate([edge, voice, edge])
    loud = np.flatnonzero(np.abs(clean) > 0.01)
    speech = np.zeros(len(clean), bool)
    speech[loud[0]: loud[-1]] = True
    noise = np.random.default_rng(seed).standard_normal(len(clean))
    noise *= np.sqrt(np.mean(clean[speech] ** 2) / 10 ** (SNR_DB / 10))
    return Played(clean, (clean + noise).astype(np.float32), speech)


def locate(recording: np.ndarray, sound: np.ndarray) -> int:
    """Where ``sound`` starts in ``recording`` (the cross-correlation peak)."""
    size = 2 * len(recording)
    correlation = np.fft.irfft(np.fft.rfft(recording, size) * np.conj(np.fft.rfft(sound, size)), size)
    return int(np.argmax(correlation[: len(recording) - len(sound) + 1]))


def record_streams(pulse: PulseAudio, tmp_path: Path, denoise: list[bool], sound: np.ndarray
                   ) -> tuple[np.lib.npyio.NpzFile, dict[str, Any]]:
    options = {"denoise": denoise, "seconds": len(sound) / RATE + 2.5, "out": str(tmp_path)}
    child = DenoiseChild("streams", options, pulse.client_env())
    try:
        child.wait_ready()
        player = pulse.player(RATE, latency_ms=PLAYER_BUFFER_MS)
        time.sleep(0.5)
        player.write(sound)
        player.finish()
        code = child.finish(timeout=90)
        assert code == 0, child.output()
    finally:
        child.stop()
    return np.load(tmp_path / "streams.npz"), json.loads((tmp_path / "streams.json").read_text())


def left_delay_ms(streams: Any, late: int, early: int, late_at: int, early_at: int, length: int) -> float:
    """How much later the same sound left stream ``late`` than stream ``early`` (wall clock, mean over every
    sample of it: a sample leaves with its 20 ms chunk, so single samples would be off by up to a chunk)."""
    samples = np.arange(0, length, 7)
    left_late = streams[f"left_{late}"][(late_at + samples) // CHUNK]
    left_early = streams[f"left_{early}"][(early_at + samples) // CHUNK]
    return float(np.mean(left_late - left_early) * 1000)


def test_denoised_microphone_lowers_the_noise_floor_keeps_the_speech_and_states_its_delay(
    pulse: PulseAudio, tmp_path: Path
) -> None:
    played = noisy_speech()
    streams, meta = record_streams(pulse, tmp_path, [False, False, True], played.noisy)
    assert meta["added_latency_s"] == [0.0, 0.0, pytest.approx(0.0245)]
    starts = [locate(streams[f"samples_{n}"], played.clean) for n in range(3)]
    raw = streams["samples_0"][starts[0]: starts[0] + len(played.clean)]
    denoised = streams["samples_2"][starts[2]: starts[2] + len(played.clean)]
    assert len(raw) == len(denoised) == len(played.clean), "the sound was not recorded whole"

    late = starts[2] - starts[0]
    assert abs(late - round(0.0245 * RATE)) <= 2, f"the denoised stream is {late} samples behind, not 392"
    baseline = left_delay_ms(streams, 1, 0, starts[1], starts[0], len(played.clean))
    added = left_delay_ms(streams, 2, 0, starts[2], starts[0], len(played.clean))

    quiet = ~np.convolve(played.speech, np.ones(round(0.3 * RATE)), mode="same").astype(bool)
    quiet[: round(0.2 * RATE)] = False  # RNNoise starts from nothing: its first 0.2 s are still adapting
    noise_drop = db(raw[quiet]) - db(denoised[quiet])
    speech_change = db(denoised[played.speech]) - db(raw[played.speech])
    print(f"\nmic denoise: noise floor {db(raw[quiet]):.1f} -> {db(denoised[quiet]):.1f} dBFS "
          f"({noise_drop:.1f} dB down), speech {speech_change:+.1f} dB; delay {late} samples "
          f"({1000 * late / RATE:.1f} ms); measured on the wall clock: {added:.1f} ms later than an undenoised "
          f"capture (two undenoised captures: {baseline:+.1f} ms)")
    assert noise_drop >= 15
    assert abs(speech_change) <= 3
    assert abs(baseline) <= 5, "two captures of one device disagree: the wall-clock figure means nothing"
    assert 24.5 - 5 <= added <= 24.5 + 15


def run_host(pulse: PulseAudio, tmp_path: Path, denoise: bool, seconds: float = 3.0) -> dict[str, Any]:
    out = tmp_path / ("on" if denoise else "off")
    out.mkdir()
    options = {"denoise": denoise, "budget_ms": 200, "seconds": seconds, "out": str(out)}
    child = DenoiseChild("host", options, pulse.client_env())
    try:
        child.wait_ready()
        code = child.finish(timeout=90)
        assert code == 0, child.output()
    finally:
        child.stop()
    return json.loads((out / "report.json").read_text())


def test_a_live_run_takes_the_denoiser_delay_out_of_its_budget(pulse: PulseAudio, tmp_path: Path) -> None:
    """Audio airs 24.5 ms sooner after reaching the timeline with the denoiser on: mic to air stays the budget."""
    plain = run_host(pulse, tmp_path, False)
    denoised = run_host(pulse, tmp_path, True)
    assert "source_delay" not in plain["stages"]
    assert denoised["stages"]["source_delay"]["p50_ms"] == pytest.approx(24.5, abs=0.1)
    off, on = plain["stages"]["audio_to_air"]["p50_ms"], denoised["stages"]["audio_to_air"]["p50_ms"]
    print(f"\ntimeline arrival to air p50: {off:.1f} ms without the denoiser, {on:.1f} ms with it")
    assert off - on == pytest.approx(24.5, abs=8)


def test_budget_for_source_subtracts_only_a_live_sources_delay() -> None:
    class Delaying:
        live = True
        added_latency_s = 0.0245

    live = SchedulerConfig(latency_budget_ms=200.0, live=True)
    assert budget_for_source(live, Delaying()).latency_budget_ms == pytest.approx(175.5)
    assert budget_for_source(SchedulerConfig(latency_budget_ms=200.0), Delaying()).latency_budget_ms == 200.0
    assert budget_for_source(SchedulerConfig(latency_budget_ms=10.0, live=True), Delaying()).latency_budget_ms == 0
    assert budget_for_source(live, object()) is live


def test_denoise_at_a_rate_rnnoise_cannot_stream_is_refused_with_a_hint() -> None:
    with pytest.raises(InputError) as caught:
        MicSource(None, sample_rate=44100, denoise=True)
    assert "divides 48000" in str(caught.value) and "16000" in (caught.value.hint or "")
    assert MicSource(None, sample_rate=16000, denoise=True).added_latency_s == 0.0  # known once opened
