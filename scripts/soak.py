#!/usr/bin/env python3
"""Soak and fault harness: a served session speaking in a loop for a long time, with faults injected, and one
table at the end. Loopback only; everything it starts is stopped.

The studio server (``anchorcast serve``, a real uvicorn process) runs one session, ``soak``, whose outputs are an
RTMP push to a private nginx-rtmp server and a fragmented MP4 file. The file is written on a small tmpfs mounted
in the server's own mount namespace (``unshare -m``, as root), so the disk can really be filled. A speaker
thread keeps the session talking through the API, as a chatbot would. During the run:

- the RTMP server is killed and restarted (``--rtmp-restarts``, default 20): survived when the output reconnects;
- API clients connect and vanish mid-request (``--clients``, default 200, in bursts): survived when the server
  still answers and the session is still on air;
- the disk is filled once and freed: survived when only the file output is taken off (reported as a disk full)
  and the stream goes on;
- a voice failure is injected once (a sentence asking for a voice that will not open): survived when the
  session's own voice reads it and the session goes on.

Sampled every ``--sample-s`` seconds: the server's RSS, threads and open files. At the end an RTMP reader plays
the stream for a few seconds and the gap between its audio and video timestamps is the A/V drift.

    python scripts/soak.py                 # 60 minutes
    python scripts/soak.py --short         # about 90 s, fewer faults (CI)
    python scripts/soak.py --minutes 10 --rtmp-restarts 5 --clients 50

OBS restarts are not part of this harness: the OBS output's restart handling is exercised against real OBS in
tests/test_obs_control_lifecycle.py.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from anchorcast.client import Client  # noqa: E402
from tests.servers import NginxRtmp, RtmpReader, free_port, wait_for_port  # noqa: E402

TOKEN = "soak-token-0123456789abcdef"
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


def start_server(folder: Path, rtmp_url: str, disk_mb: int) -> tuple[subprocess.Popen[str], str, Path | None,
                                                                         list[str]]:
    profiles, port = folder / "profiles", free_port()
    profiles.mkdir()
    (profiles / "soak.toml").write_text(PROFILE.format(rtmp=rtmp_url), encoding="utf-8")
    serve = [sys.executable, "-m", "anchorcast", "serve", "--port", str(port), "--profiles", str(profiles),
             "--no-session"]
    env = {**os.environ, "ANCHORCAST_TOKEN": TOKEN, "ANCHORCAST_HOME": str(folder / "home"), "COLUMNS": "200"}
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


def restart_rtmp(soak: Soak, nginx: NginxRtmp, fault: Fault) -> None:
    before = soak.output("rtmp")["metrics"].get("reconnects", 0)
    nginx.stop()
    time.sleep(2.0)
    nginx.start()
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
    fault.survived = taken_off and on_air(soak) and soak.output("rtmp")["state"] != "failed"
    fault.detail = "file output taken off as a disk full; the stream went on" if taken_off else \
        "the file output did not report the full disk within 30 s"


def voice_failure(soak: Soak, fault: Fault) -> None:
    """A sentence for a voice that will not open: the session's own voice reads it, and the session goes on."""
    before = soak.detail()["metrics"]["frames"]
    utterance = soak.client.say("soak", "This sentence asks for a broken voice.", voice="espeak:zz-soak-broken")
    read = wait_for(lambda: all(u["id"] != utterance for u in soak.detail()["queue"]), 60)
    fault.survived = read and on_air(soak) and soak.detail()["metrics"]["frames"] > before
    fault.detail = "read by the session's voice" if read else "the sentence was never read"


def inject(soak: Soak, nginx: NginxRtmp, fault: Fault, size: int) -> None:
    if fault.kind == "rtmp restart":
        restart_rtmp(soak, nginx, fault)
    elif fault.kind == "api clients vanish":
        vanishing_clients(soak, size, fault)
    elif fault.kind == "disk full":
        fill_disk(soak, fault)
    else:
        voice_failure(soak, fault)


# --- the run -----------------------------------------------------------------------------------------------


