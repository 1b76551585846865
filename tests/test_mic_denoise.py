"""The ``mic`` source with ``denoise = true`` through the real PulseAudio loopback: noisy speech played into the
sink comes back with its noise floor lowered and its speech kept, 24.5 ms late (measured at the sample and on the
wall clock against an undenoised capture of the same sound), and a live run takes that delay out of its budget."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from anchorcast.errors import InputError
from anchorcast.pacing import SchedulerConfig, budget_for_source
from anchorcast_plugins.sources.mic_source import MicSource
from tests.mic_child import RATE
from tests.mic_denoise_child import DenoiseChild, left_delay_ms, locate, record_streams
from tests.noisy_speech import db, noisy_speech
from tests.pulse import PulseAudio

SNR_DB = 10.0


@pytest.mark.slow
def test_denoised_microphone_lowers_the_noise_floor_keeps_the_speech_and_states_its_delay(
    pulse: PulseAudio, tmp_path: Path
) -> None:
    played = noisy_speech(RATE, SNR_DB)
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

    quiet = played.quiet
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


@pytest.mark.slow
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
