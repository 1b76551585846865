"""The ``face3d`` lip engine: coefficients for a batch of frame jobs, the head drawn with them, every picture
tagged with what it shows; its weights' errors; ``anchorcast run face3d`` end to end.

Most tests use a checkpoint of an untrained model (``CoefficientModel().save``): what they check does not depend
on training. The lip-sync test needs the trained weights the package ships and is skipped until they exist.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from anchorcast.components import FrameJob, LipEngine
from anchorcast.errors import InputError
from anchorcast.media import StreamFormat, TaggedImage
from anchorcast_plugins.engines.face3d.asset import SHIPPED_ASSET, FaceModel
from anchorcast_plugins.engines.face3d.batching import BatchCoefficients, torch_logits
from anchorcast_plugins.engines.face3d.coeff_model import LOOKAHEAD_S, CoefficientModel, StreamingCoefficients
from anchorcast_plugins.engines.face3d.engine import SHIPPED_WEIGHTS, Face3DEngine, create_engine, load_weights
from anchorcast_plugins.engines.face3d.export import exported_logits
from tests.mp4 import decode, lag_of_best_correlation

FMT = StreamFormat(320, 240, Fraction(25), 16000)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(7)
    path = tmp_path_factory.mktemp("coeffs") / "coeffs.safetensors"
    CoefficientModel().save(path)
    return path


@pytest.fixture(scope="module")
def engine(weights: Path) -> Iterator[Face3DEngine]:
    engine = create_engine({"weights": weights, "idle_motion": "on"})
    engine.open(FMT)
    yield engine
    engine.close()


def speech_like(seconds: float, rate: int, seed: int = 0) -> np.ndarray:
    """Noise with a syllable-rate envelope (what the coefficient model reads does not need to be words here)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.2 * rng.standard_normal(t.size) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))).astype(np.float32)


def jobs_for(audio: np.ndarray, indices: range, engine: Face3DEngine, rate: int, speech: float = 1.0,
             fps: int = 25) -> list[FrameJob]:
    """Jobs cut as the scheduler cuts them: lookbehind + frame + lookahead, zeros outside the timeline."""
    behind, ahead = round(engine.lookbehind * rate), round(engine.lookahead * rate)
    jobs = []
    for index in indices:
        start, end = index * rate // fps, (index + 1) * rate // fps
        low, high = start - behind, end + ahead
        context = np.zeros(high - low, np.float32)
        a, b = max(low, 0), min(high, audio.size)
        if b > a:
            context[a - low: b - low] = audio[a:b]
        jobs.append(FrameJob(index, index / fps, context, behind, end - start, speech))
    return jobs


def test_engine_is_a_lip_engine_with_the_models_context(engine: Face3DEngine) -> None:
    assert isinstance(engine, LipEngine)
    assert engine.lookahead == LOOKAHEAD_S
    assert engine.lookbehind == pytest.approx(engine.model.lookbehind_samples / 16000)


def test_batch_coefficients_equal_the_streaming_model(engine: Face3DEngine, weights: Path) -> None:
    """One pass over a batch's windows gives each frame what StreamingCoefficients gives it alone: at the start
    of the timeline, in the steady state (where ONNX Runtime runs the exported pass), and for two sessions' frames
    interleaved in one shared-engine batch."""
    model = CoefficientModel.load(weights)
    audio, other = speech_like(4.0, 16000, 1), speech_like(4.0, 16000, 2)
    streaming = StreamingCoefficients(model, 25)
    start, steady = jobs_for(audio, range(0, 6), engine, 16000), jobs_for(audio, range(60, 68), engine, 16000)
    second = jobs_for(other, range(60, 64), engine, 16000)
    mixed = [job for pair in zip(steady[:4], second, strict=True) for job in pair]
    assert engine._coefficients is not None
    for jobs in (start, steady, mixed):
        expected = np.stack([streaming.frame(job.context, job.index, job.offset) for job in jobs])
        for batch in (engine._coefficients, BatchCoefficients(model, Fraction(25), 16000)):
            np.testing.assert_allclose(batch(jobs), expected, atol=2e-6)


