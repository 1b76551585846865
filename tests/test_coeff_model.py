"""The face3d coefficient model (random weights, seeded): shapes, the lookahead bound, streaming, checkpoints."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from anchorcast.errors import InputError
from anchorcast_plugins.engines.face3d.coeff_model import (
    LOOKAHEAD_S,
    LOOKAHEAD_SAMPLES,
    CoefficientConfig,
    CoefficientModel,
    StreamingCoefficients,
    features_for,
    frame_columns,
    frame_count,
    shipped_expression_names,
)
from anchorcast_plugins.engines.wav2lip.audio import frame_start_sample

RATE = 16000


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One torch thread: these small passes gain nothing from two, and on a busy machine OpenMP's waiting
    threads made them 30 times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> CoefficientModel:
    torch.manual_seed(0)
    return CoefficientModel().eval()


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    """Noise and a tone under a syllable-rate envelope, so neighbouring frames differ."""
    rng = np.random.default_rng(seed)
    t = np.arange(round(seconds * RATE)) / RATE
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    return (envelope * (0.2 * np.sin(2 * np.pi * 180 * t) + 0.05 * rng.standard_normal(t.size))).astype(np.float32)


def coefficients(model: CoefficientModel, audio: np.ndarray, fps: float) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(features_for(audio))[None], fps)[0].numpy()


def test_expression_names_are_the_face_models() -> None:
    names = shipped_expression_names()
    assert len(names) == 53 and "jawOpen" in names and "mouthFunnel" in names
    assert CoefficientModel().expression_names == names


@pytest.mark.parametrize("fps", [25, 30])
@pytest.mark.parametrize("samples", [0, 1, 639, 16000, 37_123])
def test_shape_and_range(model: CoefficientModel, fps: int, samples: int) -> None:
    audio = speechlike(samples / RATE, seed=samples)
    out = coefficients(model, audio, fps)
    assert out.shape == (frame_count(samples, fps), 53)
    assert np.isfinite(out).all() and ((out >= 0.0) & (out <= 1.0)).all()
    if samples % 160 == 0:
        assert len(out) == samples * fps // RATE


def test_frames_and_batches() -> None:
    assert frame_count(16000, 25) == 25 and frame_count(16000, 30) == 30
    assert [frame_columns(t, 25) for t in range(3)] == [(0, 4), (4, 8), (8, 12)]
    assert [frame_columns(t, 30) for t in range(3)] == [(0, 4), (4, 7), (7, 10)]
    torch.manual_seed(1)
    small = CoefficientModel(CoefficientConfig(width=32, heads=2, feedforward=64)).eval()
    mel = torch.from_numpy(np.stack([features_for(speechlike(1.0, 1)), features_for(speechlike(1.0, 2))]))
    with torch.no_grad():
        both = small(mel, 30)
        assert both.shape == (2, 30, 53)
        torch.testing.assert_close(both[1:], small(mel[1:], 30), atol=1e-6, rtol=0)
        assert small(mel, 25, frames=3).shape == (2, 3, 53)
    with pytest.raises(ValueError, match="frames"):
        small(mel, 25, frames=26)


@pytest.mark.parametrize("fps", [25, 30])
def test_output_never_reads_audio_past_the_lookahead(model: CoefficientModel, fps: int) -> None:
    audio = speechlike(2.0)
    reference = coefficients(model, audio, fps)
    rng = np.random.default_rng(5)
    for frame in (10, 41):
        end = frame_start_sample(frame + 1, fps)  # the first sample after the frame
        later = end + round(LOOKAHEAD_S * RATE)  # the first sample the frame may not depend on
        changed = audio.copy()
        changed[later:] += rng.standard_normal(audio.size - later).astype(np.float32)
        out = coefficients(model, changed, fps)
        np.testing.assert_allclose(out[: frame + 1], reference[: frame + 1], atol=1e-6, rtol=0)
        assert np.abs(out[frame + 1 :] - reference[frame + 1 :]).max() > 1e-4
        # Audio inside the window does move the frame, so the check above could fail.
        used = audio.copy()
        used[end:later] += rng.standard_normal(later - end).astype(np.float32)
        assert np.abs(coefficients(model, used, fps)[frame] - reference[frame]).max() > 1e-4
    assert LOOKAHEAD_SAMPLES <= LOOKAHEAD_S * RATE


def test_lookahead_reaches_its_documented_last_sample(model: CoefficientModel) -> None:
    """At 25 fps a frame reads up to 1039 samples (65 ms) past its end, the last 160 of them through its fifth
    column ahead alone: a burst there moves it, one just after does not."""
    audio = speechlike(2.0, seed=3)
    reference = coefficients(model, audio, 25)
    frame, rng = 20, np.random.default_rng(7)
    end = frame_start_sample(frame + 1, 25)
    inside, outside = audio.copy(), audio.copy()
    inside[end + 880 : end + 1040] += rng.standard_normal(160).astype(np.float32)
    outside[end + 1040 : end + 1280] += rng.standard_normal(240).astype(np.float32)
    assert np.abs(coefficients(model, inside, 25)[frame] - reference[frame]).max() > 1e-5
    np.testing.assert_allclose(coefficients(model, outside, 25)[: frame + 1], reference[: frame + 1], atol=1e-6)


@pytest.mark.parametrize("fps", [25, 30])
def test_streaming_equals_the_full_sequence(model: CoefficientModel, fps: int) -> None:
    audio = speechlike(5.5, seed=fps)  # more than one 512-column pass of the full forward
    boundary = 512 * fps // 100  # the frame holding column 512, where the second pass begins
    full = coefficients(model, audio, fps)
    stream = StreamingCoefficients(model, fps)
    behind, ahead = stream.lookbehind_samples, round(LOOKAHEAD_S * RATE)
    timeline = np.concatenate([np.zeros(behind, np.float32), audio, np.zeros(ahead + 1000, np.float32)])
    for frame in (0, 1, 7, 40, boundary - 1, boundary, boundary + 1, len(full) - 1):
        start, stop = frame_start_sample(frame, fps), frame_start_sample(frame + 1, fps)
        context = timeline[start : stop + behind + ahead]  # lookbehind, the frame, lookahead
        np.testing.assert_allclose(stream.frame(context, frame, offset=behind), full[frame], atol=1e-5, rtol=0)
    start, stop = frame_start_sample(40, fps), frame_start_sample(41, fps)
    with pytest.raises(ValueError, match="lookbehind"):
        stream.frame(timeline[start : stop + behind], 40, offset=behind)  # no lookahead


def test_save_load_round_trip(model: CoefficientModel, tmp_path: Path) -> None:
    path = tmp_path / "coeffs.safetensors"
    model.save(path)
    loaded = CoefficientModel.load(path)
    assert loaded.config == model.config and loaded.expression_names == model.expression_names
    mel = torch.from_numpy(features_for(speechlike(1.5)))[None]
    with torch.no_grad():
        assert torch.equal(loaded(mel, 25), model(mel, 25))


def test_bad_checkpoints_name_the_file(model: CoefficientModel, tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00\x01not a checkpoint at all" * 10)
    with pytest.raises(InputError, match="garbage.safetensors"):
        CoefficientModel.load(garbage)
    with pytest.raises(InputError, match="not found"):
        CoefficientModel.load(tmp_path / "missing.safetensors")
    good = tmp_path / "good.safetensors"
    model.save(good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(InputError, match=r"truncated\.safetensors"):
        CoefficientModel.load(truncated)
    tensors = {key: value.clone() for key, value in model.state_dict().items()}
    foreign = tmp_path / "foreign.safetensors"
    save_file(tensors, str(foreign))  # no metadata: somebody else's weights
    with pytest.raises(InputError, match="foreign.safetensors: not a coefficient-model checkpoint"):
        CoefficientModel.load(foreign)
    with safe_open(str(good), framework="pt") as file:
        metadata = dict(file.metadata())
    tensors["head.weight"] = torch.zeros(52, 128)
    wrong = tmp_path / "wrong.safetensors"
    save_file(tensors, str(wrong), metadata=metadata)
    with pytest.raises(InputError, match=r"wrong\.safetensors: .*head\.weight has shape \(52, 128\)"):
        CoefficientModel.load(wrong)
    save_file(tensors, str(wrong), metadata={**metadata, "config": "{not json"})
    with pytest.raises(InputError, match=r"wrong\.safetensors: .*bad metadata"):
        CoefficientModel.load(wrong)
