"""Mouth shapes for a frame: from phoneme timings when the voice gave them, otherwise from the audio itself.

A shape is an ``openness`` (0 closed .. 1 wide open, for "a") and a ``width`` (-1 rounded/pursed .. +1
spread, for "i"), plus the viseme class it is closest to (what a sprite set shows). Both paths are stateless:
every frame is computed from its own audio context, weighted around the frame's centre, so consecutive frames
overlap and the mouth moves smoothly however the scheduler batches frames.
"""

from __future__ import annotations

import enum
import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from anchorcast.media import FloatAudio, Timing


class Viseme(enum.Enum):
    """The mouth classes; the values double as sprite file names (``<value>.png``)."""

    REST = "rest"
    CLOSED = "closed"  # m b p
    OPEN = "open"  # a ɑ æ ʌ
    WIDE = "wide"  # i e ɪ ɛ
    ROUND = "round"  # o u ʊ ɔ w
    TEETH = "teeth"  # f v
    MID = "mid"  # other consonants, schwa


@dataclass(frozen=True, slots=True)
class MouthShape:
    openness: float
    width: float
    viseme: Viseme

    def scaled(self, amount: float) -> MouthShape:
        """The shape with openness and width multiplied by ``amount`` (speech presence, mouth scale)."""
        return MouthShape(self.openness * amount, self.width * amount, self.viseme)


REST = MouthShape(0.0, 0.0, Viseme.REST)

VISEME_SHAPES: dict[Viseme, MouthShape] = {
    Viseme.REST: REST,
    Viseme.CLOSED: MouthShape(0.0, 0.0, Viseme.CLOSED),
    Viseme.OPEN: MouthShape(1.0, 0.0, Viseme.OPEN),
    Viseme.WIDE: MouthShape(0.45, 0.8, Viseme.WIDE),
    Viseme.ROUND: MouthShape(0.5, -0.8, Viseme.ROUND),
    Viseme.TEETH: MouthShape(0.12, 0.2, Viseme.TEETH),
    Viseme.MID: MouthShape(0.35, 0.0, Viseme.MID),
}

_VOWEL_VISEMES: dict[str, Viseme] = {
    **dict.fromkeys("aɑæʌɐɒäɶ", Viseme.OPEN),
    **dict.fromkeys("ieɪɛɨᵻɯj", Viseme.WIDE),
    **dict.fromkeys("ouʊɔɵøyʏœwɥʍ", Viseme.ROUND),
    **dict.fromkeys("əɚɜɝɘ", Viseme.MID),
}
_CONSONANT_VISEMES: dict[str, Viseme] = {
    **dict.fromkeys("mbpɓ", Viseme.CLOSED),
    **dict.fromkeys("fvɱʋ", Viseme.TEETH),
}


def phoneme_viseme(label: str) -> Viseme | None:
    """The viseme of an IPA phoneme label, or None for labels with no sound (stress, length, pauses).

    Stress and length marks, diacritics, spaces and punctuation are ignored; in a multi-symbol label ("aɪ",
    "tʃ") the first vowel decides, else the first consonant. Unknown letters count as ``mid``.
    """
    letters = [c for c in label if unicodedata.category(c) in ("Ll", "Lu", "Lo")]
    for letter in letters:
        if letter in _VOWEL_VISEMES:
            return _VOWEL_VISEMES[letter]
    if not letters:
        return None
    return _CONSONANT_VISEMES.get(letters[0].lower(), Viseme.MID)


def _window_samples(phonemes: Sequence[Timing], centre: float, half_window: float
                    ) -> tuple[list[Viseme], npt.NDArray[np.float64]]:
    """The visemes at the window's 9 sample times around ``centre`` and their triangle weights."""
    samples = 9
    offsets = np.linspace(-half_window, half_window, samples)
    weights = 1.0 - np.abs(offsets) / (half_window * (1 + 1 / samples))
    classified = [(p, phoneme_viseme(p.label)) for p in phonemes]
    visemes = [next((v for p, v in classified if v is not None and p.start <= centre + offset < p.end),
                    Viseme.REST) for offset in offsets]
    return visemes, weights


def viseme_weights(phonemes: Sequence[Timing], centre: float, half_window: float) -> dict[Viseme, float]:
    """How much of the window around ``centre`` each viseme takes (weights summing to 1): the coarticulation
    :func:`shape_from_phonemes` averages shapes with, for callers that average something else per viseme (the
    face3d teacher averages ARKit poses)."""
    visemes, weights = _window_samples(phonemes, centre, half_window)
    total = float(weights.sum())
    shares: dict[Viseme, float] = {}
    for viseme, weight in zip(visemes, weights, strict=True):
        shares[viseme] = shares.get(viseme, 0.0) + float(weight) / total
    return shares