def test_a_batch_is_one_pass_per_run(weights: Path, engine: Face3DEngine) -> None:
    """Eight consecutive frames are one pass of the model; two sessions' frames interleaved are two."""
    model = CoefficientModel.load(weights)
    passes: list[tuple[int, int]] = []
    torch_pass = torch_logits(model)

    def counted(mel: np.ndarray, first: int, keep: tuple[int, int]) -> np.ndarray:
        passes.append(keep)
        return torch_pass(mel, first, keep)

    batch = BatchCoefficients(model, Fraction(25), 16000, counted)
    audio, other = speech_like(4.0, 16000, 1), speech_like(4.0, 16000, 2)
    steady = jobs_for(audio, range(60, 68), engine, 16000)
    batch(steady)
    assert len(passes) == 1
    passes.clear()
    second = jobs_for(other, range(60, 64), engine, 16000)
    batch([job for pair in zip(steady[:4], second, strict=True) for job in pair])
    assert len(passes) == 2


def test_exported_pass_matches_torch(weights: Path) -> None:
    model = CoefficientModel.load(weights)
    audio = speech_like(4.0, 16000, 3)
    engine = Face3DEngine(model, FaceModel.load(SHIPPED_ASSET))
    jobs = jobs_for(audio, range(50, 58), engine, 16000)
    torch_batch = BatchCoefficients(model, Fraction(25), 16000)
    for runtime in ("onnxruntime", "openvino"):
        exported = BatchCoefficients(model, Fraction(25), 16000, exported_logits(model, runtime))
        np.testing.assert_allclose(exported(jobs), torch_batch(jobs), atol=1e-5)


def test_other_stream_rates_are_resampled(weights: Path) -> None:
    """A 48 kHz stream: the union of the jobs' audio is resampled to 16 kHz; the frames get what the model gives
    the whole signal resampled at once (within the resampler's edge effects, which the extra lookbehind keeps
    out of the frames' windows)."""
    import soxr

    model = CoefficientModel.load(weights)
    face = FaceModel.load(SHIPPED_ASSET)
    audio = speech_like(4.0, 48000, 4)
    batch = BatchCoefficients(model, Fraction(25), 48000)
    at_16k, at_48k = Face3DEngine(model, face), Face3DEngine(model, face)
    at_48k.lookbehind = batch.lookbehind_s
    whole = soxr.resample(audio, 48000, 16000, quality="HQ").astype(np.float32)
    streaming = StreamingCoefficients(model, 25)
    expected = [streaming.frame(job.context, job.index, job.offset)
                for job in jobs_for(whole, range(50, 58), at_16k, 16000)]
    np.testing.assert_allclose(batch(jobs_for(audio, range(50, 58), at_48k, 48000)), np.stack(expected), atol=1e-4)


