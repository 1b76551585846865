"""A private PulseAudio server for tests: a null sink whose monitor is a real audio loopback.

What is played into the sink ``anchor_sink`` comes back, in real time, on the source ``anchor_sink.monitor``. The
server runs with its own ``XDG_RUNTIME_DIR`` and ``HOME`` under a temporary folder and listens only on a unix
socket there. Clients get :meth:`PulseAudio.client_env`: with it, ALSA's ``pulse`` (and ``default``) device and
any libpulse client use this server.

PortAudio enumerates devices once, when ``sounddevice`` is imported, so code under test that records should run
in a subprocess started with that environment::

    with PulseAudio() as pulse:
        child = subprocess.Popen([...], env=pulse.client_env())
        pulse.play(tone, 16000)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

import numpy as np

SINK = "anchor_sink"
SOURCE = f"{SINK}.monitor"
RATE = 16000


def available() -> str | None:
    """None when the PulseAudio server and its tools are installed, else what is missing."""
    missing = [tool for tool in ("pulseaudio", "pacat", "pactl") if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install pulseaudio pulseaudio-utils)"
    return None


class PulseAudio:
    """Starts ``pulseaudio`` with a null sink at :data:`RATE`; :meth:`stop` (or leaving the ``with``) ends it.

    ``root`` is the temporary folder holding the socket, the server's runtime and home folders, and its log.
    """

    def __init__(self, root: Path | None = None) -> None:
        self._own_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="anchorcast-pulse-")) if root is None else Path(root)
        self.socket = self.root / "native"
        self.log_path = self.root / "pulseaudio.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._players: list[subprocess.Popen[bytes]] = []

    # --- lifecycle ---------------------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> PulseAudio:
        runtime, home = self.root / "runtime", self.root / "home"
        runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
        home.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "HOME": str(home)}
        for key in ("PULSE_SERVER", "PULSE_SINK", "PULSE_SOURCE"):
            env.pop(key, None)
        command = [
            "pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--use-pid-file=no",
            "-L", f"module-native-protocol-unix auth-anonymous=1 socket={self.socket}",
            "-L", f"module-null-sink sink_name={SINK} rate={RATE}",
        ]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                             start_new_session=True)
        try:
            self._wait_ready(self._process, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_ready(self, process: subprocess.Popen[bytes], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"pulseaudio exited with {process.returncode}: {self.log()}")
            if self.socket.exists():
                try:
                    self.pactl("info", timeout=5)
                    return
                except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                    pass
            time.sleep(0.1)
        raise RuntimeError(f"pulseaudio did not answer on {self.socket} within {timeout:.0f} s: {self.log()}")

    def stop(self) -> None:
        for player in self._players:
            _kill(player)
        self._players.clear()
        if self._process is not None:
            _kill(self._process)
            self._process = None
        if self._own_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> PulseAudio:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    # --- clients -----------------------------------------------------------------------------------------

    @property
    def env(self) -> dict[str, str]:
        """The variables that point a client at this server, its sink and the sink's monitor."""
        return {"PULSE_SERVER": f"unix:{self.socket}", "PULSE_SINK": SINK, "PULSE_SOURCE": SOURCE}

    def client_env(self) -> dict[str, str]:
        """This process's environment with :attr:`env` on top: for subprocesses that play or record."""
        return {**os.environ, **self.env}

    def pactl(self, *args: str, timeout: float = 10.0) -> str:
        result = subprocess.run(["pactl", *args], env=self.client_env(), capture_output=True, text=True,
                                timeout=timeout, check=True)
        return result.stdout

    def remove_sink(self) -> None:
        """Unloads the null sink (and so its monitor, the microphone the tests record): what unplugging a USB
        microphone does to its source."""
        module = next(line.split()[0] for line in self.pactl("list", "short", "modules").splitlines()
                      if "module-null-sink" in line)
        self.pactl("unload-module", module)

    def restore_sink(self) -> None:
        """Loads the null sink again if it is not there (after :meth:`remove_sink`)."""
        if not any(SINK in line for line in self.pactl("list", "short", "sinks").splitlines()):
            self.pactl("load-module", "module-null-sink", f"sink_name={SINK}", f"rate={RATE}")

    def player(self, rate: int = RATE, latency_ms: int = 20) -> Player:
        """A running ``pacat`` into the sink, waiting for samples: write to it when the sound should start (the
        client is connected by then, so its start-up time is not part of a latency measurement)."""
        process = subprocess.Popen(
            ["pacat", "--playback", "--raw", "--format=float32le", f"--rate={rate}", "--channels=1",
             f"--device={SINK}", f"--latency-msec={latency_ms}"],
            env=self.client_env(), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        self._players.append(process)
        player = Player(process)
        player.wait_connected(self)
        return player

    def play(self, samples: np.ndarray, rate: int = RATE, *, timeout: float = 60.0) -> float:
        """Plays mono float samples into the sink and waits until they have been played; returns the monotonic
        time at which the samples were handed to the (already connected) player."""
        player = self.player(rate)
        started = player.write(samples)
        player.finish(timeout=timeout)
        return started


class Player:
    """One ``pacat`` playback stream: :meth:`write` samples, then :meth:`finish` to drain and end it."""

    def __init__(self, process: subprocess.Popen[bytes]) -> None:
        self.process = process

    def wait_connected(self, pulse: PulseAudio, timeout: float = 15.0) -> None:
        """Waits until the server lists this player's stream."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pacat exited with {self.process.returncode}: {self._stderr()}")
            if f'application.process.id = "{self.process.pid}"' in pulse.pactl("list", "sink-inputs"):
                return
            time.sleep(0.05)
        raise RuntimeError(f"pacat did not connect to {pulse.socket} within {timeout:.0f} s")

    def write(self, samples: np.ndarray) -> float:
        """Hands samples to the player; returns the monotonic time just before."""
        assert self.process.stdin is not None
        data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
        started = time.monotonic()
        self.process.stdin.write(data)
        self.process.stdin.flush()
        return started

    def finish(self, timeout: float = 60.0) -> None:
        """Ends the input; returns once everything written has been played."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=timeout)
            problem = self._stderr() if self.process.returncode != 0 else ""
        finally:
            _kill(self.process)
        if self.process.returncode != 0:
            raise RuntimeError(f"pacat failed with {self.process.returncode}: {problem}")

    def _stderr(self) -> str:
        stream = self.process.stderr
        return stream.read().decode(errors="replace")[-1000:] if stream and self.process.poll() is not None else ""


def _kill(process: subprocess.Popen[bytes]) -> None:
    """Ends one process we started (SIGTERM, then SIGKILL) and closes its pipes."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def tone(seconds: float, freq: float, rate: int = RATE, amplitude: float = 0.5) -> np.ndarray:
    """A sine with 5 ms fades (no clicks that would smear the spectrum)."""
    count = round(seconds * rate)
    samples = amplitude * np.sin(2 * np.pi * freq * np.arange(count) / rate)
    fade = min(count // 2, round(0.005 * rate))
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        samples[:fade] *= ramp
        samples[-fade:] *= ramp[::-1]
    return samples.astype(np.float32)


def silence(seconds: float, rate: int = RATE) -> np.ndarray:
    return np.zeros(round(seconds * rate), np.float32)
