"""The wav2lip engine end to end: weights from the store, the bundled portrait prepared, frames pasted back."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from anchorcast.components import FrameJob
from anchorcast.media import StreamFormat
from anchorcast_plugins.engines.wav2lip.audio import LOOKBEHIND_SAMPLES, lookahead_samples
from anchorcast_plugins.engines.wav2lip.models import Wav2Lip
from tests.mp4 import audio_tail_s, decode
from tests.wav2lip_inputs import random_weights_home

FMT = StreamFormat(640, 360, Fraction(25), 16000)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An ANCHORCAST_HOME with random generator weights imported as "test-gen"."""
    with random_weights_home(tmp_path_factory.mktemp("anchorcast-home")) as root:
        yield root


@pytest.fixture(scope="module")
def engine(home: Path):
    from anchorcast_plugins.engines.wav2lip.engine import Wav2LipEngine

    engine = Wav2LipEngine({"weights": "test-gen", "avatar": None, "face_box": None, "device": "cpu",
                            "backend": "torch", "max_batch": 4})
    engine.open(FMT)
    yield engine
    engine.close()


def job(index: int, speech: float, seed: int = 1) -> FrameJob:
    behind, ahead = LOOKBEHIND_SAMPLES, lookahead_samples(FMT.fps)
    frame = 640
    rng = np.random.default_rng(seed)
    t = np.arange(behind + frame + ahead) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 180 * t) * (1 + rng.normal(0, 0.1, t.size))).astype(np.float32)
    return FrameJob(index, index / 25, audio, behind, frame, speech)


def test_engine_follows_the_protocol_and_pastes_only_inside_the_face_box(engine) -> None:
    assert engine.lookbehind == pytest.approx(LOOKBEHIND_SAMPLES / 16000)
    assert engine.lookahead == pytest.approx(lookahead_samples(FMT.fps) / 16000)
    idle = engine.idle(3)
    assert idle.shape == (360, 640, 3) and idle.dtype == np.uint8
    frames = engine.render([job(3, 1.0), job(4, 1.0)])
    assert all(f.shape == (360, 640, 3) and f.dtype == np.uint8 for f in frames)
    x1, y1, x2, y2 = engine.layout.box(engine.avatar.box(3))
    changed = np.any(frames[0] != idle, axis=2)
    assert changed.any()
    outside = changed.copy()
    outside[y1:y2, x1:x2] = False
    assert not outside.any()  # nothing outside the face box is touched
    ys, _ = np.nonzero(changed)
    assert ys.min() >= y1 + 0.3 * (y2 - y1)  # the feathered mask keeps the eyes and forehead as they were


def test_speech_presence_blends_the_paste(engine) -> None:
    idle = engine.idle(5).astype(np.int32)
    full, half, none = engine.render([job(5, 1.0), job(5, 0.5), job(5, 0.0)])
    assert np.array_equal(none, idle)
    full_change = np.abs(full.astype(np.int32) - idle).sum()
    half_change = np.abs(half.astype(np.int32) - idle).sum()
    assert 0.3 * full_change < half_change < 0.7 * full_change


def test_features_are_cached_per_weights_in_the_avatar_folder(engine) -> None:
    cached = engine.avatar.features_path(engine.weights_id)
    assert cached.is_file()
    assert len(engine.backend.features) == 7 and engine.backend.features[0].shape[1:] == (16, 96, 96)
    assert len(engine.backend.features[0]) == engine.avatar.frame_count


def test_the_prediction_matches_the_reference_model_on_the_crop(engine) -> None:
    """Our cached-feature path against the plain reference forward on the same crop and mel window."""
    from anchorcast_plugins.engines.wav2lip.audio import FrameMel

    torch.manual_seed(0)
    reference = Wav2Lip().eval()
    crop = engine.avatar.crop(0).astype(np.float32).transpose(2, 0, 1)[None] / 255.0
    masked = crop.copy()
    masked[:, :, 48:] = 0
    window = FrameMel(FMT.fps).windows([job(0, 1.0).context], [0])[:, None]
    with torch.no_grad():
        expected = reference(torch.from_numpy(window), torch.from_numpy(np.concatenate([masked, crop], 1))).numpy()
    got = engine.backend.predict(window.astype(np.float32), [0])
    assert np.abs(got - expected).max() < 2e-2  # the cache holds float16 features