def test_frames_are_tagged_with_their_coefficients(engine: Face3DEngine) -> None:
    audio = speech_like(3.0, 16000)
    jobs = jobs_for(audio, range(40, 45), engine, 16000)
    expected = engine.coefficients(jobs)
    images = engine.render(jobs)
    assert len(images) == len(jobs)
    for image, row in zip(images, expected, strict=True):
        assert isinstance(image, TaggedImage) and image.shape == (FMT.height, FMT.width, 3)
        coefficients = image.side_data["coefficients"]
        assert coefficients.dtype == np.float32 and coefficients.shape == (53,)
        np.testing.assert_array_equal(coefficients, row)
    idle = engine.idle(7)
    assert isinstance(idle, TaggedImage) and idle.side_data["coefficients"].shape == (53,)
    matte = engine.matte
    assert matte is not None and matte.shape == (FMT.height, FMT.width) and matte.dtype == np.uint8
    assert matte[0, 0] == 0 and matte[FMT.height // 2, FMT.width // 2] == 255


def test_silence_keeps_the_mouth_shut_and_speech_scales_it(engine: Face3DEngine) -> None:
    audio = speech_like(3.0, 16000)
    names = engine.face.expression_names
    mouth = np.array([name.startswith(("jaw", "mouth")) for name in names])
    silent = engine.coefficients(jobs_for(audio, range(40, 44), engine, 16000, speech=0.0))
    half = engine.coefficients(jobs_for(audio, range(40, 44), engine, 16000, speech=0.5))
    full = engine.coefficients(jobs_for(audio, range(40, 44), engine, 16000, speech=1.0))
    assert (silent[:, mouth] == 0).all()
    np.testing.assert_allclose(half[:, mouth], 0.5 * full[:, mouth], atol=1e-6)


def test_idle_motion_blinks_and_the_picture_shows_it(engine: Face3DEngine) -> None:
    """Over 10 s of idle frames the eyes close at least twice (blinks every 2-6 s) and a closed frame differs
    from an open one around the eyes; the same index always gives the same picture."""
    names = engine.face.expression_names
    blink = names.index("eyeBlink_L")
    closures = np.array([engine._motion.coefficients(i)[blink] for i in range(250)])  # type: ignore[union-attr]
    closed = np.flatnonzero(closures > 0.9)
    starts = closed[np.diff(closed, prepend=-10) > 1]
    assert len(starts) >= 2, closures.round(2)
    shut, open_ = int(closed[0]), int(np.argmin(closures[: closed[0]] + 1)) if closed[0] else 0
    a, b = engine.idle(shut), engine.idle(open_)
    assert a.side_data["coefficients"][blink] > 0.9 and b.side_data["coefficients"][blink] < 0.1
    assert engine.idle(shut) is a and not a.flags.writeable  # a repeated index is the kept picture
    assert np.abs(a.astype(np.int16) - b.astype(np.int16)).max() > 40


def test_idle_motion_is_small_smooth_and_repeatable() -> None:
    """The head sways by at most a few degrees, a small step per frame, the same for the same frame; the gaze
    stays small and nearer the camera while speaking."""
    import math

    from anchorcast_plugins.engines.face3d.motion import IdleMotion

    motion = IdleMotion(Fraction(25), FaceModel.load(SHIPPED_ASSET).expression_names)
    poses = [motion.pose(i) for i in range(25 * 30)]
    angles = np.degrees([[p.yaw, p.pitch, p.roll] for p in poses])
    assert np.abs(angles).max() <= 2.6 and np.abs(angles).max(axis=0).min() > 0.5
    assert np.abs(np.diff(angles, axis=0)).max() < 0.1
    assert motion.pose(123) == poses[123]
    names = motion.expression_names
    looks = [names.index(n) for n in names if n.startswith("eyeLook")]
    idle = np.array([motion.coefficients(i)[looks] for i in range(750)])
    speaking = np.array([motion.coefficients(i, speech=1.0)[looks] for i in range(750)])
    assert 0.05 < idle.max() <= 0.12 + 1e-6 and speaking.max() < 0.5 * idle.max()
    assert not math.isnan(float(idle.sum()))


def test_without_idle_motion_the_idle_frame_is_one_still(weights: Path) -> None:
    engine = create_engine({"weights": weights, "idle_motion": "off"})
    engine.open(FMT)
    try:
        first, later = engine.idle(0), engine.idle(100)
        assert first is later and not first.flags.writeable
        assert not first.side_data["coefficients"].any()
    finally:
        engine.close()


def test_missing_and_broken_weights_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="not found"):
        load_weights(tmp_path / "nothing.safetensors")
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"this is not a checkpoint")
    with pytest.raises(InputError, match="broken.safetensors"):
        create_engine({"weights": broken})
    if not SHIPPED_WEIGHTS.exists():
        with pytest.raises(InputError, match="coeffs.safetensors not found") as missing:
            load_weights(None)
        assert "anchorcast train coeffs" in (missing.value.hint or "")


