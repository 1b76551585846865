"""Figures of the coefficient model against the teacher: mouth L1, jawOpen against the speech envelope, and the
same for the viseme engine driven by audio alone (the baseline the model must beat).

All series are per 25 fps frame of 16 kHz audio. The envelope is each frame's RMS. A lag ``k`` pairs the
coefficient of frame ``t + k`` with the envelope of frame ``t``: a positive best lag means the mouth moves late.
Correlations pool the pairs of every utterance (each utterance shifted on its own, never across two).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import torch

from anchorcast_plugins.engines.viseme.shapes import shape_from_audio

from .coeff_model import SAMPLE_RATE, CoefficientModel, features_for, shipped_expression_names
from .teacher import frame_context, mouth_mask, pose_from_shape
from .training_data import FPS, Item

SAMPLES_PER_FRAME = SAMPLE_RATE // FPS
MAX_LAG = 5

Float32Array = npt.NDArray[np.float32]


def envelope(audio: npt.ArrayLike, frames: int) -> Float32Array:
    """(frames,) RMS of each frame's samples (zeros past the end)."""
    samples = np.zeros(frames * SAMPLES_PER_FRAME, np.float32)
    values = np.asarray(audio, np.float32)[: samples.size]
    samples[: values.size] = values
    return np.sqrt(np.mean(np.square(samples.reshape(frames, SAMPLES_PER_FRAME)), axis=1))


def model_coefficients(model: CoefficientModel, audio: npt.ArrayLike, frames: int) -> Float32Array:
    """(frames, 53) of the model on a whole utterance."""
    with torch.no_grad():
        features = torch.from_numpy(features_for(audio))[None].to(model.input.weight)
        return model(features, FPS, frames=frames)[0].cpu().numpy().astype(np.float32)


def viseme_audio_coefficients(audio: npt.ArrayLike, frames: int) -> Float32Array:
    """(frames, 53): the viseme engine's audio-only shape of each frame (its own context) through the teacher's
    poses (:func:`~.teacher.pose_from_shape`)."""
    names = shipped_expression_names()
    return np.stack([pose_from_shape(shape_from_audio(frame_context(audio, SAMPLE_RATE, t, Fraction(FPS)),
                                                      SAMPLE_RATE), names) for t in range(frames)])


def lag_correlations(series: Sequence[Float32Array], envelopes: Sequence[Float32Array],
                     max_lag: int = MAX_LAG) -> dict[int, float]:
    """Pooled Pearson correlation of ``series[i][t + k]`` with ``envelopes[i][t]`` for each lag ``k``."""
    result = {}
    for lag in range(-max_lag, max_lag + 1):
        xs, ys = [], []
        for values, env in zip(series, envelopes, strict=True):
            n = min(len(values), len(env))
            if lag >= 0:
                xs.append(values[lag:n]), ys.append(env[: max(0, n - lag)])
            else:
                xs.append(values[: n + lag]), ys.append(env[-lag:n])
        x, y = np.concatenate(xs), np.concatenate(ys)
        result[lag] = float(np.corrcoef(x, y)[0, 1]) if x.size > 2 and x.std() > 0 and y.std() > 0 else 0.0
    return result


@dataclass(frozen=True)
class Figures:
    """One source's agreement with the teacher on a set of utterances."""

    mouth_l1: float
    jaw_l1: float
    envelope_correlation: float
    best_lag: int
    best_correlation: float


def figures(predicted: Sequence[Float32Array], teacher: Sequence[Float32Array],
            envelopes: Sequence[Float32Array]) -> Figures:
    """Mouth L1 and jawOpen L1 against ``teacher`` (mean over frames and mouth expressions) and jawOpen's
    correlation with the envelope at lag 0 and at its best lag."""
    names = shipped_expression_names()
    mouth, jaw = mouth_mask(names), names.index("jawOpen")
    errors = np.concatenate([np.abs(p - t) for p, t in zip(predicted, teacher, strict=True)])
    correlations = lag_correlations([p[:, jaw] for p in predicted], envelopes)
    best = max(correlations, key=lambda lag: correlations[lag])
    return Figures(float(errors[:, mouth].mean()), float(errors[:, jaw].mean()), correlations[0], best,
                   correlations[best])


def compare(model: CoefficientModel, items: Sequence[Item]) -> dict[str, Figures]:
    """The figures of the model, the viseme engine from audio, and the teacher itself, on ``items``."""
    teacher = [item.target for item in items]
    envelopes = [envelope(item.audio, len(item.target)) for item in items]
    ours = [model_coefficients(model, item.audio, len(item.target)) for item in items]
    baseline = [viseme_audio_coefficients(item.audio, len(item.target)) for item in items]
    return {"model": figures(ours, teacher, envelopes), "viseme (audio)": figures(baseline, teacher, envelopes),
            "teacher": figures(teacher, teacher, envelopes)}
