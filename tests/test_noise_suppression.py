"""RNNoise through noise_suppression, on eSpeak speech with noise added at a known SNR: the noise falls, the speech
stays, nothing moves in time, and the streaming denoiser gives what the whole-recording function gives."""

from __future__ import annotations

import importlib.abc
import sys

import numpy as np
import pytest

from anchorcast.errors import InputError
from anchorcast_plugins.sources import noise_suppression
from anchorcast_plugins.sources.noise_suppression import FRAME_SECONDS, StreamingDenoiser, denoise_audio
from tests.noisy_speech import db, espeak, noisy_speech


@pytest.mark.parametrize("rate", [16000, 48000])
@pytest.mark.parametrize("kind", ["white", "pink"])
def test_noise_falls_and_speech_stays(rate: int, kind: str) -> None:
    case = noisy_speech(rate, 5.0, kind)
    out = denoise_audio(case.noisy, rate).audio
    noise_drop = db(case.noisy[case.quiet]) - db(out[case.quiet])
    assert noise_drop >= 20, f"noise only {noise_drop:.1f} dB quieter"
    speech_change = db(out[case.speech]) - db(case.clean[case.speech])
    assert abs(speech_change) <= 3, f"speech level moved by {speech_change:.1f} dB"
    snr_in, snr_out = case.snr_db(case.noisy), case.snr_db(out)
    assert snr_out - snr_in >= 5, f"SNR {snr_in:.1f} -> {snr_out:.1f} dB"


def test_babble_between_the_words_is_lowered() -> None:
    """A crowd is speech too: RNNoise lowers it where the anchor is silent, by less than steady noise (what it
    does to the anchor's own words in babble is in scripts/bench_denoise.py's table: it does not help there)."""
    case = noisy_speech(16000, 10.0, "babble")
    out = denoise_audio(case.noisy, 16000).audio
    assert db(case.noisy[case.quiet]) - db(out[case.quiet]) >= 5


@pytest.mark.parametrize("rate", [16000, 48000, 44100])
def test_length_and_alignment_kept(rate: int) -> None:
    case = noisy_speech(rate, 10.0)
    out = denoise_audio(case.noisy, rate).audio
    assert out.dtype == np.float32 and len(out) == len(case.noisy)
    size = 2 * len(out)
    correlation = np.fft.irfft(np.fft.rfft(out, size) * np.conj(np.fft.rfft(case.clean, size)), size)
    lag = int(np.argmax(correlation))
    lag = lag - size if lag > len(out) else lag
    assert abs(lag) <= 2, f"the output is {lag} samples off"


def test_int16_scaling() -> None:
    """A quiet voice (peaks at -26 dBFS) keeps its level: fed to RNNoise as [-1, 1] floats it would be taken
    for near silence and suppressed; and a loud one (peaks near full scale) does not overflow."""
    for gain in (0.05, 0.95):
        voice = espeak(16000) * gain / np.abs(espeak(16000)).max()
        out = denoise_audio(voice, 16000).audio
        assert abs(db(out) - db(voice)) <= 2, f"gain {gain}: {db(voice):.1f} -> {db(out):.1f} dB"
        assert np.abs(out).max() < 1.2


def test_voice_probability_follows_speech() -> None:
    case = noisy_speech(16000, 10.0)
    result = denoise_audio(case.noisy, 16000)
    frame = round(16000 * FRAME_SECONDS)
    assert result.frame_seconds == FRAME_SECONDS == 0.01
    assert result.speech.dtype == np.float32 and len(result.speech) == -(-len(case.noisy) // frame)
    in_speech = case.speech[::frame][: len(result.speech)]
    quiet = case.quiet[::frame][: len(result.speech)]
    assert result.speech[in_speech].mean() >= 0.6
    assert result.speech[quiet].mean() <= 0.3


@pytest.mark.parametrize("rate", [16000, 48000])
@pytest.mark.parametrize("block_ms", [20, 7])
def test_streaming_equals_whole(rate: int, block_ms: int) -> None:
    case = noisy_speech(rate, 5.0, seed=1)
    whole = denoise_audio(case.noisy, rate).audio
    block = rate * block_ms // 1000
    denoiser = StreamingDenoiser(rate, block)
    late = denoiser.latency_samples
    padded = np.concatenate([case.noisy, np.zeros(late + block, np.float32)])
    whole_blocks = len(padded) // block * block
    streamed = [denoiser.process(padded[i: i + block]) for i in range(0, whole_blocks, block)]
    assert all(len(out) == block for out in streamed)
    np.testing.assert_allclose(np.concatenate(streamed)[late: late + len(whole)], whole, atol=1e-5)
    assert denoiser.latency_samples == late and denoiser.latency_seconds == pytest.approx(late / rate)
    assert len(denoiser.process(padded[whole_blocks: whole_blocks + 5])) == 5  # a short block: no shorter output
    assert late <= denoiser.latency_samples <= late + 5


def test_streaming_latency_figures() -> None:
    """20 ms blocks at 16 kHz wait for no frame: RNNoise's 20 ms and the filters' 4.5 ms; 7 ms blocks wait up to
    10 ms more for whole frames."""
    assert StreamingDenoiser(16000, 320).latency_seconds == pytest.approx(0.0245)
    assert StreamingDenoiser(48000, 960).latency_seconds == pytest.approx(0.020)
    assert 0.0245 < StreamingDenoiser(16000, 112).latency_seconds <= 0.0345
    assert StreamingDenoiser(16000).latency_seconds == pytest.approx(0.0245 + 479 / 48000, abs=1 / 16000)
    with pytest.raises(InputError, match="divides 48000"):
        StreamingDenoiser(44100)


class _HidePyrnnoise(importlib.abc.MetaPathFinder):
    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name == "pyrnnoise":
            raise ModuleNotFoundError("No module named 'pyrnnoise'", name=name)


def test_without_pyrnnoise_the_error_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(noise_suppression, "_lib", None)
    monkeypatch.setattr(sys, "meta_path", [_HidePyrnnoise(), *sys.meta_path])
    monkeypatch.delitem(sys.modules, "pyrnnoise", raising=False)
    with pytest.raises(InputError) as caught:
        denoise_audio(np.zeros(1600, np.float32), 16000)
    assert "pyrnnoise" in str(caught.value) and "anchorcast[live]" in (caught.value.hint or "")


def test_bad_input_is_refused() -> None:
    with pytest.raises(InputError, match="mono"):
        denoise_audio(np.zeros((2, 1600), np.float32), 16000)
    assert len(denoise_audio(np.zeros(0, np.float32), 16000).audio) == 0