@pytest.mark.parametrize(("setting", "value", "expected"), [
    ("skin", "pink", "skin"), ("background", "#12345", "background"), ("identity", ["a"], "identity"),
])
def test_bad_settings_name_the_key(weights: Path, setting: str, value: object, expected: str) -> None:
    with pytest.raises(InputError, match=expected):
        create_engine({"weights": weights, setting: value})


def anchorcast(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "anchorcast", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


@pytest.mark.slow
def test_cli_run_face3d_with_broken_weights_is_one_message(tmp_path: Path) -> None:
    (tmp_path / "broken.safetensors").write_bytes(b"\x00" * 64)
    result = anchorcast("run", "face3d", "--text", "Hi.", "--out", "x.mp4", "--set",
                        "engine.weights=broken.safetensors", cwd=tmp_path)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "broken.safetensors" in result.stderr, result.stderr


@pytest.mark.slow
def test_cli_run_face3d_writes_the_anchor(tmp_path: Path, weights: Path) -> None:
    """The profile end to end with any weights: an MP4 at the stream's size with sound, the head on it."""
    result = anchorcast("run", "face3d", "--text", "Good evening.", "--out", "f.mp4", "--metrics", "m.json",
                        "--set", f"engine.weights={weights}", "--set", "stream.width=640", "--set",
                        "stream.height=360", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    video = decode(tmp_path / "f.mp4")
    report = json.loads((tmp_path / "m.json").read_text())
    assert len(video.frames) == report["frames"] > 10
    frame = video.frames[len(video.frames) // 2]
    assert frame.shape == (360, 640, 3)
    assert np.abs(frame[180, 320].astype(int) - [16, 24, 32]).max() > 60  # the face, not the background
    assert np.abs(frame[5, 5].astype(int) - [16, 24, 32]).max() < 12


def mouth_motion(frames: list[np.ndarray], still: np.ndarray, box: tuple[slice, slice]) -> np.ndarray:
    """Per frame, the mean absolute difference from the still head over the mouth's box."""
    return np.array([np.abs(f[box].astype(np.int16) - still[box].astype(np.int16)).mean() for f in frames])


@pytest.mark.slow
@pytest.mark.skipif(not SHIPPED_WEIGHTS.exists(), reason="needs the trained weights the package ships "
                    f"({SHIPPED_WEIGHTS.name}, from `anchorcast train coeffs`)")
def test_cli_run_face3d_lips_follow_the_audio_at_lag_0(tmp_path: Path) -> None:
    """README: `anchorcast run face3d` reads the bulletin; in the file the mouth moves with the sound at lag 0,
    as the other engines are checked. Idle motion is off so that only the mouth moves."""
    result = anchorcast("run", "face3d", "--out", "f.mp4", "--set", "engine.idle_motion=off", "--set",
                        "stream.width=640", "--set", "stream.height=360", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    video = decode(tmp_path / "f.mp4")
    from anchorcast_plugins.engines.face3d.render import Framing

    face = FaceModel.load(SHIPPED_ASSET)
    framing = Framing.for_size(face, 640, 360)
    mouth = face.neutral[face.landmarks[48:68]]
    x = framing.centre[0] + framing.scale * mouth[:, 0]
    y = framing.centre[1] - framing.scale * mouth[:, 1]
    box = (slice(int(y.min()) - 4, int(y.max()) + 20), slice(int(x.min()) - 4, int(x.max()) + 4))
    motion = mouth_motion(video.frames, video.frames[0], box)
    lag, at_zero = lag_of_best_correlation(motion, video.frame_audio_rms(), range(-3, 4))
    print(f"face3d lip motion vs audio: best lag {lag}, correlation at 0 {at_zero:.3f}")
    assert lag == 0 and at_zero > 0.3, (lag, at_zero)
