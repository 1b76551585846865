"""``anchorcast run`` console keys typed before the run is on air: while it still loads its plugins and opens its
components (no scheduler yet). They must not be lost: ``q`` stops the run as soon as it starts (the file is still
closed cleanly and plays), ``i`` interrupts the anchor before anything is said."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from tests.mp4 import audio_tail_s, decode

pytestmark = pytest.mark.slow

ANCHORCAST = [sys.executable, "-m", "anchorcast"]
TEXT = "This is a long bulletin that the producer will cut short from the console. " * 4  # about 25 s read
KEYS_LINE = "keys: i interrupts the anchor"


class Run:
    """``anchorcast run`` with a pseudo-terminal as standard input; stderr is read line by line as it comes."""

    def __init__(self, tmp_path: Path) -> None:
        self.master, slave = pty.openpty()
        env = {**os.environ, "COLUMNS": "160"}
        self.process = subprocess.Popen(
            [*ANCHORCAST, "run", "--text", TEXT, "--out", "cut.mp4", "--metrics", "m.json"],
            cwd=tmp_path, stdin=slave, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        os.close(slave)
        self.lines: list[str] = []
        self.keys_shown = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.append(line)
            if KEYS_LINE in line:
                self.keys_shown.set()

    def type(self, key: bytes) -> None:
        os.write(self.master, key)

    def finish(self, timeout: float = 180) -> tuple[int, str]:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            pytest.fail(f"the run did not end within {timeout:.0f} s:\n{''.join(self.lines)[-3000:]}")
        self._reader.join(10)
        os.close(self.master)
        return code, "".join(self.lines)


def run_with_key(tmp_path: Path, key: bytes, when: str) -> tuple[int, str, dict[str, Any]]:
    run = Run(tmp_path)
    if when == "typed ahead":
        run.type(key)  # at once: the run has not even loaded its plugins, the terminal is still in line mode
    else:
        # the key reader is on and the run is opening its components (the piper voice takes a second or more)
        assert run.keys_shown.wait(120), "the run never showed its key help"
        run.type(key)
    code, stderr = run.finish()
    assert "Traceback" not in stderr, stderr
    report = json.loads((tmp_path / "m.json").read_text()) if (tmp_path / "m.json").exists() else {}
    return code, stderr, report


@pytest.mark.parametrize("when", ["typed ahead", "while opening"])
def test_q_typed_before_the_run_is_on_air_stops_it_as_soon_as_it_starts(tmp_path: Path, when: str) -> None:
    code, stderr, report = run_with_key(tmp_path, b"q", when)
    assert code == 0, stderr
    assert 1 <= report["frames"] <= 2, report["frames"]  # the whole text would be about 600 frames
    # the key arrived before there was a scheduler to stop (the run says so): otherwise this test proves nothing
    assert "q: the run stops as soon as it starts" in stderr, stderr
    video = decode(tmp_path / "cut.mp4", keep_frames=False)  # closed cleanly: a playable file
    assert len(video.frames) == report["frames"]
    assert -1 / 25 <= video.audio_seconds - video.video_seconds <= audio_tail_s(video.sample_rate)


@pytest.mark.parametrize("when", ["typed ahead", "while opening"])
def test_i_typed_before_the_run_is_on_air_interrupts_the_anchor(tmp_path: Path, when: str) -> None:
    code, stderr, report = run_with_key(tmp_path, b"i", when)
    assert code == 0, stderr
    assert report["interrupts"] == 1
    assert report["media_seconds"] < 3  # the script was dropped: only the tail of silence airs
    assert "i: the anchor is interrupted as soon as the run starts" in stderr, stderr
    video = decode(tmp_path / "cut.mp4", keep_frames=False)
    assert len(video.frames) == report["frames"]
    assert -1 / 25 <= video.audio_seconds - video.video_seconds <= audio_tail_s(video.sample_rate)
