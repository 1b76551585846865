"""Real OBS Studio for the integration tests: headless under Xvfb, obs-websocket on a loopback port.

obs-websocket 5.1 listens on every interface and has no bind option, so :class:`ObsStudio` refuses to start unless
the process runs in a private network namespace where only loopback exists (``unshare -n`` and
``ip link set lo up``; see :func:`in_private_network`). Every process it starts is in its own process group and is
killed by that group's id.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.servers import free_port, wait_for_port

CONNECT_LINE = "New WebSocket client has connected"
"""What obs-websocket logs (at info level) for every client that opens a websocket."""


def private_network_problem() -> str | None:
    """Why this process must not start OBS here (a network interface other than loopback), or None."""
    interfaces = sorted(name for _, name in socket.if_nameindex())  # this namespace's (sysfs may be the host's)
    if interfaces != ["lo"]:
        return f"network interfaces {interfaces}: run inside `unshare -n` with only loopback up"
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(("127.0.0.1", 0))
        except OSError as error:
            return f"loopback is down ({error}): run `ip link set lo up` first"
    return None


def missing_programs() -> list[str]:
    return [name for name in ("obs", "Xvfb") if shutil.which(name) is None]


class ObsStudio:
    """OBS Studio 29 with a fresh config folder: a ``width``x``height`` canvas at ``fps`` and obs-websocket on
    ``port`` with ``password``. :meth:`start`, :meth:`kill` (a crash: nothing saved) and :meth:`stop`."""

    def __init__(
        self,
        folder: Path,
        *,
        password: str,
        port: int | None = None,
        width: int = 640,
        height: int = 360,
        fps: int = 25,
    ) -> None:
        self.folder = folder
        self.password = password
        self.port = port or free_port()
        self.width, self.height, self.fps = width, height, fps
        self.config_home = folder / "config"
        self.home = folder / "home"
        self.display: str | None = None
        self._xvfb: subprocess.Popen[bytes] | None = None
        self._obs: subprocess.Popen[bytes] | None = None
        self._write_config()

    # --- config ---------------------------------------------------------------------------------------------

    def _write_config(self) -> None:
        obs_dir = self.config_home / "obs-studio"
        profile = obs_dir / "basic" / "profiles" / "anchorcast"
        profile.mkdir(parents=True, exist_ok=True)
        (obs_dir / "basic" / "scenes").mkdir(parents=True, exist_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        (obs_dir / "global.ini").write_text(
            "[General]\nFirstRun=true\nEnableAutoUpdates=false\n\n"
            "[Basic]\nProfile=anchorcast\nProfileDir=anchorcast\n"
            "SceneCollection=anchorcast\nSceneCollectionFile=anchorcast\n\n"
            "[OBSWebSocket]\nFirstLoad=false\nServerEnabled=true\nAlertsEnabled=false\nAuthRequired=true\n"
        )
        (profile / "basic.ini").write_text(
            "[General]\nName=anchorcast\n\n"
            f"[Video]\nBaseCX={self.width}\nBaseCY={self.height}\nOutputCX={self.width}\nOutputCY={self.height}\n"
            f"FPSType=1\nFPSInt={self.fps}\n"
        )

    # --- processes ------------------------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._obs is not None and self._obs.poll() is None

    @property
    def pid(self) -> int | None:
        return self._obs.pid if self.running and self._obs else None

    def start(self, timeout: float = 90.0) -> float:
        """Starts OBS (and Xvfb the first time); returns the seconds until its websocket port accepted."""
        if problem := private_network_problem():
            raise RuntimeError(f"refusing to start OBS (its websocket listens on all interfaces): {problem}")
        if missing := missing_programs():
            raise RuntimeError(f"{', '.join(missing)} missing: apt-get install -y obs-studio xvfb xauth")
        if self.running:
            raise RuntimeError("OBS is already running")
        self._start_xvfb()
        env = {
            **os.environ,
            "DISPLAY": self.display or "",
            "XDG_CONFIG_HOME": str(self.config_home),
            "HOME": str(self.home),
            "LIBGL_ALWAYS_SOFTWARE": "1",
            "QT_QPA_PLATFORM": "xcb",
        }
        started = time.monotonic()
        self._obs = subprocess.Popen(
            [
                "obs", "--minimize-to-tray", "--disable-shutdown-check", "--multi",
                "--websocket_port", str(self.port), "--websocket_password", self.password,
            ],
            env=env, cwd=self.home, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            wait_for_port(self.port, timeout=timeout)
        except TimeoutError:
            code = self._obs.poll()
            self.kill()
            raise RuntimeError(
                f"OBS did not open its websocket on port {self.port} in {timeout:.0f} s"
                + (f" (it exited with {code})" if code is not None else "")
                + f"; its log: {self.latest_log() or 'none'}"
            ) from None
        return time.monotonic() - started

    def _start_xvfb(self) -> None:
        if self._xvfb is not None and self._xvfb.poll() is None:
            return
        read_end, write_end = os.pipe()
        try:
            self._xvfb = subprocess.Popen(
                ["Xvfb", "-displayfd", str(write_end), "-screen", "0", "1280x800x24", "-nolisten", "tcp"],
                pass_fds=(write_end,), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True,
            )  # fmt: skip
            os.close(write_end)
            write_end = -1
            number = b""
            deadline = time.monotonic() + 30
            while not number.endswith(b"\n") and time.monotonic() < deadline:
                chunk = os.read(read_end, 16)
                if not chunk:
                    break
                number += chunk
        finally:
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
        if not number.strip().isdigit():
            self._stop_group(self._xvfb)
            self._xvfb = None
            raise RuntimeError("Xvfb did not start (no display number)")
        self.display = f":{number.strip().decode()}"

    def kill(self) -> None:
        """Kills OBS at once, like a crash: the scene collection is not saved."""
        self._stop_group(self._obs)
        self._obs = None

    def stop(self) -> None:
        """Kills OBS and Xvfb."""
        self.kill()
        self._stop_group(self._xvfb)
        self._xvfb = None

    @staticmethod
    def _stop_group(process: subprocess.Popen[bytes] | None) -> None:
        if process is None:
            return
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: the group id is its pid
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)

    def rss_mb(self) -> float | None:
        """OBS's resident memory in MB (None when it is not running)."""
        pid = self.pid
        if pid is None:
            return None
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            return None
        return None

    # --- logs -----------------------------------------------------------------------------------------------

    def logs(self) -> list[Path]:
        return sorted((self.config_home / "obs-studio" / "logs").glob("*.txt"))

    def latest_log(self) -> Path | None:
        logs = self.logs()
        return logs[-1] if logs else None

    def websocket_connections(self) -> int:
        """How many websocket clients connected, over every OBS run of this folder (from OBS's own logs)."""
        return sum(path.read_text(errors="replace").count(CONNECT_LINE) for path in self.logs())

    def __enter__(self) -> ObsStudio:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- scenarios: test programs run inside a private network namespace ---------------------------------------

