#!/usr/bin/env python3
"""Benchmark what a viewer sees: latency to the mouth in a real headless Chromium over WebRTC, beside the same
measures at an RTMP reader, in the same run, on the same session.

One studio session (640x360 at 25 fps, the bundled piper voice, the viseme engine without blinks, the scheduler's
latency budget ``--budget-ms``) is watched by the operator console in Debian's Chromium (WHEP) and pushed to a
real nginx-rtmp server, which a PyAV reader plays. Both viewers compare every frame's mouth region with the idle
frame: the browser in ``requestVideoFrameCallback`` (the frame's presentation time), the reader when it decodes.
Trials, interleaved, on an idle session:

- text: ``POST /say`` of a short sentence -> the first frame whose mouth moves;
- pushed audio: the first 20 ms chunk of speech-like audio sent over the audio WebSocket (paced in real time)
  -> the first frame whose mouth moves;
- interrupt: ``POST /interrupt`` while speaking -> the first of three frames in a row with the mouth still.

Goals (issue 12): pushed audio p50 <= 250 ms and text p50 <= 500 ms in the browser.

    python scripts/bench_browser.py [--trials 20] [--budget-ms 120] [--kinds text,audio,interrupt] [--json F]

``--short`` (CI): 2 trials of each kind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anchorcast.media import StreamFormat
from anchorcast_plugins.engines.viseme.engine import create_engine
from tests.browser import browser_page
from tests.servers import NginxRtmp
from tests.studio_server import TOKEN, StudioServer, syllables

WIDTH, HEIGHT, RATE = 640, 360, 16000
AUTH = {"Authorization": f"Bearer {TOKEN}"}
SENTENCE = "Hello, and good evening."
LONG = "Good evening, here is the news from the studio, with the markets, the weather and the sport tonight."
TIMEOUT_S = 6.0
GOALS_MS = {"text": 500.0, "audio": 250.0}

PROFILE = """
[stream]
width = {width}
height = {height}
fps = 25
sample_rate = {rate}

[scheduler]
latency_budget_ms = {budget}
overrun = "repeat"

[source]
use = "script"
text = "unused by sessions"

[voice]
use = "piper"

[engine]
use = "viseme"
idle_motion = "off"

