#!/usr/bin/env python3
"""Live latency benchmark: a microphone through a real PulseAudio loopback, the default engine, RTMP out.

Starts a private PulseAudio server (a null sink whose monitor is the microphone) and a private nginx-rtmp server,
then runs the host live: ``mic -> viseme -> rtmp + probe``. A player writes speech-like bursts into the sink;
the probe sees each frame as it leaves the outputs. Printed (rich tables):

- mic-to-frame latency: burst written into the loopback -> first frame whose mouth moves, p50/p95;
- interrupt-to-idle: ``host.interrupt()`` during a burst -> first idle frame out (ms and frames);
- A/V offset at the RTMP reader: a player reads the stream back; frames whose audio is loud carry a white
  tally square (drawn by a thin wrapper around the engine). In the received stream each sound onset must fall
  inside the frame that carries its tally: 0 to 40 ms after that frame's start at 25 fps when picture and sound
  are in sync through the whole path (clock, encoder, FLV, server, player); a slip of a frame either way shows.

    python scripts/bench_latency.py [--seconds 120] [--budget-ms 100] [--size 1280x720]

Needs the packages scripts/install-test-deps.sh installs (pulseaudio, nginx + RTMP module, libportaudio2).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.pulse import PulseAudio  # noqa: E402
from tests.servers import NginxRtmp, RtmpReader, audio_onsets, onsets  # noqa: E402

RATE = 16000
BURST_S = 0.6
GAP_S = 1.0
TALLY = 160  # pixels: the square drawn on frames whose audio is loud
TALLY_RMS = 0.02


def speech_like(seconds: float, rate: int = RATE) -> np.ndarray:
    """Voiced harmonics at 140 Hz, amplitude-modulated at 4 Hz like syllables, with soft edges."""
    t = np.arange(int(seconds * rate)) / rate
    voice = sum(np.sin(2 * np.pi * 140 * k * t) / k for k in range(1, 8))
    syllables = 0.55 + 0.45 * np.sin(2 * np.pi * 4 * t)
    edge = np.minimum(1, np.minimum(t, t[-1] - t) / 0.01)
    return (0.25 * voice / 2.6 * syllables * edge).astype(np.float32)


class Probe:
    """An output that notes when each frame leaves and whether it differs from the idle frame."""

    live = True

    def __init__(self) -> None:
        self.idle: np.ndarray | None = None
        self.frames: list[tuple[float, int, bool]] = []  # (monotonic time, index, mouth moving)
        self.lock = threading.Lock()

    def open(self, fmt: Any) -> None:
        pass

    def write(self, frame: Any, audio: Any) -> None:
        image = frame.image[::4, ::4]
        if self.idle is None:
            self.idle = image.copy()
        moving = not np.array_equal(image[TALLY // 4 :], self.idle[TALLY // 4 :])
        with self.lock:
            self.frames.append((time.monotonic(), frame.index, moving))

    def close(self) -> None:
        pass

    def first_after(self, t: float, moving: bool) -> tuple[float, int] | None:
        with self.lock:
            for when, index, state in self.frames:
                if when >= t and state == moving:
                    return when, index
        return None


class Tally:
    """Wraps the engine: frames whose own audio is loud get a white square (for the A/V offset at the reader)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lookbehind, self.lookahead, self.max_batch = inner.lookbehind, inner.lookahead, inner.max_batch

    def open(self, fmt: Any) -> None:
        self.inner.open(fmt)

    def render(self, jobs: Any) -> list[np.ndarray]:
        images = self.inner.render(jobs)
        for job, image in zip(jobs, images, strict=True):
            if float(np.sqrt(np.mean(np.square(job.audio)))) > TALLY_RMS:
                image[:TALLY, :TALLY] = 255
        return images

    def idle(self, index: int) -> np.ndarray:
        return self.inner.idle(index)

    def close(self) -> None:
        self.inner.close()


