#!/usr/bin/env python3
"""Benchmark the browser paths of one session: server CPU per viewer of the coefficient stream (what the
``/avatar3d`` page takes: ``WS /v1/sessions/{id}/coefficients?audio=pcm``, 53 weights and the frame's sound)
against the WebRTC video path (WHEP: VP8 and Opus), measured in the same run on the same speaking session.

A real server (uvicorn, its own process) runs one face3d session that speaks without a pause. The server
process's CPU (user + system, from /proc, percent of one core) is measured over ``--seconds`` with no viewer,
then with N coefficient viewers (WebSocket clients in this process, which check they get every frame), then with
N WHEP viewers (aiortc peer connections in a child process, as tests/whep_viewer.py makes them, decoding what
they get), and once more with no viewer (the spread of the two no-viewer figures is the noise). "per viewer" is
the CPU over the no-viewer mean divided by N, for the whole process (which the engine's own load makes noisy: the
spread of the two no-viewer figures says how much) and for its main thread, the event loop, where each viewer's
own cost is paid on both paths (WebSocket sends; RTP packetisation and SRTP encryption); WebRTC's first viewer
also starts the session's one VP8 encoder (on a thread of its own: in the process figure), so "per extra viewer"
(the loop's slope from the smallest N) is given too. fps/viewer: frames a client got (WebRTC: decoded); VP8 fps:
pictures the session's encoder encoded (it drops the oldest when it falls behind). Bytes/s per viewer are what
one client read.

    python scripts/bench_avatar3d.py [--viewers 1,4,8] [--ws-viewers 32] [--seconds 10] [--short]

``--short`` (CI): 1 and 2 viewers of each kind, 4 s each. A WebRTC session takes at most 10 viewers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from websockets.sync.client import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.studio_server import TOKEN, StudioServer

AUTH = {"Authorization": f"Bearer {TOKEN}"}
SENTENCE = "Good evening, here is the news from the studio, with the markets, the weather and the sport. "
PROFILE = """
[stream]
width = {size}
height = {size}
fps = 25
sample_rate = 16000

[scheduler]
latency_budget_ms = 400
overrun = "repeat"

[source]
use = "script"
text = "unused by sessions"

[voice]
use = "espeak"

[engine]
use = "face3d"
{weights}

[outputs.captions]  # an output is required; this one costs next to nothing
use = "captions"
path = "session.vtt"
"""


def cpu_seconds(pid: int, thread: int | None = None) -> float:
    """User + system CPU seconds of a process, or of one of its threads."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def keep_speaking(api: httpx.Client, session: str, stop: threading.Event) -> None:
    """Queues a sentence whenever fewer than two wait, so the session never falls silent."""
    while not stop.is_set():
        if len(api.get(f"/v1/sessions/{session}").json()["queue"]) < 2:
            api.post(f"/v1/sessions/{session}/say", json={"text": SENTENCE})
        stop.wait(0.5)


def server_cpu(server: StudioServer, seconds: float) -> tuple[float, float]:
    """The server's CPU over ``seconds`` in percent of one core: the whole process, and its main thread, which
    runs the event loop where every per-viewer cost of both paths is paid (WebSocket sends; RTP packetisation
    and SRTP), away from the engine's and the encoders' threads."""
    cpu0, loop0, wall0 = cpu_seconds(server.pid), cpu_seconds(server.pid, server.pid), time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - wall0
    return (100 * (cpu_seconds(server.pid) - cpu0) / wall,
            100 * (cpu_seconds(server.pid, server.pid) - loop0) / wall)


class CoefficientViewer(threading.Thread):
    """One WebSocket client of the page's stream (``?audio=pcm``), counting frames and bytes."""

    def __init__(self, url: str, session: str) -> None:
        super().__init__(daemon=True)
        self.url = url.replace("http", "ws", 1) + f"/v1/sessions/{session}/coefficients?audio=pcm&token={TOKEN}"
        self.frames = 0
        self.bytes = 0
        self.gaps = 0
        self.introduced = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        last = None
        with connect(self.url, max_size=None) as socket:
            while not self.stop.is_set():
                message = socket.recv(10)
                if isinstance(message, str):
                    if json.loads(message)["type"] == "expressions":
                        self.introduced.set()
                    continue
                index = int.from_bytes(message[4:8], "little")
                self.gaps += last is not None and index != last + 1
                last = index
                self.frames += 1
                self.bytes += len(message)