def schedule(seconds: float, rtmp: int, clients: int) -> list[tuple[Fault, int]]:
    """Faults spread over the middle 80 % of the run: (fault, size) in time order."""
    kinds: list[tuple[str, int]] = [("rtmp restart", 0)] * rtmp
    bursts = max(1, min(10, clients // 20))
    kinds += [("api clients vanish", clients // bursts)] * bursts
    kinds.insert(len(kinds) // 2, ("disk full", 0))
    kinds.insert(len(kinds) // 3, ("voice failure", 0))
    gap = 0.8 * seconds / max(1, len(kinds))
    return [(Fault(kind, 0.1 * seconds + i * gap), size) for i, (kind, size) in enumerate(kinds)]


def drift_at_reader(url: str, soak: Soak, seconds: float = 6.0) -> float | None:
    """Plays the stream for ``seconds``, then ends the session; the gap between the last audio and video
    timestamps received, in ms."""
    reader = RtmpReader(url, decode=False, open_s=20, idle_s=4).start()
    time.sleep(seconds)
    soak.stop.set()
    soak.client.delete_session("soak")
    got = reader.join(60)
    if not got.video_packets or not got.audio_packets:
        return None
    return 1000 * (got.audio_packets[-1][0] - got.video_packets[-1][0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--short", action="store_true", help="about 90 s with fewer faults (CI)")
    parser.add_argument("--rtmp-restarts", type=int, default=20)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--sample-s", type=float, default=60.0, help="how often to sample RSS, threads, fds")
    parser.add_argument("--disk-mb", type=int, default=48, help="size of the file output's tmpfs")
    args = parser.parse_args()
    if args.short:
        args.minutes, args.rtmp_restarts, args.clients, args.sample_s = 1.5, 3, 40, 10.0
    console = Console()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="anchorcast-soak-") as folder:
        nginx = NginxRtmp(Path(folder) / "rtmp").start()
        process = None
        try:
            process, url, disk, lines = start_server(Path(folder), nginx.url("soak"), args.disk_mb)
            soak = Soak(process, Client(url, token=TOKEN), url, disk, lines=lines)
            soak.client.create_session("soak", session_id="soak")
            threading.Thread(target=speak_in_a_loop, args=(soak,), daemon=True).start()
            threading.Thread(target=sample_every, args=(soak, args.sample_s), daemon=True).start()
            faults = schedule(seconds, args.rtmp_restarts, args.clients)
            console.print(f"soak: {args.minutes:g} min, {len(faults)} faults, server {url}")
            for fault, size in faults:
                while soak.elapsed() < fault.at_s:
                    time.sleep(0.2)
                inject(soak, nginx, fault, size)
                console.print(f"  {soak.elapsed():6.0f} s  {fault.kind}: "
                              f"{'survived' if fault.survived else 'NOT survived' if fault.survived is False else '-'}"
                              f" ({fault.detail})")
            while soak.elapsed() < seconds:
                time.sleep(0.5)
            final = soak.detail()
            drift = drift_at_reader(nginx.url("soak"), soak)
            code = stop_server(process)
        finally:
            if process is not None:
                stop_server(process)
            nginx.stop()
    print_table(console, args.minutes, [f for f, _ in faults], soak, final, drift, code)
    survived = all(f.survived is not False for f, _ in faults)
    return 0 if survived and code == 0 else 1


def print_table(console: Console, minutes: float, faults: list[Fault], soak: Soak, final: dict[str, Any],
                drift: float | None, code: int) -> None:
    table = Table(title=f"soak: {minutes:g} minutes, session speaking in a loop ({soak.said} sentences)",
                  header_style="bold")
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_column("goal")
    kinds = sorted({f.kind for f in faults})
    for kind in kinds:
        these = [f for f in faults if f.kind == kind]
        injected = [f for f in these if f.survived is not None]
        ok = sum(1 for f in injected if f.survived)
        note = "" if injected else these[0].detail
        table.add_row(f"faults: {kind}", f"{ok} / {len(injected)} survived" + (f" ({note})" if note else ""),
                      "all survived")
    report = final.get("report", {})
    fps = final["stream"]["fps"]
    rtmp = next((o for o in final["outputs"] if o["name"] == "rtmp"), {}).get("metrics", {})
    table.add_row("frames aired", str(report.get("frames", 0)), "")
    table.add_row("frames late (overruns, dropped)", f"{report.get('overruns', 0)}, "
                  f"{report.get('dropped_frames', 0)}", "0")
    table.add_row("stream lost at the RTMP server", f"{rtmp.get('frames_dropped', 0) / fps:.1f} s "
                  f"({rtmp.get('reconnects', 0)} reconnects)", "the outages only")
    file_out = next((o for o in final["outputs"] if o["name"] == "file"), {})
    table.add_row("file output", file_out.get("state", "-"), "taken off at the disk full only")
    warm = soak.samples[1] if len(soak.samples) > 2 else (soak.samples[0] if soak.samples else None)
    last = soak.samples[-1] if soak.samples else None
    if warm and last:
        growth = 100 * (last.rss_mb / warm.rss_mb - 1)
        table.add_row("RSS after warm-up -> end", f"{warm.rss_mb:.0f} -> {last.rss_mb:.0f} MB ({growth:+.1f} %)",
                      "< +5 %")
        table.add_row("threads after warm-up -> end", f"{warm.threads} -> {last.threads}", "flat")
        table.add_row("open files after warm-up -> end", f"{warm.fds} -> {last.fds}", "flat")
    table.add_row("A/V gap at the reader at the end", f"{drift:.0f} ms" if drift is not None else "no stream",
                  f"within one frame ({1000 / fps:.0f} ms)")
    table.add_row("server exit code", str(code), "0")
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
