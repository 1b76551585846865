"""The soak harness's parts (scripts/soak.py runs them): the served session under test, the load on it, and the
faults injected into it, each deciding whether it was survived."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anchorcast.client import Client  # noqa: E402
from tests.obs_studio import ObsStudio  # noqa: E402
from tests.servers import NginxRtmp, free_port, wait_for_port  # noqa: E402

TOKEN = "soak-token-0123456789abcdef"
OBS_PASSWORD = "soak-obs-password-1"
OBS_PASSWORD_ENV = "ANCHORCAST_SOAK_OBS_PASSWORD"
SENTENCES = [
    "Good evening, and welcome to the late news.",
    "Markets closed higher today after a quiet session.",
    "Rain is expected in the north overnight, clearing by the morning.",
    "In sport, the home side won by two goals to one.",
    "今天的天气很好，我们明天再见。",
]
PROFILE = """
[stream]
width = 320
height = 180
fps = 25
sample_rate = 16000

[scheduler]
latency_budget_ms = 400

[source]
use = "script"
text = "The soak session."

[voice]
use = "espeak"
fallback = "espeak"

[engine]
use = "viseme"

[outputs.rtmp]
use = "rtmp"
url = "{rtmp}"
preset = "ultrafast"
max_backoff_s = 2.0

[outputs.file]
use = "file"
path = "soak.mp4"
preset = "ultrafast"
"""
OBS_STAGE = """
[outputs.obs]
use = "obs"
port = {obs_port}
password_env = "{password_env}"
media_url = "{rtmp}"
"""


@dataclass
class Fault:
    kind: str
    at_s: float
    survived: bool | None = None  # None: not injected
    detail: str = ""


@dataclass
class Sample:
    at_s: float
    rss_mb: float
    threads: int
    fds: int


@dataclass
class Soak:
    """The running harness: the server process, its client, and what was seen."""

    server: subprocess.Popen[str]
    client: Client
    url: str
    disk: Path | None
    nginx: NginxRtmp
    obs: ObsStudio | None
    started: float = field(default_factory=time.monotonic)
    samples: list[Sample] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    said: int = 0
    stop: threading.Event = field(default_factory=threading.Event)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def detail(self) -> dict[str, Any]:
        return self.client.session("soak")

    def output(self, name: str) -> dict[str, Any]:
        return next(o for o in self.detail()["outputs"] if o["name"] == name)

    def on_disk(self) -> Path | None:
        """The server's tmpfs, seen from outside its mount namespace."""
        return Path(f"/proc/{self.server.pid}/root{self.disk}") if self.disk else None


# --- the server --------------------------------------------------------------------------------------------


def start_server(folder: Path, rtmp_url: str, disk_mb: int, obs_port: int | None
                 ) -> tuple[subprocess.Popen[str], str, Path | None, list[str]]:
    """``anchorcast serve`` with the soak profile (and an ``obs`` output when ``obs_port`` is given), its file
    output on a private tmpfs of ``disk_mb`` when this runs as root with ``unshare``."""
    profiles, port = folder / "profiles", free_port()
    profiles.mkdir()
    profile = PROFILE.format(rtmp=rtmp_url)
    if obs_port is not None:
        profile += OBS_STAGE.format(obs_port=obs_port, password_env=OBS_PASSWORD_ENV, rtmp=rtmp_url)
    (profiles / "soak.toml").write_text(profile, encoding="utf-8")
    serve = [sys.executable, "-m", "anchorcast", "serve", "--port", str(port), "--profiles", str(profiles),
             "--no-session"]
    env = {**os.environ, "ANCHORCAST_TOKEN": TOKEN, "ANCHORCAST_HOME": str(folder / "home"), "COLUMNS": "200",
           OBS_PASSWORD_ENV: OBS_PASSWORD}
    disk: Path | None = folder / "disk"
    assert disk is not None
    disk.mkdir()
    if shutil.which("unshare") and os.geteuid() == 0:
        mount = f"mount -t tmpfs -o size={disk_mb}m tmpfs {disk} && exec "
        command = ["unshare", "-m", "bash", "-c", mount + " ".join([*serve, "--outputs", str(disk)])]
    else:  # no private tmpfs: the disk-full fault is skipped
        command, disk = [*serve, "--outputs", str(disk)], None
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=folder)
    lines: list[str] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))

    threading.Thread(target=read, daemon=True).start()
    wait_for_port(port, timeout=120)
    return process, f"http://127.0.0.1:{port}", disk, lines


