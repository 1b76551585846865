"""The ``obs`` output's lifecycle against real OBS Studio: a scenario run in a private network namespace, reporting
JSON (see tests/obs_scenario.py for why and how; tests/test_obs_control_lifecycle.py starts this one the same way).

Phases:

- ``unexpected_error``: connected to OBS, the output is given an event its worker cannot handle (a caption whose
  text is None). write() and event() must then raise, the worker must have logged the reason once and closed its
  connection.
- ``close_while_obs_hangs``: connected to OBS, OBS is frozen (SIGSTOP) while the worker waits on a request; events
  keep coming (the queue must stay bounded); close() is called with a short join timeout that the stuck worker
  misses. No TCP connection from this process to OBS may remain after close().

TCP connections are counted from /proc: this process's own sockets (by inode, from /proc/self/fd) whose remote
port is OBS's.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import anchorcast_plugins.outputs.obs_control as obs_control
from anchorcast.errors import AnchorcastError
from anchorcast.host import Host
from anchorcast.media import Caption, StreamFormat
from anchorcast.plugin_manager import PluginPolicy
from tests.components import RecordingPlugin
from tests.obs_studio import ObsStudio, run_phase, scenario_main

PASSWORD_ENV = "ANCHORCAST_TEST_OBS_PASSWORD"
PASSWORD = "anchorcast-test-pw-1"
FMT = StreamFormat(640, 360, Fraction(25), 16000)
EVENTS = 50_000
TCP_STATES = {
    "01": "ESTABLISHED", "02": "SYN_SENT", "03": "SYN_RECV", "04": "FIN_WAIT1", "05": "FIN_WAIT2",
    "06": "TIME_WAIT", "07": "CLOSE", "08": "CLOSE_WAIT", "09": "LAST_ACK", "0A": "LISTEN", "0B": "CLOSING",
}  # fmt: skip


def own_connections(port: int) -> list[str]:
    """The states of this process's TCP sockets connected to ``port`` (any state: an open socket is a leak)."""
    inodes: set[str] = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    states = []
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port and fields[9] in inodes:
                states.append(TCP_STATES.get(fields[3], fields[3]))
    return sorted(states)


def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> float | None:
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            return None
        time.sleep(interval)
    return time.monotonic() - started


def worker_alive() -> bool:
    return any(thread.name == "anchorcast-obs" and thread.is_alive() for thread in threading.enumerate())


class Errors(logging.Handler):
    """Keeps the obs output's error messages."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith("anchorcast_plugins.outputs.obs"):
            self.messages.append(record.getMessage())


class Scenario:
    def __init__(self, work: Path) -> None:
        self.obs = ObsStudio(work / "obs", password=PASSWORD, width=FMT.width, height=FMT.height)
        self.host = Host.create(PluginPolicy(), entry_points=False, extra_plugins=(RecordingPlugin(), obs_control))
        self.report: dict[str, Any] = {"phases": {}}
        self.errors = Errors()
        logging.getLogger("anchorcast_plugins").addHandler(self.errors)
        os.environ[PASSWORD_ENV] = PASSWORD

    def output(self, **settings: Any) -> obs_control.ObsControl:
        table = {"use": "obs", "port": self.obs.port, "password_env": PASSWORD_ENV, "required": True, **settings}
        raw = {
            "source": {"use": "test-list", "lines": [["x", ""]]},
            "voice": {"use": "test-tone"},
            "engine": {"use": "test-level"},
            "outputs": {"obs": table},
        }
        return self.host.build(self.host.load_profile(None, raw=raw).outputs["obs"])

    def phase(self, name: str, run: Callable[[dict[str, Any]], None]) -> None:
        run_phase(self.report, name, run)

    def run(self) -> dict[str, Any]:
        try:
            self.report["obs_start_to_port_s"] = round(self.obs.start(), 2)
            self.phase("unexpected_error", self.unexpected_error)
            self.phase("close_while_obs_hangs", self.close_while_obs_hangs)
        finally:
            self.obs.stop()
        return self.report

    def unexpected_error(self, result: dict[str, Any]) -> None:
        out = self.output()
        out.open(FMT)
        try:
            result["connections_while_up"] = own_connections(self.obs.port)
            self.errors.messages.clear()
            out.event(Caption(0.0, None))  # type: ignore[arg-type]  # a plugin's bug: a caption without text

            def write_fails() -> bool:
                try:
                    out.write(None, None)  # type: ignore[arg-type]
                except AnchorcastError as error:
                    result["write_error"] = str(error)
                    return True
                return False

            result["write_error"] = None
            result["failed_after_s"] = wait_until(write_fails, 5)
            try:
                out.event(Caption(1.0, "after the failure"))
                result["event_error"] = None
            except AnchorcastError as error:
                result["event_error"] = str(error)
            wait_until(lambda: not worker_alive(), 5)
            result["connections_after_failure"] = own_connections(self.obs.port)
            result["worker_errors"] = list(self.errors.messages)
        finally:
            out.close()
        result["connections_after_close"] = own_connections(self.obs.port)

    def close_while_obs_hangs(self, result: dict[str, Any]) -> None:
        out = self.output(caption_hold_s=0)
        out.open(FMT)
        saved = obs_control.CLOSE_TIMEOUT_S
        pid = self.obs.pid
        assert pid is not None
        stopped = False
        try:
            result["connections_while_up"] = own_connections(self.obs.port)
            os.killpg(pid, signal.SIGSTOP)  # OBS hangs: the kernel still holds the connection, nobody answers
            stopped = True
            out.event(Caption(0.0, "while OBS hangs"))
            time.sleep(0.3)  # the worker has sent the caption and waits for OBS's answer (up to 3 s)
            for number in range(EVENTS):
                out.event(Caption(float(number), f"caption line number {number}"))
            result["events"] = EVENTS
            result["figures_while_hung"] = out.metrics()
            obs_control.CLOSE_TIMEOUT_S = 0.5  # the worker is stuck longer than close() waits for it
            began = time.monotonic()
            out.close()
            close_s = time.monotonic() - began
            result["connections_after_close"] = own_connections(self.obs.port)
            result["close_s"] = round(close_s, 2)
            result["worker_alive_after_join_timeout"] = close_s >= 0.5  # join() returns early if the worker ends
            time.sleep(obs_control.CONNECT_TIMEOUT_S + 2)  # the worker's request has long timed out
            result["connections_later"] = own_connections(self.obs.port)
            result["worker_alive_later"] = worker_alive()
        finally:
            obs_control.CLOSE_TIMEOUT_S = saved
            if stopped:
                os.killpg(pid, signal.SIGCONT)
            out.close()


def main() -> int:
    return scenario_main(lambda work: Scenario(work).run(), "anchorcast-obs-lifecycle-")

if __name__ == "__main__":
    sys.exit(main())
