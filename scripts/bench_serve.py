#!/usr/bin/env python3
"""Benchmark the studio server: N sessions speaking at once on one engine, against N separate `anchorcast run`
processes doing the same in the same run, and print a table.

For each engine (viseme; wav2lip with random weights on openvino-int8) and each N: N sessions of one profile
(640x360, eSpeak voice, an MP4 file output) are created on a real server (uvicorn, its own process); each is told
the same text at once through the API. Measured while they speak: per-session frames/s, overruns, say -> first
frame latency and the engine batch latency p50/p95 (from the sessions' own reports), the server's CPU (percent
of one core) and how many sessions' frames shared an engine call. Then N `anchorcast run` processes read the
same text with the same profile, paced in real time, at the same moment: their frames/s, overruns and CPU
(which includes each process's start-up: loading the plugins, the voice and the engine, as separate processes
pay). The last column is the server's CPU over the separate processes' CPU. For wav2lip, "drawn fps (all)" (frames
the engine drew for every session together, repeats left out) is set against what the same engine draws alone in
one process with full batches back to back, measured first in the same run.

    python scripts/bench_serve.py [--sessions 1,2,4,8] [--engines viseme,wav2lip] [--seconds 12] [--short]

``--short`` (CI): 1 and 2 sessions of the viseme engine, 4 s of speech.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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

SENTENCE = "Good evening, here is the news from the studio, with the markets, the weather and the sport. "
AUTH = {"Authorization": f"Bearer {TOKEN}"}

PROFILE = """
[stream]
width = {width}
height = {height}
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
{engine}

[outputs.file]
use = "file"
path = "bench.mp4"
preset = "veryfast"
"""

ENGINES = {
    "viseme": 'use = "viseme"',
    "wav2lip": 'use = "wav2lip"\nweights = "bench-random"\nbackend = "openvino-int8"',
}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def random_weights(home: Path) -> None:
    """Random generator weights stored as "bench-random" (speed does not depend on the values)."""
    import torch
    from safetensors.torch import save_file

    from anchorcast_plugins.engines.wav2lip.models import Wav2Lip
    from anchorcast_plugins.engines.wav2lip.weights_store import import_weights

    torch.manual_seed(0)
    home.mkdir(parents=True, exist_ok=True)
    checkpoint = home / "random.safetensors"
    save_file({k: v.contiguous() for k, v in Wav2Lip().state_dict().items()}, str(checkpoint))
    os.environ["ANCHORCAST_HOME"] = str(home)
    import_weights(checkpoint, "bench-random")


def engine_throughput(profile_path: Path, seconds: float = 3.0, passes: int = 3) -> float:
    """Frames/s of the profile's engine drawing full batches of speech back to back in this process, warm (the
    best of ``passes`` timed passes after as long a warm-up): what one process can draw when nobody waits, the
    reference for the sessions' drawn frames together."""
    import numpy as np

    from anchorcast.components import FrameJob
    from anchorcast.host import Host

    host = Host.for_profile(profile_path)
    profile = host.load_profile(profile_path)
    fmt = profile.stream
    engine = host.build(profile.engine)
    engine.open(fmt)
    rate, per = fmt.sample_rate, round(fmt.sample_rate / fmt.fps)
    behind, ahead = round(engine.lookbehind * rate) + 1, round(engine.lookahead * rate) + 1
    rng = np.random.default_rng(0)
    voiced = (0.2 * rng.standard_normal(behind + per + ahead)).astype(np.float32)

    def batch(first: int) -> list[FrameJob]:
        return [FrameJob(i, i / float(fmt.fps), voiced, behind, per, 1.0) for i in range(first, first + engine.max_batch)]

    def timed_pass() -> float:
        frames, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            engine.render(batch(frames))
            frames += engine.max_batch
        return frames / (time.perf_counter() - started)

    timed_pass()  # warm-up
    best = max(timed_pass() for _ in range(passes))
    engine.close()
    return best


def watch_until_ended(server: StudioServer, session: str, utterance_box: dict[str, str], started: dict[str, float],
                      ended: threading.Event, ready: threading.Event) -> None:
    url = server.url.replace("http", "ws") + f"/v1/sessions/{session}/events"
    with connect(url, additional_headers=AUTH) as socket:
        ready.set()
        while True:
            event = json.loads(socket.recv(120))
            if event["type"] == "utterance_started" and event["utterance"] == utterance_box.get(session):
                started[session] = event["time"]
            if event["type"] == "utterance_ended" and event["utterance"] == utterance_box.get(session):
                ended.set()
                return


