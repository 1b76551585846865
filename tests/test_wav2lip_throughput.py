"""The wav2lip engine's two pacings: live keeps the latency rule (small batches, the backend's latency mode), fast
forms large batches, infers them in overlapping sub-batches (OpenVINO in throughput mode, one stream per core) and
draws the same pictures."""

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

from anchorcast.components import FrameJob
from anchorcast.media import StreamFormat
from anchorcast_plugins.engines.wav2lip.audio import LOOKBEHIND_SAMPLES, lookahead_samples
from tests.wav2lip_inputs import random_weights_home

FMT = StreamFormat(640, 360, Fraction(25), 16000)
JOBS = 18  # not a multiple of any batch size used: the last batch is a short one


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with random_weights_home(tmp_path_factory.mktemp("anchorcast-home")) as root:
        yield root


def speech_jobs(count: int) -> list[FrameJob]:
    """Frames over one continuous stretch of voiced sound whose pitch and loudness change from frame to frame, with
    a speech weight that changes too (random weights barely react to the sound; the weight scales each paste, so a
    frame given another job's picture shows)."""
    behind, ahead, frame = LOOKBEHIND_SAMPLES, lookahead_samples(FMT.fps), 640
    rng = np.random.default_rng(7)
    total = behind + count * frame + ahead
    t = np.arange(total) / 16000
    pitch = 140 + 60 * np.sin(2 * np.pi * 0.7 * t)
    envelope = 0.2 + 0.15 * np.sin(2 * np.pi * 3.1 * t) ** 2
    audio = (envelope * np.sin(2 * np.pi * np.cumsum(pitch) / 16000) + rng.normal(0, 0.01, total)).astype(np.float32)
    return [
        FrameJob(index, index / 25, audio[index * frame : index * frame + behind + frame + ahead], behind, frame,
                 0.2 + 0.2 * (index % 5))
        for index in range(count)
    ]


def open_engine(backend: str, *, live: bool, max_batch: int = 4, throughput_batch: int = 16):
    from anchorcast_plugins.engines.wav2lip.engine import Wav2LipEngine

    engine = Wav2LipEngine({"weights": "test-gen", "avatar": None, "face_box": None, "device": "cpu",
                            "backend": backend, "max_batch": max_batch, "throughput_batch": throughput_batch})
    engine.set_pacing(live)
    engine.open(FMT)
    return engine


def render_in_batches(engine, jobs: list[FrameJob]) -> np.ndarray:
    images = []
    for start in range(0, len(jobs), engine.max_batch):
        images += engine.render(jobs[start : start + engine.max_batch])
    return np.array(images, dtype=np.int16)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "openvino-int8"])
def test_the_pictures_are_the_same_whatever_the_batch_size_and_pacing(home: Path, backend: str) -> None:
    jobs = speech_jobs(JOBS)
    live_one = open_engine(backend, live=True, max_batch=1)
    live_four = open_engine(backend, live=True, max_batch=4)
    fast = open_engine(backend, live=False, max_batch=4, throughput_batch=16)
    try:
        assert (live_one.max_batch, live_four.max_batch, fast.max_batch) == (1, 4, 16)
        if backend.startswith("openvino"):
            assert live_four.backend.streams == 1 and fast.backend.streams >= 2  # throughput mode
        reference = render_in_batches(live_one, jobs)
        idle = np.array([live_one.idle(job.index) for job in jobs], dtype=np.int16)
        mouth = np.abs(reference - idle).max(axis=(0, 3)) > 0
        assert mouth.sum() > 500  # the generator's paste changed the face
        motion = np.abs(reference - reference[:1])[:, mouth].mean()
        assert motion > 1.0  # the frames differ: a batch mix-up would show
        for other in (render_in_batches(live_four, jobs), render_in_batches(fast, jobs)):
            difference = np.abs(other - reference)
            assert not difference[:, ~mouth].any()  # outside the paste every pixel is the avatar's
            # torch: float summation order at most; int8: the same quantised arithmetic in other kernels
            limit = 1 if backend == "torch" else 3
            assert difference.max() <= limit, (backend, difference.max())
            # each frame matches its own job, not a neighbour's
            shifted = np.abs(other[1:] - reference[:-1])[:, mouth].mean()
            assert difference[:, mouth].mean() < 0.1 * shifted
    finally:
        for engine in (live_one, live_four, fast):
            engine.close()


@pytest.mark.slow
def test_fast_pace_forms_larger_batches_than_live_pace(home: Path, tmp_path: Path) -> None:
    env = {**os.environ, "ANCHORCAST_HOME": str(home)}

    def run(pace: str) -> dict:
        result = subprocess.run(
            [sys.executable, "-m", "anchorcast", "run", "wav2lip", "--text", "Good evening, here is the news.",
             "--out", f"{pace}.mp4", "--metrics", f"{pace}.json", "--set", "engine.weights=test-gen",
             "--set", "engine.backend=torch", "--set", f"scheduler.pace={pace}", "--set", "voice.use=espeak",
             "--set", "stream.width=640", "--set", "stream.height=360"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads((tmp_path / f"{pace}.json").read_text())

    fast, live = run("fast"), run("realtime")
    fast_sizes = [int(size) for size in fast["batch_sizes"]]
    live_sizes = [int(size) for size in live["batch_sizes"]]
    assert max(live_sizes) <= 4  # the profile's max_batch: the latency rule is unchanged
    assert max(fast_sizes) > max(live_sizes) and max(fast_sizes) <= 16
    assert fast["batch_size_mean"] > 2 * live["batch_size_mean"]
    assert fast["frames"] == live["frames"] and fast["overruns"] == 0