@pytest.mark.slow
def test_run_the_wav2lip_profile(home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "ANCHORCAST_HOME": str(home), "COLUMNS": "160"}
    result = subprocess.run(
        [sys.executable, "-m", "anchorcast", "run", "wav2lip", "--text", "Good evening.", "--out", "w.mp4",
         "--metrics", "m.json", "--set", "engine.weights=test-gen", "--set", "engine.backend=torch",
         "--set", "scheduler.pace=fast", "--set", "stream.width=640", "--set", "stream.height=360"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "m.json").read_text())
    video = decode(tmp_path / "w.mp4")
    assert len(video.frames) == report["frames"] and report["rendered_frames"] >= report["frames"]
    assert -1 / 25 <= video.audio_seconds - video.video_seconds <= audio_tail_s(video.sample_rate)
    assert report["stages"]["engine_frame"]["count"] > 0


@pytest.mark.slow
def test_a_wrong_checkpoint_is_one_clear_message(home: Path, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from anchorcast_plugins.engines.wav2lip.models import Wav2LipDiscriminator

    wrong = tmp_path / "disc.safetensors"
    save_file({k: v.contiguous() for k, v in Wav2LipDiscriminator().state_dict().items()}, str(wrong))
    env = {**os.environ, "ANCHORCAST_HOME": str(home)}
    result = subprocess.run(
        [sys.executable, "-m", "anchorcast", "run", "wav2lip", "--text", "Hi.", "--out", "w.mp4",
         "--set", f"engine.weights={wrong}"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode != 0
    assert "discriminator" in result.stderr and "Traceback" not in result.stderr


def test_a_prepared_avatar_folder_is_a_valid_profile_setting(home: Path, engine, tmp_path: Path) -> None:
    from anchorcast.host import Host
    from anchorcast.plugin_manager import PluginPolicy
    from anchorcast.profile import bundled_profiles

    host = Host.create(PluginPolicy())
    folder = str(engine.avatar.folder)
    profile = host.load_profile(bundled_profiles()["wav2lip"], overrides=[("engine.avatar", folder)])
    assert profile.engine.settings["avatar"] == Path(folder)
    with pytest.raises(Exception, match="no such file or folder"):
        host.load_profile(bundled_profiles()["wav2lip"], overrides=[("engine.avatar", str(tmp_path / "nope"))])


@pytest.mark.slow
def test_backend_auto_on_the_production_path_measures_chooses_and_draws_what_torch_draws(
    home: Path, tmp_path: Path
) -> None:
    """``anchorcast run wav2lip`` with the default ``backend = "auto"``: the candidates are measured against
    fp32 on real speech, one is chosen and named, and the video it draws is the torch backend's within the
    tolerance the choice was made under."""
    from anchorcast_plugins.engines.wav2lip.backends import BACKEND_NAMES

    env = {**os.environ, "ANCHORCAST_HOME": str(home), "COLUMNS": "200"}

    def run(backend: str, out: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "anchorcast", "-v", "run", "wav2lip", "--text", "Good evening, the news.",
             "--out", out, "--set", "engine.weights=test-gen", "--set", f"engine.backend={backend}",
             "--set", "scheduler.pace=fast", "--set", "stream.width=640", "--set", "stream.height=360",
             "--set", "stream.fps=25", "--set", "voice.use=espeak"],  # eSpeak: the same audio on every run
            cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
        )

    auto, torch_run = run("auto", "auto.mp4"), run("torch", "torch.mp4")
    assert auto.returncode == 0 and torch_run.returncode == 0, auto.stderr[-3000:] + torch_run.stderr[-3000:]
    chosen = re.search(r"backend (\S+) on ", auto.stderr)
    assert chosen, auto.stderr[-3000:]
    assert chosen.group(1) in BACKEND_NAMES, chosen.group(1)
    assert "frames/s" in auto.stderr  # the measurement was made and shown
    a, t = decode(tmp_path / "auto.mp4"), decode(tmp_path / "torch.mp4")
    assert len(a.frames) == len(t.frames)
    drawn, reference = np.array(a.frames, np.float32), np.array(t.frames, np.float32)
    mouth = reference.std(axis=0).max(axis=-1) > 4  # where the generator's paste changes over the run
    assert mouth.sum() > 100, mouth.sum()
    difference = np.abs(drawn - reference)[:, mouth].mean()
    motion = np.abs(reference - reference[:1])[:, mouth].mean()
    print(f"\nbackend auto chose {chosen.group(1)}: mouth differs from torch by {difference:.2f}, moves by {motion:.2f}")
    assert difference < 0.25 * motion, (chosen.group(1), difference, motion)  # the same mouth, not another one