def warm_up(server: StudioServer, api: httpx.Client, sessions: list[str]) -> None:
    """Every session says a sentence at once, and the measurement starts after."""
    said, started = {}, {}
    done = {s: threading.Event() for s in sessions}
    ready = {s: threading.Event() for s in sessions}
    for s in sessions:
        threading.Thread(target=watch_until_ended, args=(server, s, said, started, done[s], ready[s]),
                         daemon=True).start()
        ready[s].wait(10)
    for s in sessions:
        said[s] = api.post(f"/v1/sessions/{s}/say", json={"text": SENTENCE}).json()["utterance"]
    for s in sessions:
        done[s].wait(120)
    time.sleep(1.0)


def measure_server(server: StudioServer, api: httpx.Client, profile: str, count: int, text: str) -> dict[str, Any]:
    sessions = [api.post("/v1/sessions", json={"profile": profile}).json()["id"] for _ in range(count)]
    warm_up(server, api, sessions)  # the shared engine and the encoders warm, as the engine alone is
    said: dict[str, str] = {}
    started: dict[str, float] = {}
    done = {s: threading.Event() for s in sessions}
    ready = {s: threading.Event() for s in sessions}
    for s in sessions:
        threading.Thread(target=watch_until_ended, args=(server, s, said, started, done[s], ready[s]),
                         daemon=True).start()
        ready[s].wait(10)
    cpu0, wall0 = cpu_seconds(server.pid), time.monotonic()
    before = {s: api.get(f"/v1/sessions/{s}").json() for s in sessions}
    queued = {}
    for s in sessions:
        queued[s] = time.time()
        said[s] = api.post(f"/v1/sessions/{s}/say", json={"text": text}).json()["utterance"]
    for s in sessions:
        done[s].wait(300)
    after = {s: api.get(f"/v1/sessions/{s}").json() for s in sessions}
    wall = time.monotonic() - wall0
    cpu = cpu_seconds(server.pid) - cpu0
    engines = api.get("/v1/engines").json()["engines"]
    for s in sessions:
        api.delete(f"/v1/sessions/{s}")
    fps = [(after[s]["metrics"]["frames"] - before[s]["metrics"]["frames"]) / wall for s in sessions]
    overruns = [after[s]["metrics"]["overruns"] - before[s]["metrics"]["overruns"] for s in sessions]
    drawn = sum(fps) - sum(overruns) / wall  # frames on air that the engine drew (not repeated), all sessions
    batch = [after[s]["report"]["stages"].get("engine_batch", {}) for s in sessions]
    latency = [1000 * (started[s] - queued[s]) for s in sessions if s in started]
    return {
        "fps": statistics.mean(fps), "overruns": sum(overruns) / count, "drawn": drawn,
        "say_ms": statistics.median(latency) if latency else float("nan"),
        "batch_p50": statistics.mean(b.get("p50_ms", 0.0) for b in batch),
        "batch_p95": statistics.mean(b.get("p95_ms", 0.0) for b in batch),
        "cpu": 100 * cpu / wall, "cpu_s": cpu,
        "sessions_per_call": max((e["sessions_per_call"] for e in engines), default=0.0),
    }


def say_latency(server: StudioServer, api: httpx.Client, profile: str, trials: int) -> list[float]:
    """Milliseconds from POST say to the first frame of its speech on air (the utterance_started event), one
    short sentence at a time on an idle session."""
    session = api.post("/v1/sessions", json={"profile": profile}).json()["id"]
    url = server.url.replace("http", "ws") + f"/v1/sessions/{session}/events"
    latencies = []
    time.sleep(1.0)
    with connect(url, additional_headers=AUTH) as socket:
        for _ in range(trials):
            sent = time.time()
            utterance = api.post(f"/v1/sessions/{session}/say", json={"text": "Good evening."}).json()["utterance"]
            while True:
                event = json.loads(socket.recv(60))
                if event.get("utterance") != utterance:
                    continue
                if event["type"] == "utterance_started":
                    latencies.append(1000 * (event["time"] - sent))
                if event["type"] == "utterance_ended":
                    break
            time.sleep(0.3)
    api.delete(f"/v1/sessions/{session}")
    return latencies


