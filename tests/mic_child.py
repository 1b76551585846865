"""The child process of the ``mic`` source tests (tests/test_mic_source.py), and the parent's handle on it.

PortAudio enumerates devices (and ALSA's pulse plugin reads ``PULSE_SERVER``) when ``sounddevice`` is imported,
so everything that records runs in a child process started with the sound server's environment:
``python -c "from tests.mic_child import child_main; child_main()" MODE JSON``. It prints ``READY`` once audio
flows; the test then plays into the sink and reads the child's results from files.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from anchorcast import hookimpl
from anchorcast.errors import InputError
from anchorcast.media import AudioChunk, StreamFormat, VideoFrame

REPO = Path(__file__).resolve().parents[1]
RATE = 16000
CHUNK = 320
READY_TIMEOUT_S = 60.0
LOUD_RMS = 0.05
LIVE_BUDGET_MS = 200.0
"""The end-to-end stream's latency budget (no lead-in silence: with a live source it would add to the latency)."""

# --- the child process ------------------------------------------------------------------------------------


def child_main(argv: list[str] | None = None) -> None:
    """``MODE JSON``: ``capture`` records with the mic source, ``host`` runs a whole live stream, ``error`` opens
    the source and reports the InputError it raises."""
    mode, raw = (argv if argv is not None else sys.argv[1:])[:2]
    options = json.loads(raw)
    try:
        {"capture": _child_capture, "host": child_host, "error": _child_error}[mode](options)
    except InputError as error:
        print("INPUT-ERROR " + json.dumps({"message": str(error), "hint": error.hint}), flush=True)
        raise SystemExit(3) from None


def _child_error(options: dict[str, Any]) -> None:
    from anchorcast_plugins.sources.mic_source import MicSource

    source = MicSource(options.get("device"))
    source.open(StreamFormat(64, 48, Fraction(25), RATE))
    source.close()
    print("OPENED", flush=True)


def _child_capture(options: dict[str, Any]) -> None:
    """Records ``seconds`` after the first chunk; saves the samples, chunk starts/lengths and arrival times."""
    import sounddevice as sd

    from anchorcast_plugins.sources.mic_source import MicSource

    device = options.get("device")
    if device == "INDEX-OF-PULSE":
        device = next(d["index"] for d in sd.query_devices() if d["name"] == "pulse")
    source = MicSource(device, capture_rate=options.get("capture_rate", 0),
                       queue_seconds=options.get("queue_seconds", 2.0))
    source.open(StreamFormat(64, 48, Fraction(25), RATE))
    starts, lengths, arrivals, parts = [], [], [], []
    stop_at = pause_at = math.inf
    for chunk in source.items():
        now = time.monotonic()
        if not starts:
            stop_at = now + options["seconds"]
            pause_at = now + options.get("pause_at", math.inf)
            print("READY", flush=True)
        if now >= pause_at:  # a reader that falls behind: the callback keeps queueing meanwhile
            pause_at = math.inf
            time.sleep(options["pause_s"])
            if options.get("interrupt"):
                source.interrupt()
        starts.append(chunk.start)
        lengths.append(len(chunk.samples))
        arrivals.append(now)
        parts.append(chunk.samples)
        assert chunk.sample_rate == RATE
        if now >= stop_at:
            break
    source.close()
    out = Path(options["out"])
    np.savez(out / "capture.npz", samples=np.concatenate(parts), starts=np.array(starts),
             lengths=np.array(lengths), arrivals=np.array(arrivals))
    assert source.device_info is not None
    (out / "capture.json").write_text(json.dumps({
        "device": source.device_info.describe(), "device_index": source.device_info.index,
        "capture_rate": source.capture_rate, "stats": vars(source.stats),
    }))


class MouthProbe:
    """A live output that keeps, per frame: its index, how far the image is from the first (idle) frame, the
    RMS of the audio aired with it, and when it was written."""

    live = True

    def __init__(self) -> None:
        self.rows: list[tuple[int, float, float, float]] = []
        self.first_frame = threading.Event()
        self._idle: np.ndarray | None = None

    def open(self, fmt: StreamFormat) -> None:
        pass

    def write(self, frame: VideoFrame, audio: AudioChunk) -> None:
        image = frame.image[..., :3].astype(np.int16)
        if self._idle is None:
            self._idle = image
        change = float(np.abs(image - self._idle).mean())
        level = float(np.sqrt(np.mean(np.square(audio.samples)))) if len(audio.samples) else 0.0
        self.rows.append((frame.index, change, level, time.monotonic()))
        self.first_frame.set()

    def close(self) -> None:
        pass


