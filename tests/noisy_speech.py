"""Speech made here (eSpeak NG) with noise added at a known SNR, for the denoiser's tests and its benchmark
(scripts/bench_denoise.py): white, pink (1/f) or babble-like (six other eSpeak talkers in five languages)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import soxr

from anchorcast_plugins.voices.espeak_voice import EspeakLibrary

SENTENCES = "The quick brown fox jumps over the lazy dog. Every newsroom needs a quiet microphone."
CROWD = (
    ("nl", 70, "De markten openden vandaag lager nu handelaren de nieuwste cijfers over inflatie bekeken."),
    ("de", 40, "Der Zug nach Berlin hat heute leider zwanzig Minuten Verspätung, wir bitten um Entschuldigung."),
    ("fr", 60, "Le conseil municipal se réunira jeudi soir pour discuter du nouveau budget de la ville."),
    ("es", 30, "El partido terminó empatado después de una segunda parte muy intensa en el estadio."),
    ("en-us", 90, "Weather forecasters expect heavy rain along the coast through the weekend."),
    ("it", 55, "Il treno regionale per Milano parte dal binario sette tra cinque minuti."),
)
NOISES = ("white", "pink", "babble")


@dataclass
class NoisySpeech:
    clean: np.ndarray
    noisy: np.ndarray
    speech: np.ndarray
    """True between the speech's first and last loud sample."""
    rate: int

    @property
    def quiet(self) -> np.ndarray:
        """The noise-only seconds before and after the speech, less 0.2 s at their inner edges (RNNoise's gains
        move smoothly) and its first 0.2 s (it starts from nothing)."""
        mask = np.zeros(len(self.clean), bool)
        edge, skip = int(0.8 * self.rate), int(0.2 * self.rate)
        mask[skip:edge] = True
        mask[-edge:] = True
        return mask

    def snr_db(self, audio: np.ndarray) -> float:
        """The speech's power over the power of what ``audio`` differs from it by, over the speech."""
        return db(self.clean[self.speech]) - db((audio - self.clean)[self.speech])


@lru_cache(maxsize=32)
def espeak(rate: int, text: str = SENTENCES, voice: str = "en", pitch: int = 50) -> np.ndarray:
    library = EspeakLibrary.get()
    samples, _ = library.synthesize(text, voice, 170, pitch)
    audio = soxr.resample(samples.astype(np.float32) / 32768, library.sample_rate, rate).astype(np.float32)
    audio.flags.writeable = False
    return audio


def pink(n: int, rng: np.random.Generator) -> np.ndarray:
    """1/f noise: white noise shaped in the frequency domain."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    return np.fft.irfft(spectrum, n)


def babble(n: int, rate: int, rng: np.random.Generator) -> np.ndarray:
    """Six other talkers at once, each looped from a random point: an unintelligible crowd."""
    out = np.zeros(n)
    for voice, pitch, text in CROWD:
        talker = espeak(rate, text, voice, pitch)
        out += np.resize(np.roll(talker, int(rng.integers(0, len(talker)))), n)
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
    makers = {"white": lambda: rng.standard_normal(len(clean)), "pink": lambda: pink(len(clean), rng),
              "babble": lambda: babble(len(clean), rate, rng)}
    noise = makers[kind]()
    noise *= np.sqrt(np.mean(clean[speech] ** 2) / np.mean(noise**2) / 10 ** (snr_db / 10))
    return NoisySpeech(clean, (clean + noise).astype(np.float32), speech, rate)


def db(samples: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(samples, dtype=np.float64)) + 1e-20))