def measure_runs(folder: Path, profile: Path, count: int, text: str) -> dict[str, Any]:
    env = {**os.environ, "COLUMNS": "160"}
    usage0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall0 = time.monotonic()
    processes = [
        subprocess.Popen([sys.executable, "-m", "anchorcast", "run", str(profile), "--text", text,
                          "--set", "scheduler.pace=realtime", "--out", str(folder / f"run{k}.mp4"),
                          "--metrics", str(folder / f"run{k}.json")],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, env=env)
        for k in range(count)
    ]
    for process in processes:
        process.wait(600)
    wall = time.monotonic() - wall0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (usage.ru_utime - usage0.ru_utime) + (usage.ru_stime - usage0.ru_stime)
    reports = [json.loads((folder / f"run{k}.json").read_text()) for k in range(count)
               if (folder / f"run{k}.json").exists()]
    return {
        "fps": statistics.mean(r["frames_per_second"] for r in reports) if reports else 0.0,
        "overruns": statistics.mean(r["overruns"] for r in reports) if reports else float("nan"),
        "cpu": 100 * cpu / wall, "cpu_s": cpu, "failed": count - len(reports),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", default="1,2,4,8")
    parser.add_argument("--engines", default="viseme,wav2lip")
    parser.add_argument("--seconds", type=float, default=12.0, help="about how long each session speaks")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--trials", type=int, default=20, help="say -> first frame trials per engine")
    parser.add_argument("--short", action="store_true", help="CI: 1 and 2 viseme sessions, 4 s of speech, 5 trials")
    args = parser.parse_args(argv)
    if args.short:
        args.sessions, args.engines, args.seconds, args.trials = "1,2", "viseme", 4.0, 5
    counts = [int(n) for n in args.sessions.split(",")]
    text = SENTENCE * max(1, round(args.seconds / 6))
    console = Console(width=200)
    table = Table(title=f"anchorcast serve: N sessions speaking at once, {args.width}x{args.height} @ 25 fps, "
                  f"{os.cpu_count()} CPUs", header_style="bold")
    for column in ("engine", "N", "fps/session", "overruns/session", "drawn fps (all)", "/ engine alone",
                   "say->air ms", "batch p50/p95 ms",
                   "sessions/call", "server CPU %", "N runs: fps", "N runs: overruns", "N runs: CPU %",
                   "CPU ratio"):
        table.add_column(column, justify="right")
    latency_table = Table(title="say -> first frame of the speech on air, through the API (one idle session)",
                          header_style="bold")
    for column in ("engine", "trials", "p50 ms", "p95 ms", "latency budget ms"):
        latency_table.add_column(column, justify="right")
    with tempfile.TemporaryDirectory(prefix="anchorcast-bench-serve-") as scratch:
        folder = Path(scratch)
        if "wav2lip" in args.engines:
            random_weights(folder / "home")
        os.environ.setdefault("ANCHORCAST_HOME", str(folder / "home"))
        for engine in args.engines.split(","):
            profiles = {engine: PROFILE.format(width=args.width, height=args.height, engine=ENGINES[engine])}
            reference_profile = folder / f"{engine}-reference.toml"
            reference_profile.write_text(profiles[engine], encoding="utf-8")
            # the viseme engine reuses its cached mouth patches on a steady input: no meaningful reference
            alone = engine_throughput(reference_profile) if engine == "wav2lip" else None
            if alone:
                console.print(f"{engine}: {alone:.1f} frames/s drawing full batches in one process", highlight=False)
            server = StudioServer(folder / f"server-{engine}", "--no-session", "--max-sessions", str(max(counts)),
                                  profiles=profiles, env={"ANCHORCAST_HOME": os.environ["ANCHORCAST_HOME"]})
            with server, httpx.Client(base_url=server.url, headers=AUTH, timeout=300) as api:
                if engine == "wav2lip":  # the first load calibrates int8 and caches it: not part of the figures
                    api.delete(f"/v1/sessions/{api.post('/v1/sessions', json={'profile': engine}).json()['id']}")
                trials = say_latency(server, api, engine, args.trials)
                ordered = sorted(trials)
                latency_table.add_row(engine, str(len(trials)), f"{statistics.median(trials):.0f}",
                                      f"{ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]:.0f}",
                                      "400")
                for count in counts:
                    served = measure_server(server, api, engine, count, text)
                    runs = measure_runs(folder, server.profiles / f"{engine}.toml", count, text)
                    table.add_row(
                        engine, str(count), f"{served['fps']:.2f}", f"{served['overruns']:.1f}",
                        f"{served['drawn']:.1f}", f"{served['drawn'] / alone:.2f}" if alone else "-",
                        f"{served['say_ms']:.0f}", f"{served['batch_p50']:.1f} / {served['batch_p95']:.1f}",
                        f"{served['sessions_per_call']:.2f}", f"{served['cpu']:.0f}", f"{runs['fps']:.2f}",
                        f"{runs['overruns']:.1f}", f"{runs['cpu']:.0f}",
                        f"{served['cpu_s'] / runs['cpu_s']:.2f}" if runs["cpu_s"] else "-",
                    )
                    console.print(f"{engine} x{count}: done", highlight=False)
    console.print(table)
    console.print(latency_table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
