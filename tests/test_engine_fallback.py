"""``scheduler.fallback``: when the lip engine raises mid-utterance, the fallback engine draws the rest of the run.
With the real Wav2Lip engine (random weights) whose render fails on its third batch (an injected fault, as a
driver error or a lost device would raise), and the real viseme engine taking over."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from anchorcast.errors import AnchorcastError
from anchorcast.host import Host
from anchorcast.media import EngineFailed
from anchorcast.plugin_manager import PluginPolicy
from tests.components import RecordingPlugin
from tests.mp4 import decode, lag_of_best_correlation
from tests.test_cli_run import mouth_motion
from tests.wav2lip_inputs import random_weights_home

pytestmark = pytest.mark.slow

TEXT = "Good evening. Here is the news, read to the end whatever the engine does."


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """An ANCHORCAST_HOME with random generator weights imported as "test-gen"."""
    with random_weights_home(tmp_path_factory.mktemp("anchorcast-home")) as root:
        yield root


def run_failing_on_third_batch(out: Path, fallback: str) -> tuple[Host, RecordingPlugin, dict]:
    plugin = RecordingPlugin()
    host = Host.create(PluginPolicy(), extra_plugins=(plugin,))
    raw = {
        "stream": {"width": 320, "height": 180, "fps": 25, "sample_rate": 16000},
        "scheduler": {"pace": "fast", "fallback": fallback},
        "source": {"use": "script", "text": TEXT},
        "voice": {"use": "espeak"},
        "engine": {"use": "wav2lip", "weights": "test-gen", "backend": "torch"},
        "outputs": {"file": {"use": "file", "path": str(out), "preset": "ultrafast"}},
    }
    profile = host.load_profile(None, raw=raw)
    engine = host.build(profile.engine)
    real_render, batches = engine.render, []

    def render(jobs):  # the real engine's render, until the fault
        batches.append(len(jobs))
        if len(batches) == 3:
            raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")
        return real_render(jobs)

    engine.render = render
    engine.open(profile.stream)
    report = host.run(profile, engine=engine)
    return host, plugin, report


def test_the_fallback_engine_draws_the_rest_of_the_run_when_the_engine_fails(home: Path, tmp_path: Path) -> None:
    _, plugin, report = run_failing_on_third_batch(tmp_path / "news.mp4", "viseme")
    failures = [e for kind, e in plugin.calls if kind == "event" and isinstance(e, EngineFailed)]
    assert len(failures) == 1, failures
    assert failures[0].engine == "wav2lip" and failures[0].fallback == "viseme"
    assert "illegal memory access" in failures[0].detail
    video = decode(tmp_path / "news.mp4")
    assert len(video.frames) == report["frames"] and video.video_seconds > 3  # read to the end
    assert report["engine_failures"] == 1
    # after the failure the viseme engine's mouth follows the speech
    after = round(failures[0].pts * 25)
    motion = mouth_motion(video.frames[after:], video.frames[-1])
    lag, at_zero = lag_of_best_correlation(motion, video.frame_audio_rms()[after:], range(-2, 3))
    assert lag == 0 and at_zero > 0.3, (lag, at_zero)


def test_without_a_fallback_the_engines_failure_ends_the_run_with_its_reason(home: Path, tmp_path: Path) -> None:
    with pytest.raises(Exception) as caught:
        run_failing_on_third_batch(tmp_path / "news.mp4", "")
    assert "illegal memory access" in str(caught.value) or isinstance(caught.value, AnchorcastError)