def stop_server(process: subprocess.Popen[str]) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)
        try:
            return process.wait(60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


# --- load and sampling -------------------------------------------------------------------------------------


def speak_in_a_loop(soak: Soak) -> None:
    """Keeps about two sentences queued, as a chatbot feeding the anchor would."""
    while not soak.stop.is_set():
        try:
            if len(soak.detail()["queue"]) < 2:
                soak.client.say("soak", SENTENCES[soak.said % len(SENTENCES)])
                soak.said += 1
        except Exception as error:  # a refused request is counted by the faults that caused it; keep talking
            soak.lines.append(f"speaker: {error}")
        soak.stop.wait(0.5)


def sample_every(soak: Soak, seconds: float) -> None:
    proc = Path(f"/proc/{soak.server.pid}")
    while True:
        try:
            rss = next(int(line.split()[1]) for line in (proc / "status").read_text().splitlines()
                       if line.startswith("VmRSS:"))
            soak.samples.append(Sample(soak.elapsed(), rss / 1024, len(os.listdir(proc / "task")),
                                       len(os.listdir(proc / "fd"))))
        except (OSError, StopIteration):
            return
        if soak.stop.wait(seconds):
            return


# --- faults ------------------------------------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except Exception:  # the server may be busy answering: try again
            pass
        time.sleep(0.25)
    return False


def on_air(soak: Soak) -> bool:
    """Frames are still airing: the session's frame count moves."""
    before = soak.detail()["metrics"]["frames"]
    return wait_for(lambda: soak.detail()["metrics"]["frames"] > before + 10, 10)


def restart_rtmp(soak: Soak, fault: Fault) -> None:
    before = soak.output("rtmp")["metrics"].get("reconnects", 0)
    soak.nginx.stop()
    time.sleep(2.0)
    soak.nginx.start()
    back = wait_for(lambda: soak.output("rtmp")["metrics"].get("reconnects", 0) > before, 30)
    fault.survived = back and on_air(soak)
    fault.detail = "reconnected" if back else "the output did not reconnect within 30 s"


def vanishing_clients(soak: Soak, count: int, fault: Fault) -> None:
    """``count`` clients that connect and go away mid-request, in three ways, all at once."""
    port = int(soak.url.rsplit(":", 1)[1])
    partial = [
        b"",  # connect and close
        b"POST /v1/sessions/soak/say HTTP/1.1\r\nHost: soak\r\n",  # half a header
        (f"POST /v1/sessions/soak/say HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {TOKEN}\r\n"
         "Content-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"text\": \"never fin").encode(),
        f"GET /v1/sessions/soak HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode(),
    ]

    def vanish(index: int) -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
                connection.sendall(partial[index % len(partial)])
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass

    threads = [threading.Thread(target=vanish, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    healthy = wait_for(lambda: soak.client.health()["status"] == "ok", 10)
    fault.survived = healthy and on_air(soak)
    fault.detail = f"{count} clients vanished" if fault.survived else "the server stopped answering"


def fill_disk(soak: Soak, fault: Fault) -> None:
    disk = soak.on_disk()
    if disk is None:
        fault.detail = "not injected: needs unshare and root for a private tmpfs"
        return
    if soak.output("file")["state"] != "open":
        fault.survived = False
        fault.detail = f"the file output was already {soak.output('file')['state']} (its disk filled by itself?)"
        return
    filler = disk / "filler"
    try:
        with filler.open("wb") as file:
            block = b"\0" * (1 << 20)
            while True:
                file.write(block)
                file.flush()
    except OSError:
        pass  # ENOSPC: the disk is full
    taken_off = wait_for(lambda: soak.output("file")["state"] == "failed", 30)
    filler.unlink(missing_ok=True)
    freed = time.monotonic()
    resumed = taken_off and wait_for(lambda: soak.output("file")["state"] == "open", 30)
    fault.survived = resumed and on_air(soak) and soak.output("rtmp")["state"] != "failed"
    fault.detail = (f"taken off as a disk full, back {time.monotonic() - freed:.1f} s after the disk was freed; "
                    "the stream went on" if resumed else
                    "the file output did not report the full disk within 30 s" if not taken_off else
                    "the file output did not resume within 30 s of the disk being freed")


def voice_failure(soak: Soak, fault: Fault) -> None:
    """A sentence for a voice that will not open: the session's own voice reads it, and the session goes on."""
    before = soak.detail()["metrics"]["frames"]
    utterance = soak.client.say("soak", "This sentence asks for a broken voice.", voice="espeak:zz-soak-broken")
    read = wait_for(lambda: all(u["id"] != utterance for u in soak.detail()["queue"]), 60)
    fault.survived = read and on_air(soak) and soak.detail()["metrics"]["frames"] > before
    fault.detail = "read by the session's voice" if read else "the sentence was never read"


def restart_obs(soak: Soak, fault: Fault) -> None:
    """OBS crashes (its process group killed) and is started again: survived when the ``obs`` output connects
    again on its own and the session stayed on air meanwhile."""
    if soak.obs is None:
        fault.detail = "not injected: OBS needs a private network namespace (root, unshare) and obs-studio, Xvfb"
        return
    before = soak.output("obs")["metrics"].get("connects", 0)
    soak.obs.kill()
    time.sleep(2.0)
    aired = on_air(soak)
    soak.obs.start()
    back = wait_for(lambda: soak.output("obs")["metrics"].get("connects", 0) > before, 60)
    fault.survived = back and aired and on_air(soak)
    fault.detail = "reconnected" if back else "the obs output did not reconnect within 60 s"


def inject(soak: Soak, fault: Fault, size: int) -> None:
    if fault.kind == "rtmp restart":
        restart_rtmp(soak, fault)
    elif fault.kind == "obs restart":
        restart_obs(soak, fault)
    elif fault.kind == "api clients vanish":
        vanishing_clients(soak, size, fault)
    elif fault.kind == "disk full":
        fill_disk(soak, fault)
    else:
        voice_failure(soak, fault)