def measure_coefficients(server: StudioServer, session: str, count: int, seconds: float) -> dict[str, float]:
    viewers = [CoefficientViewer(server.url, session) for _ in range(count)]
    for viewer in viewers:
        viewer.start()
    for viewer in viewers:
        if not viewer.introduced.wait(30):
            raise RuntimeError("a coefficient viewer got no expressions message within 30 s")
    time.sleep(1.0)
    frames0 = [v.frames for v in viewers]
    bytes0 = [v.bytes for v in viewers]
    wall0 = time.monotonic()
    cpu, loop = server_cpu(server, seconds)
    wall = time.monotonic() - wall0
    fps = statistics.mean((v.frames - f) / wall for v, f in zip(viewers, frames0, strict=True))
    rate = statistics.mean((v.bytes - b) / wall for v, b in zip(viewers, bytes0, strict=True))
    for viewer in viewers:
        viewer.stop.set()
    for viewer in viewers:
        viewer.join(15)
    return {"cpu": cpu, "loop": loop, "encoded": float("nan"), "fps": fps, "bytes": rate,
            "gaps": sum(v.gaps for v in viewers)}


def measure_webrtc(server: StudioServer, session: str, count: int, seconds: float) -> dict[str, float]:
    child = subprocess.Popen([sys.executable, __file__, "--whep-child", server.url, session, str(count)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             cwd=Path(__file__).resolve().parent.parent)
    assert child.stdout is not None and child.stdin is not None
    latest: dict[str, Any] = {}
    try:
        line = child.stdout.readline()
        if not line.startswith("connected"):
            raise RuntimeError(f"the WHEP viewers did not connect: {line!r}")

        def follow() -> None:
            assert child.stdout is not None
            for report in child.stdout:
                latest.update(json.loads(report))

        threading.Thread(target=follow, daemon=True).start()
        time.sleep(2.0)  # keyframes, jitter buffers
        before = dict(latest)
        encoded0 = encoded_frames(server, session)
        cpu, loop = server_cpu(server, seconds)
        encoded = (encoded_frames(server, session) - encoded0) / seconds
        time.sleep(0.3)
        after = dict(latest)
    finally:
        child.stdin.write("stop\n")  # the child hangs its viewers up (DELETE), as a player would
        child.stdin.flush()
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    with httpx.Client(base_url=server.url, headers=AUTH) as api:
        deadline = time.monotonic() + 30
        while api.get(f"/v1/sessions/{session}").json()["webrtc"]["viewers"] and time.monotonic() < deadline:
            time.sleep(0.5)
    wall = after["time"] - before["time"]
    return {"cpu": cpu, "loop": loop, "encoded": encoded, "fps": (after["video"] - before["video"]) / count / wall,
            "bytes": (after["bytes"] - before["bytes"]) / count / wall, "gaps": 0}


def encoded_frames(server: StudioServer, session: str) -> int:
    """The pictures the session's VP8 encoder has encoded so far (it drops the oldest when it falls behind)."""
    return int(httpx.get(f"{server.url}/v1/sessions/{session}", headers=AUTH).json()["webrtc"]["encoded_frames"])


async def _whep_child(url: str, session: str, count: int) -> None:
    """N aiortc viewers; prints "connected", then every 0.25 s their frame and byte counts as JSON, until a line
    on stdin says stop: then every viewer hangs up."""
    from tests.whep_viewer import WhepViewer

    received = [0]

    def counting(handle: Any) -> Any:
        async def rtp(packet: Any, arrival_time_ms: int) -> None:
            received[0] += len(packet.payload) + 12  # the RTP header without extensions
            await handle(packet, arrival_time_ms)
        return rtp

    viewers = [await WhepViewer(url, TOKEN, session, keep_video=False).connect() for _ in range(count)]
    for viewer in viewers:
        for transceiver in viewer.pc.getTransceivers():
            transceiver.receiver._handle_rtp_packet = counting(transceiver.receiver._handle_rtp_packet)
        await viewer.wait_connected(30)
    print("connected", flush=True)
    stop = asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    while not stop.done():
        print(json.dumps({"time": time.monotonic(), "video": sum(len(v.video.times) for v in viewers),
                          "bytes": received[0]}), flush=True)
        await asyncio.wait([stop], timeout=0.25)
    await asyncio.gather(*(viewer.hang_up() for viewer in viewers), return_exceptions=True)


def checkpoint(folder: Path) -> str:
    """The engine's ``weights`` line: the shipped weights when the package has them, else an untrained model's
    (CPU per viewer does not depend on what the weights say)."""
    from anchorcast_plugins.engines.face3d import coeff_model

    shipped = Path(coeff_model.__file__).resolve().parent / "assets" / "coeffs.safetensors"
    if shipped.exists():
        return ""
    path = folder / "untrained.safetensors"
    coeff_model.CoefficientModel().save(path)
    return f'weights = "{path}"'


def main(argv: list[str] | None = None) -> int:
    if argv is None and len(sys.argv) > 1 and sys.argv[1] == "--whep-child":
        asyncio.run(_whep_child(sys.argv[2], sys.argv[3], int(sys.argv[4])))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--viewers", default="1,4,8", help="N for both paths (WebRTC: at most 10)")
    parser.add_argument("--ws-viewers", default="32", help="more N for the coefficient path only ('' for none)")
    parser.add_argument("--seconds", type=float, default=10.0, help="each measurement's length")
    parser.add_argument("--size", type=int, default=512, help="the stream's width and height")
    parser.add_argument("--short", action="store_true", help="CI: 1 and 2 viewers of each kind, 4 s each")
    args = parser.parse_args(argv)
    if args.short:
        args.viewers, args.ws_viewers, args.seconds = "1,2", "", 4.0
    counts = [int(n) for n in args.viewers.split(",")]
    ws_counts = counts + [int(n) for n in args.ws_viewers.split(",") if n]
    console = Console(width=200)
    table = Table(title=f"server CPU per viewer: one face3d session speaking, {args.size}x{args.size} @ 25 fps, "
                  f"{os.cpu_count()} CPUs, {args.seconds:g} s each", header_style="bold")
    for column in ("path", "viewers", "server CPU %", "per viewer", "event loop CPU %", "per viewer (loop)",
                   "per extra viewer (loop)", "fps/viewer", "VP8 fps", "kB/s per viewer"):
        table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory(prefix="anchorcast-bench-avatar3d-") as scratch:
        folder = Path(scratch)
        profile = PROFILE.format(size=args.size, weights=checkpoint(folder))
        with StudioServer(folder / "server", "--no-session", profiles={"bench-face3d": profile}) as server, \
                httpx.Client(base_url=server.url, headers=AUTH, timeout=300) as api:
            created = api.post("/v1/sessions", json={"profile": "bench-face3d", "id": "bench"})
            if created.status_code != 201:
                raise SystemExit(f"cannot create the face3d session: {created.text}")
            stop = threading.Event()
            speaker = threading.Thread(target=keep_speaking, args=(api, "bench", stop), daemon=True)
            speaker.start()
            time.sleep(3.0)  # the engine and the voice warm up
            idle = [server_cpu(server, args.seconds)]
            rows: list[tuple[str, int, dict[str, float]]] = []
            for count in ws_counts:
                rows.append(("coefficients WS", count, measure_coefficients(server, "bench", count, args.seconds)))
                console.print(f"coefficients x{count}: done", highlight=False)
            for count in counts:
                rows.append(("WebRTC (WHEP)", count, measure_webrtc(server, "bench", count, args.seconds)))
                console.print(f"webrtc x{count}: done", highlight=False)
            idle.append(server_cpu(server, args.seconds))
            stop.set()
            speaker.join(10)
            report = api.get("/v1/sessions/bench").json()["metrics"]
            api.delete("/v1/sessions/bench")
    base = statistics.mean(cpu for cpu, _ in idle)
    base_loop = statistics.mean(loop for _, loop in idle)
    table.add_row("no viewer", "0", f"{base:.1f} ± {abs(idle[0][0] - idle[1][0]) / 2:.1f}", "-",
                  f"{base_loop:.2f} ± {abs(idle[0][1] - idle[1][1]) / 2:.2f}", "-", "-", "-", "-", "-")
    for path in ("coefficients WS", "WebRTC (WHEP)"):
        mine = [(count, result) for name, count, result in rows if name == path]
        first_count, first = mine[0]
        for count, result in mine:
            slope = (result["loop"] - first["loop"]) / (count - first_count) if count > first_count else None
            table.add_row(path, str(count), f"{result['cpu']:.1f}", f"{(result['cpu'] - base) / count:+.2f}",
                          f"{result['loop']:.2f}", f"{(result['loop'] - base_loop) / count:.3f}",
                          f"{slope:.3f}" if slope is not None else "-", f"{result['fps']:.1f}",
                          "-" if result["encoded"] != result["encoded"] else f"{result['encoded']:.1f}",
                          f"{result['bytes'] / 1000:.1f}")
    console.print(table)
    console.print(f"session: {report['fps']:.1f} fps, {report['overruns']} overruns, frame gaps seen by the "
                  f"coefficient viewers: {sum(r['gaps'] for n, _, r in rows if n == 'coefficients WS')}",
                  highlight=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
