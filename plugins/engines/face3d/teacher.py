"""The teacher: a voice's phoneme timings turned into per-frame ARKit coefficients, to train the coefficient model.

Each phoneme's viseme class (:func:`~anchorcast_plugins.engines.viseme.shapes.phoneme_viseme`) stands for one
pose, a few of the face model's 53 ARKit expressions at fixed weights. A frame's coefficients are the poses
averaged with the viseme engine's own coarticulation: the shares of each viseme in a triangle window of
+-45 ms (:data:`~anchorcast_plugins.engines.viseme.engine.PHONEME_HALF_WINDOW`) around the frame's centre moved
20 ms early (:data:`~anchorcast_plugins.engines.viseme.engine.ARTICULATION_LEAD`), time outside any sounding
phoneme counting as rest; then scaled by the same voice gate (the audio level around the frame), so lips do not
hold a vowel over the silence at the end of a sentence. The teacher therefore draws exactly the mouth the viseme
engine draws, in 3D.

The poses (weights in 0..1; ``_L``/``_R`` expressions are set alike on both sides; unlisted expressions are 0).
``jawOpen`` is 0.65 times the viseme engine's ``openness`` of the class, so the two engines open alike:

=========  ======================  ====================================================================
viseme     phonemes                pose
=========  ======================  ====================================================================
rest       pauses, silence         all 0 (the model's neutral)
closed     m b p                   jawOpen 0.05, mouthClose 0.05, mouthPress 0.45, mouthRollLower 0.2,
                                   mouthRollUpper 0.15
open       a ɑ æ ʌ                 jawOpen 0.65, mouthLowerDown 0.3, mouthUpperUp 0.1, mouthStretch 0.1
wide       i e ɪ ɛ j               jawOpen 0.29, mouthSmile 0.4, mouthStretch 0.35, mouthLowerDown 0.15,
                                   mouthDimple 0.1
round      o u ʊ ɔ w y             jawOpen 0.32, mouthFunnel 0.5, mouthPucker 0.6
teeth      f v                     jawOpen 0.08, mouthRollLower 0.5, mouthUpperUp 0.3, mouthShrugUpper 0.1
mid        other consonants, ə     jawOpen 0.23, mouthLowerDown 0.15, mouthStretch 0.1
=========  ======================  ====================================================================

The mouth alone moves: brows, eyes and cheeks stay 0 (the engine adds blinks and gaze itself).
:func:`pose_from_shape` maps the viseme engine's audio-only shape (openness, width) through the same table, the
baseline the trained model is compared with.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fractions import Fraction
from types import MappingProxyType

import numpy as np
import numpy.typing as npt

from anchorcast.media import Timing
from anchorcast_plugins.engines.viseme.engine import ARTICULATION_LEAD, PHONEME_HALF_WINDOW, VisemeEngine
from anchorcast_plugins.engines.viseme.shapes import (
    VISEME_SHAPES,
    MouthShape,
    Viseme,
    viseme_weights,
    voice_gate,
)

from .coeff_model import shipped_expression_names

JAW_PER_OPENNESS = 0.65
"""jawOpen of a pose per unit of the viseme engine's openness."""


def _both(name: str, weight: float) -> dict[str, float]:
    return {f"{name}_L": weight, f"{name}_R": weight}


POSES: Mapping[Viseme, Mapping[str, float]] = MappingProxyType({
    Viseme.REST: {},
    Viseme.CLOSED: {"jawOpen": 0.05, "mouthClose": 0.05, **_both("mouthPress", 0.45), "mouthRollLower": 0.2,
                    "mouthRollUpper": 0.15},
    Viseme.OPEN: {"jawOpen": 0.65, **_both("mouthLowerDown", 0.3), **_both("mouthUpperUp", 0.1),
                  **_both("mouthStretch", 0.1)},
    Viseme.WIDE: {"jawOpen": 0.29, **_both("mouthSmile", 0.4), **_both("mouthStretch", 0.35),
                  **_both("mouthLowerDown", 0.15), **_both("mouthDimple", 0.1)},
    Viseme.ROUND: {"jawOpen": 0.32, "mouthFunnel": 0.5, "mouthPucker": 0.6},
    Viseme.TEETH: {"jawOpen": 0.08, "mouthRollLower": 0.5, **_both("mouthUpperUp", 0.3), "mouthShrugUpper": 0.1},
    Viseme.MID: {"jawOpen": 0.23, **_both("mouthLowerDown", 0.15), **_both("mouthStretch", 0.1)},
})
"""The ARKit pose of each viseme class (the table in the module docstring)."""

