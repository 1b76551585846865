"""The face3d teacher: the ARKit pose table, the viseme engine's coarticulation, teacher data from a real voice."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from anchorcast.media import TextSegment, Timing
from anchorcast_plugins.engines.face3d.coeff_model import shipped_expression_names
from anchorcast_plugins.engines.face3d.teacher import (
    JAW_PER_OPENNESS,
    POSES,
    pose_from_shape,
    pose_matrix,
    teacher_coefficients,
)
from anchorcast_plugins.engines.face3d.training_data import speak, to_16k
from anchorcast_plugins.engines.face3d.training_eval import envelope, lag_correlations
from anchorcast_plugins.engines.viseme.shapes import (
    VISEME_SHAPES,
    MouthShape,
    Viseme,
    shape_from_phonemes,
    viseme_weights,
)
from anchorcast_plugins.voices.espeak_voice import EspeakVoice

NAMES = shipped_expression_names()
RATE = 16000


def loud(seconds: float) -> np.ndarray:
    """A tone well above the voice gate, so the teacher shows the poses unscaled."""
    t = np.arange(round(seconds * RATE)) / RATE
    return (0.3 * np.sin(2 * np.pi * 200 * t)).astype(np.float32)


def column(name: str) -> int:
    return NAMES.index(name)


def test_every_pose_uses_the_face_models_names_and_rest_is_neutral() -> None:
    visemes, matrix = pose_matrix(NAMES)
    assert matrix.shape == (len(Viseme), 53)
    assert not matrix[visemes.index(Viseme.REST)].any()
    assert np.all((matrix >= 0) & (matrix <= 1))
    for viseme in Viseme:
        if viseme is not Viseme.REST:
            # jawOpen follows the viseme engine's openness (closed: barely parted, so the lips can press)
            expected = JAW_PER_OPENNESS * VISEME_SHAPES[viseme].openness
            assert POSES[viseme]["jawOpen"] == pytest.approx(expected, abs=0.051)
    with pytest.raises(ValueError, match="mouthPress_L"):
        pose_matrix([name for name in NAMES if name != "mouthPress_L"])


def test_a_p_closes_and_presses_the_lips_and_an_a_opens_the_jaw() -> None:
    phonemes = [Timing("p", 0.0, 0.3), Timing("ɑː", 0.3, 0.7)]
    coefficients = teacher_coefficients(phonemes, loud(1.0), RATE, 25, 25)
    in_p, in_a = coefficients[3], coefficients[12]  # centres (+20 ms lead) at 0.16 s and 0.52 s
    assert in_p[column("mouthClose")] > 0 and in_p[column("mouthPress_L")] == pytest.approx(0.45)
    assert in_p[column("mouthPress_L")] == in_p[column("mouthPress_R")]
    assert in_p[column("jawOpen")] < 0.1
    assert in_a[column("jawOpen")] == pytest.approx(0.65)
    assert in_a[column("mouthPress_L")] == 0 and in_a[column("mouthClose")] == 0
    assert not coefficients[:, [n.startswith(("eye", "brow", "cheek", "nose")) for n in NAMES]].any()
    assert not coefficients[24].any()  # 0.98 s: after the last phoneme, rest


def test_the_window_and_the_lead_are_the_viseme_engines() -> None:
    phonemes = [Timing("s", 0.2, 0.5), Timing("a", 0.5, 1.0)]
    jaw = teacher_coefficients(phonemes, loud(1.2), RATE, 120, 100)[:, column("jawOpen")]
    # the jaw passes half-way between the poses 20 ms before the phoneme boundary (frame 50 at 100 fps)
    half = (POSES[Viseme.MID]["jawOpen"] + POSES[Viseme.OPEN]["jawOpen"]) / 2
    assert jaw[47] < half < jaw[48]
    # and the shares it averages poses with are those the viseme engine averages shapes with
    for centre in np.linspace(0.1, 1.1, 23):
        shares = viseme_weights(phonemes, centre, 0.045)
        assert sum(shares.values()) == pytest.approx(1.0)
        openness = sum(share * VISEME_SHAPES[v].openness for v, share in shares.items())
        assert openness == pytest.approx(shape_from_phonemes(phonemes, centre, 0.045).openness)


def test_silence_gates_the_pose_to_rest() -> None:
    phonemes = [Timing("a", 0.0, 1.0)]
    quiet = teacher_coefficients(phonemes, np.zeros(RATE, np.float32), RATE, 25, 25)
    assert not quiet.any()


def test_audio_shapes_map_through_the_same_table() -> None:
    _, matrix = pose_matrix(NAMES)
    assert pose_from_shape(VISEME_SHAPES[Viseme.OPEN]) == pytest.approx(matrix[list(Viseme).index(Viseme.OPEN)])
    assert pose_from_shape(VISEME_SHAPES[Viseme.WIDE]) == pytest.approx(matrix[list(Viseme).index(Viseme.WIDE)])
    assert pose_from_shape(VISEME_SHAPES[Viseme.ROUND]) == pytest.approx(matrix[list(Viseme).index(Viseme.ROUND)])
    assert not pose_from_shape(MouthShape(0.0, 0.0, Viseme.CLOSED)).any()
    half = pose_from_shape(MouthShape(0.5, 0.0, Viseme.OPEN))
    assert half[column("jawOpen")] == pytest.approx(0.5 * POSES[Viseme.OPEN]["jawOpen"])


@pytest.mark.parametrize("voice, text", [("en", "Good evening, and welcome to the late news from the studio."),
                                         ("cmn", "各位观众晚上好，欢迎收看晚间新闻。")])
def test_teacher_jaw_follows_the_envelope_of_a_real_voice(voice: str, text: str) -> None:
    audio, rate, phonemes = speak(EspeakVoice(voice), text, "zh" if voice == "cmn" else "en")
    audio16 = to_16k(audio, rate)
    frames = len(audio16) // 640
    coefficients = teacher_coefficients(phonemes, audio16, RATE, frames, Fraction(25))
    jaw = coefficients[:, column("jawOpen")]
    assert jaw.max() > 0.4 and jaw.min() == 0
    correlations = lag_correlations([jaw], [envelope(audio16, frames)])
    best = max(correlations, key=lambda lag: correlations[lag])
    assert correlations[0] > 0.3, correlations
    assert abs(best) <= 1, correlations
    assert len(list(EspeakVoice(voice).synthesize(TextSegment(text)))) == 1
