"""The real studio server for tests: ``python -m anchorcast serve`` (uvicorn) on a free loopback port, in its own
process, with a token, a profile folder and an output folder of the test's own."""

from __future__ import annotations

import io
import os
import re
import signal
import subprocess
import sys
import threading
import time
import wave
from pathlib import Path

import numpy as np

from anchorcast.client import Client

TOKEN = "test-token-0123456789abcdef"

SMALL_PROFILE = """
[stream]
width = 320
height = 180
fps = 25
sample_rate = 16000

[scheduler]
latency_budget_ms = 400

[source]
use = "script"
text = "A session's source is the API."

[voice]
use = "espeak"

[engine]
use = "viseme"

[outputs.file]
use = "file"
path = "session.mp4"
"""


class StudioServer:
    """Starts the server (with ``-v``: its access log on) and keeps what it prints; :meth:`stop` ends it as
    Ctrl-C would (SIGINT)."""

    def __init__(self, folder: Path, *args: str, profiles: dict[str, str] | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.folder = folder
        self.profiles = folder / "profiles"
        self.outputs = folder / "outputs"
        self.profiles.mkdir(parents=True, exist_ok=True)
        for name, text in {"small": SMALL_PROFILE, **(profiles or {})}.items():
            (self.profiles / f"{name}.toml").write_text(text, encoding="utf-8")
        self.lines: list[str] = []
        self._env = {**os.environ, "ANCHORCAST_TOKEN": TOKEN, "ANCHORCAST_HOME": str(folder / "home"),
                     "COLUMNS": "200", **(env or {})}
        self._args = ["--port", "0", "--profiles", str(self.profiles), "--outputs", str(self.outputs), *args]
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def start(self, timeout: float = 120.0) -> StudioServer:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "anchorcast", "-v", "serve", *self._args], stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, env=self._env, cwd=self.folder,
        )
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.url:
            if self.process.poll() is not None:
                time.sleep(0.2)
                raise RuntimeError("the server exited:\n" + "\n".join(self.lines))
            for line in list(self.lines):
                if match := re.search(r"on (http://127\.0\.0\.1:\d+)", line):
                    self.url = match.group(1)
            time.sleep(0.05)
        if not self.url:
            self.stop()
            raise TimeoutError("the server did not start:\n" + "\n".join(self.lines))
        return self

    def _read(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def client(self, token: str | None = TOKEN) -> Client:
        return Client(self.url, token=token)

    def threads_and_files(self) -> tuple[int, int]:
        return len(os.listdir(f"/proc/{self.pid}/task")), len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self, timeout: float = 60.0) -> int:
        if self.process is None or self.process.poll() is not None:
            return self.process.returncode if self.process else 0
        self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def __enter__(self) -> StudioServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wav_bytes(samples: np.ndarray, rate: int, channels: int = 1) -> bytes:
    """A 16-bit PCM WAV file of ``samples`` (mono float, repeated on every channel)."""
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    if channels > 1:
        pcm = np.repeat(pcm[:, None], channels, axis=1).reshape(-1)
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(channels)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes(pcm.tobytes())
    return buffer.getvalue()


def syllables(seconds: float, rate: int, per_second: float = 4.0) -> np.ndarray:
    """Speech-like audio: voiced bursts (a 180 Hz buzz with harmonics) at a syllable rate, silence between."""
    t = np.arange(int(seconds * rate)) / rate
    buzz = sum(np.sin(2 * np.pi * 180 * k * t) / k for k in range(1, 6))
    envelope = np.clip(np.sin(2 * np.pi * per_second / 2 * t), 0, None) ** 2
    return (0.3 * buzz * envelope / 2.3).astype(np.float32)
