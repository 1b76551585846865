"""RNNoise through noise_suppression, on eSpeak speech with noise added at a known SNR: the noise falls, the speech
stays, nothing moves in time, and the streaming denoiser gives what the whole-recording function gives."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import soxr

from anchorcast_plugins.sources.noise_suppression import (
    FRAME_SECONDS,
    StreamingDenoiser,
    denoise_audio,
)
from anchorcast_plugins.voices.espeak_voice import EspeakLibrary

SENTENCES = "The quick brown fox jumps over the lazy dog. Every newsroom needs a quiet microphone."


@dataclass
class NoisySpeech:
    clean: np.ndarray
    noisy: np.ndarray
    speech: np.ndarray
    """True where the clean track is speech (between its first and last loud sample)."""
    rate: int


def espeak(rate: int) -> np.ndarray:
    library = EspeakLibrary.get()
    samples, _ = library.synthesize(SENTENCES, "en", 170, 50)
    return soxr.resample(samples.astype(np.float32) / 32768, library.sample_rate, rate).astype(np.float32)


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise: white noise shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    return np.fft.irfft(spectrum, n)


def babble(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Babble-like noise: six eSpeak voices at random offsets, summed (an unintelligible crowd)."""
    voice = espeak(rate)
    out = np.zeros(n)
    for _ in range(6):
        shift = int(rng.integers(0, len(voice)))
        out += np.resize(np.roll(voice, shift), n)
    return out


def noisy_speech(rate: int, snr_db: float, kind: str = "white", seed: int = 0) -> NoisySpeech:
    """One second of noise alone, the sentences, one second of noise alone; noise scaled to ``snr_db`` against
    the speech's power."""
    rng = np.random.default_rng(seed)
    voice = espeak(rate)
    clean = np.concatenate([np.zeros(rate, np.float32), voice, np.zeros(rate, np.float32)])
    speech = np.zeros(len(clean), bool)
    loud = np.flatnonzero(np.abs(voice) > 0.01)
    speech[rate + loud[0]: rate + loud[-1]] = True
    noise = {"white": lambda: rng.standard_normal(len(clean)), "pink": lambda: pink(len(clean), rng),
             "babble": lambda: babble(len(clean), rate, rng)}[kind]()
    noise *= np.sqrt(np.mean(voice[loud[0]: loud[-1]] ** 2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return NoisySpeech(clean, (clean + noise).astype(np.float32), speech, rate)


def db(samples: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(samples, dtype=np.float64)) + 1e-20))


def quiet_stretches(case: NoisySpeech) -> np.ndarray:
    """The noise-only seconds, less 0.2 s at their inner edges (RNNoise's gains move smoothly)."""
    mask = np.zeros(len(case.clean), bool)
    mask[: int(0.8 * case.rate)] = True
    mask[-int(0.8 * case.rate):] = True
    return mask


@pytest.mark.parametrize("rate", [16000, 48000])
@pytest.mark.parametrize("kind", ["white", "pink"])
def test_noise_falls_and_speech_stays(rate: int, kind: str) -> None:
    case = noisy_speech(rate, 5.0, kind)
    out = denoise_audio(case.noisy, rate).audio
    quiet = quiet_stretches(case)
    noise_drop = db(case.noisy[quiet]) - db(out[quiet])
    assert noise_drop >= 20, f"noise only {noise_drop:.1f} dB quieter"
    speech_change = db(out[case.speech]) - db(case.clean[case.speech])
    assert abs(speech_change) <= 3, f"speech level moved by {speech_change:.1f} dB"
    snr_in = db(case.clean[case.speech]) - db((case.noisy - case.clean)[case.speech])
    snr_out = db(case.clean[case.speech]) - db((out - case.clean)[case.speech])
    assert snr_out - snr_in >= 5, f"SNR {snr_in:.1f} -> {snr_out:.1f} dB"


@pytest.mark.parametrize("rate", [16000, 48000, 44100])
def test_length_and_alignment_kept(rate: int) -> None:
    case = noisy_speech(rate, 10.0)
    out = denoise_audio(case.noisy, rate).audio
    assert out.dtype == np.float32 and len(out) == len(case.noisy)
    correlation = np.fft.irfft(np.fft.rfft(out, 2 * len(out)) * np.conj(np.fft.rfft(case.clean, 2 * len(out))))
    lag = int(np.argmax(correlation))
    lag = lag - 2 * len(out) if lag > len(out) else lag
    assert abs(lag) <= 2, f"the output is {lag} samples off"


def test_int16_scaling() -> None:
    """A quiet voice (-30 dBFS) keeps its level: fed to RNNoise as [-1, 1] floats it would be taken for near
    silence and suppressed; and a loud one (peaks near full scale) does not overflow."""
    for gain in (0.05, 0.95):
        voice = espeak(16000)
        voice = voice * gain / np.abs(voice).max()
        out = denoise_audio(voice, 16000).audio
        assert abs(db(out) - db(voice)) <= 2, f"gain {gain}: {db(voice):.1f} -> {db(out):.1f} dB"
        assert np.abs(out).max() < 1.2


def test_voice_probability_follows_speech() -> None:
    case = noisy_speech(16000, 10.0)
    result = denoise_audio(case.noisy, 16000)
    frame = round(16000 * FRAME_SECONDS)
    assert len(result.speech) == -(-len(case.noisy) // frame)
    in_speech = case.speech[::frame][: len(result.speech)]
    quiet = quiet_stretches(case)[::frame][: len(result.speech)]
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
    streamed = np.concatenate([denoiser.process(padded[i: i + block]) for i in range(0, len(padded), block)])
    assert len(streamed) >= len(padded) - block
    np.testing.assert_allclose(streamed[late: late + len(whole)], whole, atol=1e-5)
    assert denoiser.latency_seconds == pytest.approx(late / rate)


def test_streaming_latency_figures() -> None:
    """20 ms blocks at 16 kHz wait for no frame: RNNoise's 20 ms and the filters' 4.5 ms; 7 ms blocks wait up to
    10 ms more for whole frames."""
    assert StreamingDenoiser(16000, 320).latency_seconds == pytest.approx(0.0245)
    assert StreamingDenoiser(48000, 960).latency_seconds == pytest.approx(0.020)
    assert 0.0245 < StreamingDenoiser(16000, 112).latency_seconds <= 0.0345
    assert StreamingDenoiser(16000).latency_seconds == pytest.approx(0.0245 + 479 / 48000, abs=1 / 16000)
