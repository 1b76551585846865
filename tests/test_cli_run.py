"""``anchorcast run`` for real, as a user runs it: the default profile end to end, bad input, Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.mp4 import audio_tail_s, decode, lag_of_best_correlation

pytestmark = pytest.mark.slow

ANCHORCAST = [sys.executable, "-m", "anchorcast"]


def anchorcast(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([*ANCHORCAST, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def mouth_motion(frames: list[np.ndarray], idle: np.ndarray) -> np.ndarray:
    """Per frame, the largest mean absolute difference from the idle frame over 16x16 blocks."""
    motion = []
    for frame in frames:
        diff = np.abs(frame.astype(np.int16) - idle.astype(np.int16)).mean(axis=2)
        h, w = (diff.shape[0] // 16) * 16, (diff.shape[1] // 16) * 16
        blocks = diff[:h, :w].reshape(h // 16, 16, w // 16, 16).mean(axis=(1, 3))
        motion.append(float(blocks.max()))
    return np.array(motion)


def test_default_profile_end_to_end(tmp_path: Path) -> None:
    """README: `anchorcast run` on a fresh install writes a talking anchor to anchorcast.mp4."""
    result = anchorcast("run", "--metrics", "metrics.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    video = decode(tmp_path / "anchorcast.mp4", scale=2)
    report = json.loads((tmp_path / "metrics.json").read_text())
    frame = 1 / 25
    assert video.fps == pytest.approx(25)
    assert -frame <= video.audio_seconds - video.video_seconds <= audio_tail_s(video.sample_rate)
    assert abs(video.video_seconds - report["media_seconds"]) <= frame
    assert len(video.frames) == report["frames"]
    assert report["overruns"] == 0
    # in sync as a viewer sees it: the mouth moves with the sound in the file itself, at lag 0 (frames)
    lag, at_zero = lag_of_best_correlation(mouth_motion(video.frames, video.frames[0]), video.frame_audio_rms(),
                                           range(-3, 4))
    assert lag == 0 and at_zero > 0.3, (lag, at_zero)
    assert video.frames[0].shape == (360, 640, 3)

    rms = video.frame_audio_rms()
    speaking = rms > 0.02
    silent = rms < 0.001
    # the inside of each silence: silent frames with silence on both sides (the blend in and out is at the edges)
    still = silent & np.roll(silent, 1) & np.roll(silent, -1) & np.roll(silent, 2) & np.roll(silent, -2)
    assert speaking.sum() > 50 and still[2:6].all() and still[-6:-2].all()
    assert still.sum() > 20
    motion = mouth_motion(video.frames, video.frames[0])
    # still in silence (only codec noise), moving while speech plays
    assert motion[still].max() < 6, motion[still].max()
    assert np.mean(motion[speaking] > 10) > 0.6, np.percentile(motion[speaking], [10, 50, 90])
    assert np.std(motion[speaking]) > 5  # opening and closing, not stuck open


def test_run_text_with_overrides(tmp_path: Path) -> None:
    result = anchorcast("run", "--text", "Hello there.", "--out", "hello.mp4", "--set", "stream.width=640",
                        "--set", "stream.height=360", "--set", "stream.fps=30", "--metrics", "m.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    video = decode(tmp_path / "hello.mp4", keep_frames=True)
    assert video.frames[0].shape == (360, 640, 3)
    assert video.fps == pytest.approx(30)
    assert -1 / 30 <= video.audio_seconds - video.video_seconds <= audio_tail_s(video.sample_rate)
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["frames"] == len(video.frames)
    assert 0.8 < report["media_seconds"] < 4


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (["--script", "missing.md"], 2, ["source.path", "missing.md", "no such file"]),
        (["--script", "empty.md"], 1, ["empty.md", "empty"]),
        (["--text", "Hi.", "--set", "voice.use=robot"], 2, ["voice.use", "robot", "piper", "espeak"]),
        (["--text", "Hi.", "--set", "engine.avatar=wall.png"], 1, ["wall.png", "face", "sprites", "face_box"]),
        (["--set", "source.use=audio-file", "--set", "source.path=notes.wav"], 1, ["notes.wav"]),
        (["--text", "Hi.", "--set", "stream.fps=fast"], 2, ["stream.fps", "number"]),
        (["nonexistent.toml"], 2, ["nonexistent.toml", "no such profile"]),
    ],
)
def test_bad_input_is_one_clear_message(tmp_path: Path, args: list[str], code: int, expected: list[str]) -> None:
    (tmp_path / "empty.md").write_text("# \n\n<!-- nothing to say -->\n")
    (tmp_path / "notes.wav").write_text("this is not audio at all\n")
    gradient = np.tile(np.linspace(0, 255, 320, dtype=np.uint8), (240, 1))
    import cv2

    cv2.imwrite(str(tmp_path / "wall.png"), np.dstack([gradient] * 3))
    result = anchorcast("run", *args, "--out", "x.mp4", cwd=tmp_path)
    assert result.returncode == code, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr, (text, result.stderr)


def test_ctrl_c_leaves_a_playable_file(tmp_path: Path) -> None:
    text = "This bulletin is long enough that we interrupt it in the middle. " * 6
    env = {**os.environ, "COLUMNS": "160"}
    process = subprocess.Popen([*ANCHORCAST, "run", "--text", text, "--out", "cut.mp4", "--set",
                                "scheduler.pace=realtime", "--metrics", "m.json"],
                               cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    output = tmp_path / "cut.mp4"
    while time.monotonic() < deadline and (not output.exists() or output.stat().st_size < 20_000):
        time.sleep(0.2)
    time.sleep(1.5)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    video = decode(output, keep_frames=False)
    report = json.loads((tmp_path / "m.json").read_text())
    assert len(video.frames) == report["frames"] > 25
    assert -1 / 25 <= video.audio_seconds - video.video_seconds <= audio_tail_s(video.sample_rate)


def test_console_key_interrupts_the_anchor(tmp_path: Path) -> None:
    """`i` typed in the run's terminal interrupts: the rest of the script is dropped, the file stays whole."""
    import pty

    text = "This is a long bulletin that the producer will cut short from the console. " * 4
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": "160"}
    process = subprocess.Popen([*ANCHORCAST, "run", "--text", text, "--out", "cut.mp4", "--set",
                                "scheduler.pace=realtime", "--metrics", "m.json"],
                               cwd=tmp_path, stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    output = tmp_path / "cut.mp4"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not output.exists() or output.stat().st_size < 20_000):
        time.sleep(0.2)
    time.sleep(1.0)
    os.write(master, b"i")
    _, stderr = process.communicate(timeout=120)
    os.close(master)
    assert process.returncode == 0, stderr
    report = json.loads((tmp_path / "m.json").read_text())
    assert report["interrupts"] == 1
    assert report["media_seconds"] < 12  # the whole text takes about 25 s to read
    video = decode(output, keep_frames=False)
    assert len(video.frames) == report["frames"]
    assert -1 / 25 <= video.audio_seconds - video.video_seconds <= audio_tail_s(video.sample_rate)