MOUTH_PREFIXES = ("jaw", "mouth")
"""Expressions that count as the mouth (the weighted part of the training loss and the evaluation)."""

Float32Array = npt.NDArray[np.float32]


def mouth_mask(names: Sequence[str] | None = None) -> npt.NDArray[np.bool_]:
    """True for the mouth expressions among ``names`` (default: the shipped model's 53)."""
    return np.array([name.startswith(MOUTH_PREFIXES) for name in (names or shipped_expression_names())])


def pose_matrix(names: Sequence[str] | None = None) -> tuple[tuple[Viseme, ...], Float32Array]:
    """The visemes and their poses as a (7, len(names)) matrix in ``names`` order (default: the shipped model's).

    Raises ValueError if a pose names an expression the list lacks (a face model without ARKit names)."""
    order = list(names or shipped_expression_names())
    index = {name: i for i, name in enumerate(order)}
    visemes = tuple(Viseme)
    matrix = np.zeros((len(visemes), len(order)), np.float32)
    for row, viseme in enumerate(visemes):
        for name, weight in POSES[viseme].items():
            if name not in index:
                raise ValueError(f"the {viseme.value} pose uses {name!r}, which the face model does not have")
            matrix[row, index[name]] = weight
    return visemes, matrix


def frame_context(audio: npt.ArrayLike, sample_rate: int, frame: int, fps: Fraction) -> npt.NDArray[np.float32]:
    """The audio the viseme engine sees for ``frame``: its lookbehind, the frame and its lookahead, zeros
    outside the signal (the host's timeline is silent there)."""
    samples = np.asarray(audio, np.float32).reshape(-1)
    start = int(frame * sample_rate // fps)
    stop = int((frame + 1) * sample_rate // fps)
    low = start - round(VisemeEngine.lookbehind * sample_rate)
    high = stop + round(VisemeEngine.lookahead * sample_rate)
    context = np.zeros(high - low, np.float32)
    a, b = max(low, 0), min(high, samples.size)
    if b > a:
        context[a - low : b - low] = samples[a:b]
    return context


def teacher_coefficients(phonemes: Sequence[Timing], audio: npt.ArrayLike, sample_rate: int, frames: int,
                         fps: Fraction | int = 25, names: Sequence[str] | None = None) -> Float32Array:
    """(frames, 53) float32: the teacher's coefficients of each video frame of an utterance.

    ``phonemes`` are timed in seconds from the start of ``audio``; frame ``t`` covers ``[t/fps, (t+1)/fps)``.
    """
    rate = Fraction(fps)
    visemes, matrix = pose_matrix(names)
    row = {viseme: i for i, viseme in enumerate(visemes)}
    out = np.zeros((frames, matrix.shape[1]), np.float32)
    half_window = min(PHONEME_HALF_WINDOW, VisemeEngine.lookbehind + 0.5 / float(rate))
    for t in range(frames):
        centre = float((t + Fraction(1, 2)) / rate) + ARTICULATION_LEAD
        shares = np.zeros(len(visemes), np.float32)
        for viseme, share in viseme_weights(phonemes, centre, half_window).items():
            shares[row[viseme]] = share
        gate = voice_gate(frame_context(audio, sample_rate, t, rate))
        out[t] = gate * (shares @ matrix)
    return out


def pose_from_shape(shape: MouthShape, names: Sequence[str] | None = None) -> Float32Array:
    """The coefficients of a viseme-engine shape measured from audio (openness 0..1, width -1..1), through
    :data:`POSES`: a mix of the wide (width > 0) or round (width < 0) pose, by ``|width| / 0.8`` (their width),
    with the open pose for the rest, scaled so that its openness is the shape's."""
    visemes, matrix = pose_matrix(names)
    row = {viseme: i for i, viseme in enumerate(visemes)}
    side = Viseme.WIDE if shape.width >= 0 else Viseme.ROUND
    share = min(abs(shape.width) / abs(VISEME_SHAPES[side].width), 1.0)
    mixed_openness = share * VISEME_SHAPES[side].openness + (1.0 - share) * VISEME_SHAPES[Viseme.OPEN].openness
    mix = share * matrix[row[side]] + (1.0 - share) * matrix[row[Viseme.OPEN]]
    return np.clip(mix * (max(shape.openness, 0.0) / mixed_openness), 0.0, 1.0).astype(np.float32)