def shape_from_phonemes(phonemes: Sequence[Timing], centre: float, half_window: float) -> MouthShape:
    """The phoneme shapes around ``centre`` (seconds), weighted by a triangle ``half_window`` wide each side.

    Time not covered by a sounding phoneme (pauses, gaps) counts as rest, so the mouth closes in pauses.
    """
    visemes, weights = _window_samples(phonemes, centre, half_window)
    openness = width = 0.0
    per_viseme: dict[Viseme, float] = {}
    for viseme, weight in zip(visemes, weights, strict=True):
        shape = VISEME_SHAPES[viseme]
        openness += weight * shape.openness
        width += weight * shape.width
        per_viseme[viseme] = per_viseme.get(viseme, 0.0) + float(weight)
    total = float(weights.sum())
    dominant = max(per_viseme, key=per_viseme.__getitem__)
    return MouthShape(openness / total, width / total, dominant)


# --- from audio -------------------------------------------------------------------------------------------

SILENCE_DB = -45.0
"""RMS level (dBFS) at and below which the mouth stays closed."""
FULL_OPEN_DB = -10.0
"""RMS level at and above which a voiced sound opens the mouth fully."""
LEVEL_CURVE = 1.6
"""Exponent on the 0..1 level: quieter syllables open the mouth clearly less than the loudest ones."""


def shape_from_audio(context: FloatAudio, sample_rate: int) -> MouthShape:
    """A mouth shape from the audio around a frame (its whole context, Hann-weighted about the centre).

    Openness follows the RMS level in dB, reduced for noisy unvoiced sounds (little energy below 1 kHz).
    Width follows the spectrum: energy in the second-formant band of front vowels (1.7-3.5 kHz) close to that
    of the first-formant band (0.2-1.2 kHz) spreads the lips ("ee"); otherwise a low spectral centroid (energy
    piled below 700 Hz, as in "oo", "oh") rounds them. Calibrated on Piper's English voice.
    """
    n = len(context)
    if n < 16:
        return REST
    window = np.hanning(n).astype(np.float32)
    weighted = context.astype(np.float32, copy=False) * window
    mean_square = float(np.dot(weighted, context)) / float(window.sum())
    level_db = 10.0 * math.log10(mean_square + 1e-12)
    level = min(max((level_db - SILENCE_DB) / (FULL_OPEN_DB - SILENCE_DB), 0.0), 1.0) ** LEVEL_CURVE
    if level <= 0.0:
        return MouthShape(0.0, 0.0, Viseme.CLOSED)
    size = 1 << max(8, (n - 1).bit_length())
    power = np.abs(np.fft.rfft(weighted, size)) ** 2
    freqs = np.fft.rfftfreq(size, 1.0 / sample_rate)

    def band(low: float, high: float) -> float:
        return float(power[(freqs >= low) & (freqs < high)].sum()) + 1e-12

    voiced = band(80.0, 1000.0) / band(80.0, min(8000.0, sample_rate / 2))
    openness = level * (0.45 + 0.55 * voiced)
    balance_db = 10.0 * math.log10(band(1700.0, 3500.0) / band(200.0, 1200.0))
    spread = min(max((balance_db + 9.0) / 6.0, 0.0), 1.0)
    speech_band = (freqs > 80.0) & (freqs < 5000.0)
    centroid = float((power[speech_band] * freqs[speech_band]).sum()) / band(80.0, 5000.0)
    rounding = min(max((700.0 - centroid) / 250.0, 0.0), 1.0)
    width = spread - rounding * (1.0 - spread)
    return MouthShape(openness, width, classify(openness, width))


VOICE_GATE_DB = (-52.0, -38.0)
"""Context level (dBFS) below which phoneme-driven lips close, and above which they follow the phonemes fully."""


def voice_gate(context: FloatAudio) -> float:
    """0..1: how much sound there is around the frame. Phoneme timings can run into the silence a voice leaves at
    the end of a sentence; the lips should not hold a vowel over silence."""
    if len(context) == 0:
        return 0.0
    level_db = 10.0 * math.log10(float(np.mean(np.square(context, dtype=np.float64))) + 1e-12)
    low, high = VOICE_GATE_DB
    return min(max((level_db - low) / (high - low), 0.0), 1.0)


def classify(openness: float, width: float) -> Viseme:
    """The viseme class nearest to a measured shape (used for sprites when no phonemes are known)."""
    if openness < 0.15:
        return Viseme.CLOSED
    if width > 0.5:
        return Viseme.WIDE
    if width < -0.5:
        return Viseme.ROUND
    return Viseme.MID if openness < 0.45 else Viseme.OPEN
