"""A warm start on cached OpenVINO models and features: neither the checkpoint nor torch is loaded, and the frames
are the ones a cold start draws."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from anchorcast_plugins.engines.wav2lip.checkpoints import KINDS
from anchorcast_plugins.engines.wav2lip.weights_store import STORED_KINDS
from tests.wav2lip_inputs import random_weights_home

OPEN_AND_RENDER = """
import json, sys
from fractions import Fraction
import numpy as np
from anchorcast.components import FrameJob
from anchorcast.media import StreamFormat
from anchorcast_plugins.engines.wav2lip.audio import LOOKBEHIND_SAMPLES, lookahead_samples
from anchorcast_plugins.engines.wav2lip.engine import Wav2LipEngine

fmt = StreamFormat(640, 360, Fraction(25), 16000)
engine = Wav2LipEngine({"weights": sys.argv[1], "avatar": None, "face_box": None, "device": "auto",
                        "backend": "auto", "max_batch": 4})
engine.set_pacing(True)
engine.open(fmt)
behind, ahead = LOOKBEHIND_SAMPLES, lookahead_samples(fmt.fps)
t = np.arange(behind + 640 * 4 + ahead) / 16000
audio = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
jobs = [FrameJob(i, i / 25, audio[i * 640 : i * 640 + behind + 640 + ahead], behind, 640, 0.25 * (i + 1))
        for i in range(4)]
frames = engine.render(jobs)
print(json.dumps({"torch": "torch" in sys.modules, "backend": engine.backend.name,
                  "checksum": [int(np.asarray(f, np.int64).sum()) for f in frames]}))
engine.close()
"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with random_weights_home(tmp_path_factory.mktemp("anchorcast-home")) as root:
        yield root


def test_the_stored_kinds_are_the_checkpoint_kinds() -> None:
    assert STORED_KINDS == KINDS  # weights_store keeps its own copy so that listing weights needs no torch


@pytest.mark.slow
def test_a_warm_start_on_cached_models_imports_no_torch_and_draws_the_same_frames(home: Path) -> None:
    env = {**os.environ, "ANCHORCAST_HOME": str(home)}

    def open_and_render() -> dict:
        result = subprocess.run([sys.executable, "-c", OPEN_AND_RENDER, "test-gen"], capture_output=True,
                                text=True, timeout=600, env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        return json.loads(result.stdout.strip().splitlines()[-1])

    cold, warm = open_and_render(), open_and_render()
    assert cold["torch"]  # the first start measured the candidates and built the models with torch
    if not warm["backend"].startswith("openvino"):
        pytest.skip(f"the decided backend is {warm['backend']}: it runs on torch")
    assert not warm["torch"], "a warm OpenVINO start imported torch"
    assert warm["backend"] == cold["backend"] and warm["checksum"] == cold["checksum"]