class ProbePlugin:
    def __init__(self) -> None:
        self.probe = MouthProbe()
        self.events: list[dict[str, Any]] = []

    @hookimpl
    def anchorcast_event(self, host: Any, event: Any) -> None:
        self.events.append({"kind": event.kind, "pts": event.pts, "state": getattr(event, "state", ""),
                            "wall": time.monotonic()})

    @hookimpl
    def anchorcast_register_outputs(self, host: Any, register: Any) -> None:
        register("test-mouth-probe", lambda host, settings: self.probe)


def child_host(options: dict[str, Any]) -> None:
    """mic -> live scheduler -> viseme engine -> MouthProbe, for ``seconds`` after the first frame aired."""
    from anchorcast.host import Host
    from anchorcast.plugin_manager import PluginPolicy
    from anchorcast_plugins.engines import viseme
    from anchorcast_plugins.sources import mic_source

    plugin = ProbePlugin()
    host = Host.create(PluginPolicy(), entry_points=False, extra_plugins=(mic_source, viseme, plugin))
    profile = host.load_profile(None, raw={
        "stream": {"width": 160, "height": 120, "fps": 25, "sample_rate": RATE},
        "scheduler": {"pace": "realtime", "lead_in_ms": 0, "latency_budget_ms": options.get("budget_ms", 200)},
        "source": {"use": "mic", "device": "pulse", "denoise": options.get("denoise", False)},
        "engine": {"use": "viseme"},
        "outputs": {"probe": {"use": "test-mouth-probe"}},
    })
    report: dict[str, Any] = {}
    failure: list[BaseException] = []

    def run() -> None:
        try:
            report.update(host.run(profile))
        except BaseException as error:
            failure.append(error)
            plugin.probe.first_frame.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    plugin.probe.first_frame.wait(READY_TIMEOUT_S)
    if failure:
        raise failure[0]
    print("READY", flush=True)
    time.sleep(options["seconds"])
    host.stop()
    thread.join(30)
    if failure:
        raise failure[0]
    out = Path(options["out"])
    np.save(out / "frames.npy", np.array(plugin.probe.rows))
    (out / "report.json").write_text(json.dumps(report))
    (out / "events.json").write_text(json.dumps(plugin.events))


# --- the parent's side -------------------------------------------------------------------------------------


class Child:
    """The child process, killed in :meth:`stop` whatever happened."""

    def __init__(self, mode: str, options: dict[str, Any], env: dict[str, str]) -> None:
        code = "from tests.mic_child import child_main; child_main()"
        self.process = subprocess.Popen(
            [sys.executable, "-c", code, mode, json.dumps(options)], cwd=REPO, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.lines: list[str] = []

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> None:
        assert self.process.stdout is not None
        found = threading.Event()

        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                self.lines.append(line.rstrip("\n"))
                if line.startswith("READY"):
                    found.set()
            found.set()

        threading.Thread(target=read, daemon=True).start()
        found.wait(timeout)
        if not any(line.startswith("READY") for line in self.lines):
            self.stop()
            raise AssertionError(f"the child never got audio: {self.output()}")

    def finish(self, timeout: float = 60.0) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self.stop()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def output(self) -> str:
        stderr = self.process.stderr.read() if self.process.stderr and self.process.poll() is not None else ""
        return "\n".join(self.lines) + "\n" + (stderr or "")[-3000:]


def run_child(mode: str, options: dict[str, Any], env: dict[str, str], timeout: float = 60.0
              ) -> subprocess.CompletedProcess[str]:
    code = "from tests.mic_child import child_main; child_main()"
    return subprocess.run([sys.executable, "-c", code, mode, json.dumps(options)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def input_error(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [line for line in result.stdout.splitlines() if line.startswith("INPUT-ERROR ")]
    assert result.returncode == 3 and lines, f"expected an InputError: {result.stdout}\n{result.stderr[-3000:]}"
    return json.loads(lines[0].removeprefix("INPUT-ERROR "))


