#!/usr/bin/env python3
"""Soak and fault harness: a served session speaking in a loop for a long time, with faults injected, and one
table at the end. Loopback only; everything it starts is stopped.

The studio server (``anchorcast serve``, a real uvicorn process) runs one session, ``soak``, whose outputs are an
RTMP push to a private nginx-rtmp server, a fragmented MP4 file and an ``obs`` output driving a real OBS Studio
(headless, playing the RTMP stream in its media source). The file is written on a small tmpfs mounted in the
server's own mount namespace (``unshare -m``), so the disk can really be filled. OBS's websocket listens on every
interface, so as root the harness runs itself in a private network namespace with only loopback (``unshare -n``).
A speaker thread keeps the session talking through the API, as a chatbot would. During the run:

- the RTMP server is killed and restarted (``--rtmp-restarts``, default 20): survived when the output reconnects;
- OBS is killed like a crash and started again (``--obs-restarts``, default 5): survived when the ``obs`` output
  connects again by itself and the session stayed on air;
- API clients connect and vanish mid-request (``--clients``, default 200, in bursts): survived when the server
  still answers and the session is still on air;
- the disk is filled once and freed: survived when only the file output is taken off (reported as a disk full),
  it goes on in a second part once the disk has room, and the stream goes on;
- a voice failure is injected once (a sentence asking for a voice that will not open): survived when the
  session's own voice reads it and the session goes on.

Sampled every ``--sample-s`` seconds: the server's RSS, threads and open files. At the end an RTMP reader plays
the stream for a few seconds (the gap between its audio and video timestamps is the A/V drift), and the file's
parts are decoded: every aired frame must be in them except those of the disk-full window.

    python scripts/soak.py                 # 60 minutes
    python scripts/soak.py --short         # about 2 minutes, fewer faults (CI: tests/test_soak.py)
    python scripts/soak.py --minutes 10 --rtmp-restarts 5 --obs-restarts 2 --clients 50
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import av
from rich.console import Console
from rich.table import Table
from soak_faults import (
    OBS_PASSWORD,
    TOKEN,
    Fault,
    Soak,
    inject,
    sample_every,
    speak_in_a_loop,
    start_server,
    stop_server,
)

from anchorcast.client import Client
from tests.obs_studio import ObsStudio, missing_programs, private_network_problem
from tests.servers import NginxRtmp, RtmpReader

IN_NAMESPACE_ENV = "ANCHORCAST_SOAK_IN_NAMESPACE"
WARM_UP_S = 300.0


# --- the run -----------------------------------------------------------------------------------------------


def schedule(seconds: float, rtmp: int, obs: int, clients: int) -> list[tuple[Fault, int]]:
    """Faults spread over the middle 80 % of the run: (fault, size) in time order."""
    kinds: list[tuple[str, int]] = [("rtmp restart", 0)] * rtmp
    bursts = max(1, min(10, clients // 20))
    kinds += [("api clients vanish", clients // bursts)] * bursts
    for index in range(obs):  # spread among the others
        kinds.insert(round((index + 0.5) * len(kinds) / obs), ("obs restart", 0))
    kinds.insert(len(kinds) // 2, ("disk full", 0))
    kinds.insert(len(kinds) // 3, ("voice failure", 0))
    gap = 0.8 * seconds / max(1, len(kinds))
    return [(Fault(kind, 0.1 * seconds + i * gap), size) for i, (kind, size) in enumerate(kinds)]


def file_frames(soak: Soak, files: list[str]) -> tuple[int, list[str]]:
    """Frames that decode from the session's file parts (read through the server's mount namespace)."""
    root, count, names = Path(f"/proc/{soak.server.pid}/root"), 0, []
    for name in files:
        names.append(Path(name).name)
        try:
            with av.open(str(root / name.lstrip("/"))) as container:
                for _ in container.decode(video=0):
                    count += 1
        except (OSError, av.FFmpegError):
            pass  # a part cut off by the full disk ends where it ends
    return count, names


def in_private_network(argv: list[str]) -> int | None:
    """As root with unshare: runs this harness again in a private network (and PID) namespace with only loopback,
    where OBS may be started, and returns its exit code; None when it should run here."""
    if os.environ.get(IN_NAMESPACE_ENV) or private_network_problem() is None:
        return None
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("ip") or missing_programs():
        return None
    # bash stays as the namespace's PID 1 (no exec): it reaps the orphans (nginx workers) that would pile up as
    # zombies under a Python PID 1
    inner = f"ip link set lo up && {sys.executable} {Path(__file__).resolve()} " + " ".join(argv)
    command = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "bash", "-c", inner]
    return subprocess.run(command, env={**os.environ, IN_NAMESPACE_ENV: "1"}).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--short", action="store_true", help="about 2 minutes with fewer faults (CI)")
    parser.add_argument("--rtmp-restarts", type=int, default=20)
    parser.add_argument("--obs-restarts", type=int, default=5)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--sample-s", type=float, default=60.0, help="how often to sample RSS, threads, fds")
    parser.add_argument("--disk-mb", type=int, default=None,
                        help="size of the file output's tmpfs (default: room for the whole recording, 5 MB a minute "
                        "with 32 MB spare, so that only the injected fault fills it)")
    args = parser.parse_args()
    if args.obs_restarts and (code := in_private_network(sys.argv[1:])) is not None:
        return code
    if args.short:
        args.minutes, args.rtmp_restarts, args.clients, args.sample_s = 2.0, 3, 40, 10.0
        args.obs_restarts = min(args.obs_restarts, 1)
    if args.disk_mb is None:
        args.disk_mb = max(48, round(5 * args.minutes) + 32)  # the soak's 320x180 stream: about 2.4 MB a minute
    console = Console()
    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="anchorcast-soak-") as folder:
        nginx = NginxRtmp(Path(folder) / "rtmp").start()
        obs = None
        if args.obs_restarts and private_network_problem() is None and not missing_programs():
            obs = ObsStudio(Path(folder) / "obs", password=OBS_PASSWORD)
            obs.start()
        process = None
        try:
            process, url, disk, lines = start_server(Path(folder), nginx.url("soak"), args.disk_mb,
                                                     obs.port if obs else None)
            soak = Soak(process, Client(url, token=TOKEN), url, disk, nginx, obs, lines=lines)
            soak.client.create_session("soak", session_id="soak")
            threading.Thread(target=speak_in_a_loop, args=(soak,), daemon=True).start()
            threading.Thread(target=sample_every, args=(soak, args.sample_s), daemon=True).start()
            faults = schedule(seconds, args.rtmp_restarts, args.obs_restarts, args.clients)
            console.print(f"soak: {args.minutes:g} min, {len(faults)} faults, server {url}")
            for fault, size in faults:
                while soak.elapsed() < fault.at_s:
                    time.sleep(0.2)
                inject(soak, fault, size)
                console.print(f"  {soak.elapsed():6.0f} s  {fault.kind}: "
                              f"{'survived' if fault.survived else 'NOT survived' if fault.survived is False else '-'}"
                              f" ({fault.detail})")
            while soak.elapsed() < seconds:
                time.sleep(0.5)
            reader = RtmpReader(nginx.url("soak"), decode=False, open_s=20, idle_s=4, probe_s=3.0).start()
            time.sleep(6.0)
            final = soak.detail()
            soak.stop.set()
            ended = soak.client.delete_session("soak")
            got = reader.join(60)
            in_files, parts = file_frames(soak, ended.get("files", []))
            code = stop_server(process)
        finally:
            if process is not None:
                stop_server(process)
            if obs is not None:
                obs.stop()
            nginx.stop()
    drift = (1000 * (got.audio_packets[-1][0] - got.video_packets[-1][0]), "") if got.video_packets and \
        got.audio_packets else (None, got.error or "no packets")
    print_table(console, args.minutes, [f for f, _ in faults], soak, final, drift, code,
                (ended.get("frames") or 0, in_files, parts))
    survived = all(f.survived is not False for f, _ in faults)
    return 0 if survived and code == 0 else 1


def print_table(console: Console, minutes: float, faults: list[Fault], soak: Soak, final: dict[str, Any],
                drift: tuple[float | None, str], code: int, files: tuple[int, int, list[str]]) -> None:
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
    aired, in_files, parts = files
    window = file_out.get("metrics", {}).get("frames_lost", 0)
    table.add_row("file output at the end", f"{file_out.get('state', '-')}, {len(parts)} parts", "open")
    table.add_row("frames in no file part (disk-full window)", f"{aired - in_files} ({window}; "
                  f"{aired} aired, {in_files} decoded)", "the window only")
    # Warm-up ends at 5 minutes (half a shorter run): the latency windows (4096 frames each, 2.7 min) fill by then;
    # a 12-minute run sampled every 30 s read 136, 165, 172, 172, 173 MB at 0, 3, 6, 9, 12 min.
    warm_s = min(WARM_UP_S, minutes * 30)
    warm = next((sample for sample in soak.samples if sample.at_s >= warm_s), soak.samples[-1] if soak.samples
                else None)
    last = soak.samples[-1] if soak.samples else None
    if warm and last:
        growth = 100 * (last.rss_mb / warm.rss_mb - 1)
        table.add_row(f"RSS after warm-up ({warm.at_s / 60:.0f} min) -> end",
                      f"{warm.rss_mb:.0f} -> {last.rss_mb:.0f} MB ({growth:+.1f} %)",
                      "< +5 %")
        quarters = [soak.samples[round(q * (len(soak.samples) - 1))] for q in (0, 0.25, 0.5, 0.75, 1)]
        table.add_row("RSS at 0, 1/4, 1/2, 3/4 and the end", ", ".join(f"{s.rss_mb:.0f}" for s in quarters) + " MB",
                      "a plateau, not a slope")
        table.add_row("threads after warm-up -> end", f"{warm.threads} -> {last.threads}", "flat")
        table.add_row("open files after warm-up -> end", f"{warm.fds} -> {last.fds}", "flat")
    gap, why = drift
    table.add_row("A/V gap at the reader at the end", f"{gap:.0f} ms" if gap is not None else f"no stream ({why})",
                  f"within one frame ({1000 / fps:.0f} ms)")
    obs = next((o for o in final["outputs"] if o["name"] == "obs"), None)
    if obs is not None:
        metrics = obs.get("metrics", {})
        table.add_row("obs output", f"{metrics.get('connects', 0)} connects, {metrics.get('connection_losses', 0)} "
                      f"losses, reconnect {metrics.get('reconnect_s', [])} s", "reconnects after each restart")
    table.add_row("server exit code", str(code), "0")
    console.print(table)


if __name__ == "__main__":
    sys.exit(main())