def percentiles(values: list[float]) -> str:
    if not values:
        return "-"
    p50, p95 = np.percentile(values, [50, 95])
    return f"{p50:.0f} / {p95:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--budget-ms", type=float, default=100.0)
    parser.add_argument("--size", default="1280x720")
    parser.add_argument("--interrupt-every", type=int, default=5, help="interrupt every Nth burst")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))

    from rich.console import Console
    from rich.table import Table

    console = Console()
    with tempfile.TemporaryDirectory() as folder, PulseAudio(Path(folder) / "pulse") as pulse, \
            NginxRtmp(Path(folder) / "nginx") as nginx:
        os.environ.update(pulse.client_env())  # before sounddevice is imported: PortAudio reads it once
        from dataclasses import replace

        from anchorcast import hookimpl
        from anchorcast.host import Host

        probe = Probe()

        class ProbePlugin:
            @hookimpl
            def anchorcast_register_outputs(self, host: Any, register: Any) -> None:
                register("probe", lambda h, s: probe)

        host = Host.create(extra_plugins=(ProbePlugin(),))
        viseme = host.plugins.component("engine", "viseme")
        assert viseme is not None
        host.plugins.components[("engine", "viseme")] = replace(
            viseme, factory=lambda h, s: Tally(viseme.factory(h, s))
        )
        raw = {
            "stream": {"width": width, "height": height, "fps": 25, "sample_rate": RATE},
            "scheduler": {"latency_budget_ms": args.budget_ms, "overrun": "repeat", "pace": "realtime",
                          "tail_ms": 0},
            "source": {"use": "mic", "device": "pulse"},
            "engine": {"use": "viseme"},
            "outputs": {
                "rtmp": {"use": "rtmp", "url": nginx.url("bench"), "preset": "ultrafast", "retry": False},
                "probe": {"use": "probe"},
            },
        }
        profile = host.load_profile(None, raw=raw)
        reader = RtmpReader(nginx.url("bench"), decode=True, idle_s=5.0).start()
        result: dict[str, Any] = {}
        runner = threading.Thread(target=lambda: result.update(report=host.run(profile)), daemon=True)
        runner.start()

        player = pulse.player(latency_ms=20)
        while probe.idle is None:
            if not runner.is_alive():
                console.print(f"[red]the host stopped before its first frame[/] {host.last_report}")
                return 1
            time.sleep(0.05)
        time.sleep(1.0)
        burst, gap = speech_like(BURST_S), np.zeros(int(GAP_S * RATE), np.float32)
        latencies: list[float] = []
        interrupts: list[tuple[float, int]] = []
        started = time.monotonic()
        number = 0
        console.print(f"playing bursts for {args.seconds:.0f} s ...")
        while time.monotonic() - started < args.seconds:
            number += 1
            onset = player.write(burst)  # the burst alone fits the pipe: the write returns at once
            interrupted_at = None
            if args.interrupt_every and number % args.interrupt_every == 0:
                time.sleep(max(0.0, onset + 0.35 - time.monotonic()))
                interrupted_at = time.monotonic()
                aired_before = probe.frames[-1][1] if probe.frames else 0
                host.interrupt("bench")
            time.sleep(max(0.0, onset + BURST_S - time.monotonic()))
            player.write(gap)
            time.sleep(max(0.0, onset + BURST_S + GAP_S - time.monotonic()))
            if interrupted_at is not None:
                idle = probe.first_after(interrupted_at, moving=False)
                if idle is not None:
                    interrupts.append(((idle[0] - interrupted_at) * 1000, idle[1] - aired_before - 1))
                continue
            moving = probe.first_after(onset, moving=True)
            if moving is not None and moving[0] - onset < BURST_S + GAP_S:
                latencies.append((moving[0] - onset) * 1000)
        host.stop()
        runner.join(30)
        player.finish()
        got = reader.join(60)

    report = result.get("report", host.last_report)
    flashes = onsets([t for t, _ in got.frames], [luma for _, luma in got.frames],
                     float(np.median([luma for _, luma in got.frames])) + 4.0, 0.5)
    start, samples = got.audio()
    beeps = audio_onsets(start, samples, got.audio_rate or 44100, 0.05, 0.5) if len(samples) else []
    offsets = [min(beeps, key=lambda b: abs(b - f)) - f for f in flashes if beeps]
    offsets = [o * 1000 for o in offsets if abs(o) < 0.5]

    table = Table(title=f"live latency: mic (PulseAudio loopback) -> viseme -> RTMP, {width}x{height} @ 25 fps, "
                        f"budget {args.budget_ms:.0f} ms, {args.seconds:.0f} s", header_style="bold")
    for column in ("measure", "samples", "p50 / p95", "max", "target"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    table.add_row("mic -> moving frame (ms)", str(len(latencies)), percentiles(latencies),
                  f"{max(latencies):.0f}" if latencies else "-", "p95 <= 150")
    interrupt_ms = [ms for ms, _ in interrupts]
    table.add_row("interrupt -> idle frame out (ms)", str(len(interrupts)), percentiles(interrupt_ms),
                  f"{max(interrupt_ms):.0f}" if interrupt_ms else "-", "<= 40 (one frame)")
    table.add_row("interrupt -> idle (frames after the one on air)", str(len(interrupts)),
                  percentiles([float(f) for _, f in interrupts]),
                  str(max(f for _, f in interrupts)) if interrupts else "-", "<= 1")
    table.add_row("A/V at the RTMP reader: sound onset - start of its tally frame (ms)", str(len(offsets)),
                  percentiles([abs(o) for o in offsets]),
                  f"{max(abs(o) for o in offsets):.1f}" if offsets else "-", "0 to 40 (within its frame)")
    stages = report.get("stages", {})
    air = stages.get("audio_to_air", {})
    table.add_row("audio in -> frame out, host (ms)", str(air.get("count", 0)),
                  f"{air.get('p50_ms', 0):.0f} / {air.get('p95_ms', 0):.0f}", f"{air.get('max_ms', 0):.0f}", "-")
    console.print(table)
    rtmp = report.get("outputs", {}).get("rtmp", {})
    console.print(
        f"frames {report.get('frames')} at {report.get('frames_per_second')} fps; overruns {report.get('overruns')}, "
        f"dropped {report.get('dropped_frames')}, underruns {report.get('silence_underruns')}; "
        f"rtmp sent {rtmp.get('frames_sent')} dropped {rtmp.get('frames_dropped')}; reader got "
        f"{len(got.frames)} frames, {len(flashes)} tally onsets, {len(beeps)} sound onsets"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