REPO = Path(__file__).resolve().parent.parent


def run_scenario(module: str, result: Path, timeout: float, what: str) -> tuple[dict[str, Any], str]:
    """Runs ``python -m MODULE RESULT`` in a new network and PID namespace with only loopback up (``unshare``,
    root or CAP_SYS_ADMIN) and returns the JSON report it wrote with its log; fails the test, with the log, when
    the scenario cannot run, runs past ``timeout`` seconds or reports an error."""
    import pytest

    missing = [name for name in ("obs", "Xvfb", "unshare", "ip") if shutil.which(name) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: apt-get install -y obs-studio xvfb xauth iproute2 "
                    "(scripts/install-test-deps.sh)")
    inner = f"ip link set lo up && exec {sys.executable} -m {module} {result}"
    command = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "bash", "-c", inner]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as expired:  # unshare was killed, and --kill-child takes the namespace down
        pytest.fail(f"the {what} ran past {timeout} s; its log:\n{(expired.stderr or '')[-4000:]}")
    if done.returncode != 0 or not result.exists():
        pytest.fail(f"the {what} failed (exit {done.returncode}; `unshare` needs root or CAP_SYS_ADMIN):\n"
                    f"{done.stderr[-4000:]}")
    report = json.loads(result.read_text())
    if "error" in report:
        pytest.fail(f"the {what} broke:\n{report['error']}")
    return report, done.stderr


def scenario_main(run: Callable[[Path], dict[str, Any]], prefix: str) -> int:
    """A scenario module's entry point: ``run(work)`` in a fresh folder (removed after), its report, or the
    traceback as ``{"error": ...}``, written as JSON to the path in ``sys.argv[1]``."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    result_path = Path(sys.argv[1])
    work = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        report = run(work)
    except Exception:
        report = {"error": traceback.format_exc()}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result_path.write_text(json.dumps(report, indent=1, default=str))
    return 0


def run_phase(report: dict[str, Any], name: str, run: Callable[[dict[str, Any]], None]) -> None:
    """One phase of a scenario: ``run(result)`` fills ``report["phases"][name]``; an exception becomes its
    ``error`` (the other phases still run), and the phase's time is recorded."""
    result: dict[str, Any] = {}
    started = time.monotonic()
    try:
        run(result)
    except Exception:
        result["error"] = traceback.format_exc()
    result["seconds"] = round(time.monotonic() - started, 2)
    report["phases"][name] = result
    print(f"phase {name}: {json.dumps(result, default=str)[:2000]}", file=sys.stderr, flush=True)


def phase_of(report: dict[str, Any], name: str) -> dict[str, Any]:
    """A scenario phase's result for a test; the test fails with the phase's traceback if it raised."""
    import pytest

    phase = report["phases"][name]
    if "error" in phase:
        pytest.fail(f"phase {name} raised:\n{phase['error']}")
    return phase