[outputs.stream]
use = "rtmp"
url = "{rtmp}"
preset = "ultrafast"
"""

# Runs in the console page: every frame the console's <video> presents, the mean absolute difference of its mouth
# region from the reference (idle) frame, with the frame's presentation time on the wall clock (ms).
WATCH_MOUTH = """([x0, y0, x1, y1]) => {
  const video = document.getElementById("video");
  const canvas = document.createElement("canvas");
  canvas.width = x1 - x0; canvas.height = y1 - y0;
  const context = canvas.getContext("2d", { willReadFrequently: true });
  const bench = window.bench = { frames: [], reference: null, capture: false };
  const seen = (now, meta) => {
    context.drawImage(video, x0, y0, x1 - x0, y1 - y0, 0, 0, x1 - x0, y1 - y0);
    const pixels = context.getImageData(0, 0, x1 - x0, y1 - y0).data;
    if (bench.capture || !bench.reference) { bench.reference = pixels.slice(); bench.capture = false; }
    let sum = 0;
    for (let i = 0; i < pixels.length; i += 4) {
      sum += Math.abs(pixels[i] - bench.reference[i]) + Math.abs(pixels[i + 1] - bench.reference[i + 1])
           + Math.abs(pixels[i + 2] - bench.reference[i + 2]);
    }
    bench.frames.push([performance.timeOrigin + meta.presentationTime, sum / (pixels.length / 4 * 3)]);
    if (bench.frames.length > 3000) bench.frames.splice(0, 1000);
    video.requestVideoFrameCallback(seen);
  };
  video.requestVideoFrameCallback(seen);
}"""


class MouthReader:
    """Plays the RTMP stream with PyAV and keeps (wall time in ms at decode, mouth difference from the
    reference) for every frame."""

    def __init__(self, url: str, region: tuple[int, int, int, int]) -> None:
        self.url = url
        self.region = region
        self.frames: list[tuple[float, float]] = []
        self.capture = True
        self.error = ""
        self._reference: np.ndarray | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="mouth-reader", daemon=True)

    def start(self) -> MouthReader:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        import av

        x0, y0, x1, y1 = self.region
        try:
            with av.open(self.url, timeout=(60, 5), options={"analyzeduration": "150000",
                                                            "fflags": "nobuffer"}) as container:
                for frame in container.decode(video=0):
                    mouth = frame.to_ndarray(format="rgb24")[y0:y1, x0:x1].astype(np.int16)
                    if self.capture or self._reference is None:
                        self._reference, self.capture = mouth, False
                    self.frames.append((1000 * time.time(), float(np.abs(mouth - self._reference).mean())))
                    if self._stop.is_set():
                        return
        except (OSError, av.FFmpegError) as error:
            self.error = f"{type(error).__name__}: {error}"


def first_after(frames: list[tuple[float, float]], since_ms: float, moving: bool, threshold: float,
                run: int = 1) -> float | None:
    """When the first frame after ``since_ms`` starts a run of ``run`` frames that move (or are still)."""
    streak: list[float] = []
    for when, difference in frames:
        if when < since_ms:
            continue
        if (difference > threshold) == moving:
            streak.append(when)
            if len(streak) >= run:
                return streak[0]
        else:
            streak = []
    return None


class Bench:
    def __init__(self, server: StudioServer, page: Any, reader: MouthReader, session: str) -> None:
        self.server, self.page, self.reader, self.session = server, page, reader, session
        self.api = httpx.Client(base_url=server.url, headers=AUTH, timeout=30)
        self.threshold = 3.0

    def browser_frames(self) -> list[tuple[float, float]]:
        return [tuple(f) for f in self.page.evaluate("window.bench.frames")]

    def calibrate(self) -> dict[str, float]:
        """The idle frame as reference in both viewers (again while either sees more than codec noise: its
        first frames may predate a keyframe), and a threshold well above that noise."""
        for _ in range(10):
            deadline = time.monotonic() + 30
            while not (self.reader.frames and self.browser_frames()) and time.monotonic() < deadline:
                time.sleep(0.1)
            self.page.evaluate("window.bench.capture = true")
            self.reader.capture = True
            time.sleep(1.5)
            since = 1000 * time.time() - 1000
            browser = max([d for t, d in self.browser_frames() if t > since], default=99.0)
            reader = max([d for t, d in self.reader.frames if t > since], default=99.0)
            if max(browser, reader) < 3.0:
                break
        else:
            raise RuntimeError(f"the idle mouth does not keep still (noise {browser:.1f} in the browser, "
                               f"{reader:.1f} at the RTMP reader{': ' + self.reader.error if self.reader.error else ''})")
        self.threshold = max(3.0, 3 * max(browser, reader))
        return {"noise": max(browser, reader), "threshold": self.threshold}

    def wait_idle(self) -> None:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            state = self.api.get(f"/v1/sessions/{self.session}").json()["state"]
            now = 1000 * time.time()
            recent = [d for t, d in self.browser_frames() + self.reader.frames if t > now - 500]
            if state == "idle" and recent and max(recent) <= self.threshold:
                return
            time.sleep(0.1)
        raise TimeoutError("the session did not come back to idle")

    def measure(self, since_ms: float, moving: bool) -> tuple[float | None, float | None]:
        run = 1 if moving else 3
        deadline = time.monotonic() + TIMEOUT_S
        browser = reader = None
        while time.monotonic() < deadline and (browser is None or reader is None):
            time.sleep(0.05)
            if browser is None:
                found = first_after(self.browser_frames(), since_ms, moving, self.threshold, run)
                browser = None if found is None else found - since_ms
            if reader is None:
                found = first_after(list(self.reader.frames), since_ms, moving, self.threshold, run)
                reader = None if found is None else found - since_ms
        return browser, reader

    def text(self) -> tuple[float | None, float | None]:
        sent = 1000 * time.time()
        self.api.post(f"/v1/sessions/{self.session}/say", json={"text": SENTENCE}).raise_for_status()
        return self.measure(sent, moving=True)

    def audio(self) -> tuple[float | None, float | None]:
        from websockets.sync.client import connect

        url = self.server.url.replace("http", "ws") + f"/v1/sessions/{self.session}/audio?rate={RATE}"
        pcm = (syllables(1.5, RATE) * 32767).astype(np.int16).tobytes()
        chunk = RATE // 50 * 2  # 20 ms of s16le
        started: list[float] = []

        def push() -> None:
            with connect(url, additional_headers=AUTH) as socket:
                socket.recv(10)  # the utterance id: the stream is open
                start = time.monotonic()
                started.append(1000 * time.time())
                for k, offset in enumerate(range(0, len(pcm), chunk)):
                    socket.send(pcm[offset : offset + chunk])
                    time.sleep(max(0.0, start + 0.02 * (k + 1) - time.monotonic()))
                socket.send(json.dumps({"type": "end"}))
                with contextlib.suppress(Exception):  # the server closes once the stream is queued
                    socket.recv(10)

        pusher = threading.Thread(target=push, daemon=True)
        pusher.start()
        while not started and pusher.is_alive():
            time.sleep(0.001)
        result = self.measure(started[0], moving=True) if started else (None, None)
        pusher.join(10)
        return result

    def interrupt(self) -> tuple[float | None, float | None]:
        self.api.post(f"/v1/sessions/{self.session}/say", json={"text": LONG}).raise_for_status()
        spoke = 1000 * time.time()
        self.measure(spoke, moving=True)
        time.sleep(0.8)  # well into the sentence, both viewers showing speech
        sent = 1000 * time.time()
        self.api.post(f"/v1/sessions/{self.session}/interrupt").raise_for_status()
        return self.measure(sent, moving=False)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=20, help="trials of each kind (default 20)")
    parser.add_argument("--short", action="store_true", help="CI: 2 trials of each kind")
    parser.add_argument("--budget-ms", type=int, default=120, help="the scheduler's latency budget (default 120)")
    parser.add_argument("--kinds", default="text,audio,interrupt", help="which trials (default: all three)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.short:
        args.trials = 2
    console = Console(width=max(Console().width, 150))

    engine = create_engine({"idle_motion": "off"})
    engine.open(StreamFormat(WIDTH, HEIGHT, Fraction(25), RATE))
    region = engine.mouth_region
    assert region is not None
    kinds = [kind for kind in ("text", "audio", "interrupt") if kind in args.kinds.split(",")]
    results: dict[str, dict[str, list[float]]] = {kind: {"browser": [], "rtmp": []} for kind in kinds}
    missed: dict[str, int] = dict.fromkeys(results, 0)
    with tempfile.TemporaryDirectory(prefix="anchorcast-bench-browser-") as folder:
        work = Path(folder)
        with NginxRtmp(work / "nginx") as nginx:
            profile = PROFILE.format(width=WIDTH, height=HEIGHT, rate=RATE, budget=args.budget_ms,
                                     rtmp=nginx.url("bench"))
            reader = MouthReader(nginx.url("bench"), region).start()
            with StudioServer(work / "studio", "--no-session", profiles={"bench": profile}) as server:
                with server.client() as client:
                    client.create_session("bench", session_id="bench")
                with browser_page(1280, 800) as page:
                    page.goto(f"{server.url}/console?token={TOKEN}")
                    page.wait_for_function("window.anchorcast && window.anchorcast.viewer", timeout=30000)
                    page.wait_for_function("(async () => { const s = await window.anchorcast.viewer.stats();"
                                           " return s.framesDecoded > 25; })()", timeout=30000)
                    page.evaluate(WATCH_MOUTH, list(region))
                    bench = Bench(server, page, reader, "bench")
                    calibration = bench.calibrate()
                    console.print(f"mouth region {region}; idle noise {calibration['noise']:.2f}, "
                                  f"threshold {calibration['threshold']:.2f}", highlight=False)
                    for trial in range(args.trials):
                        for kind in results:
                            bench.wait_idle()
                            browser, rtmp = getattr(bench, kind)()
                            for viewer, value in (("browser", browser), ("rtmp", rtmp)):
                                if value is None:
                                    missed[kind] += 1
                                else:
                                    results[kind][viewer].append(value)
                        console.print(f"trial {trial + 1}/{args.trials}: " + ", ".join(
                            f"{k} {v['browser'][-1] if v['browser'] else float('nan'):.0f}/"
                            f"{v['rtmp'][-1] if v['rtmp'] else float('nan'):.0f} ms" for k, v in results.items()),
                            highlight=False)
                    webrtc = bench.api.get("/v1/sessions/bench").json()["webrtc"]
                    console.print(f"webrtc: {webrtc['encoded_frames']} frames encoded, {webrtc['dropped_frames']} "
                                  f"dropped before encoding, {webrtc['audio_filled_s']} s of audio gaps filled",
                                  highlight=False)
            reader.stop()

    table = Table(title=f"Latency to the mouth, {WIDTH}x{HEIGHT} at 25 fps, latency budget {args.budget_ms} ms "
                  f"({args.trials} trials each; ms)")
    for column in ("measure", "browser p50", "browser p95", "RTMP reader p50", "RTMP reader p95",
                   "browser - RTMP p50", "goal (browser p50)", "missed"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    labels = {"text": "POST say -> moving mouth", "audio": "pushed audio -> moving mouth",
              "interrupt": "interrupt -> still mouth"}
    figures: dict[str, Any] = {"budget_ms": args.budget_ms, "trials": args.trials}
    for kind, label in labels.items():
        if kind not in results:
            continue
        b50, b95 = percentile(results[kind]["browser"], 50), percentile(results[kind]["browser"], 95)
        r50, r95 = percentile(results[kind]["rtmp"], 50), percentile(results[kind]["rtmp"], 95)
        goal = GOALS_MS.get(kind)
        cells = [f"{v:.0f}" if v is not None else "-" for v in (b50, b95, r50, r95)]
        delta = f"{b50 - r50:+.0f}" if b50 is not None and r50 is not None else "-"
        verdict = "-" if goal is None or b50 is None else f"<= {goal:.0f} " + ("met" if b50 <= goal else "MISSED")
        table.add_row(label, *cells, delta, verdict, str(missed[kind]))
        figures[kind] = {"browser_p50_ms": b50, "browser_p95_ms": b95, "rtmp_p50_ms": r50, "rtmp_p95_ms": r95,
                         "missed": missed[kind], "browser_ms": results[kind]["browser"],
                         "rtmp_ms": results[kind]["rtmp"]}
    console.print(table)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
