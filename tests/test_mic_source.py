"""The ``mic`` source through a real audio loopback: a private PulseAudio server's null sink and its monitor.

PortAudio enumerates devices (and ALSA's pulse plugin reads ``PULSE_SERVER``) when ``sounddevice`` is imported,
so everything that records runs in a child process started with the server's environment: ``child_main`` below
is that child (``python -c "from tests.test_mic_source import child_main; child_main()" MODE ARGS``). It prints
``READY`` once audio flows; the test then plays into the sink and reads the child's results from files.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anchorcast import hookimpl
from anchorcast.errors import InputError
from anchorcast.media import AudioChunk, StreamFormat, TextSegment, VideoFrame
from anchorcast_plugins.sources.mic_source import GapEstimator
from tests import pulse as pulse_module
from tests.pulse import PulseAudio, silence, tone

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
        {"capture": _child_capture, "host": _child_host, "error": _child_error}[mode](options)
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


def _child_host(options: dict[str, Any]) -> None:
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
        "source": {"use": "mic", "device": "pulse"},
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
        code = "from tests.test_mic_source import child_main; child_main()"
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
    code = "from tests.test_mic_source import child_main; child_main()"
    return subprocess.run([sys.executable, "-c", code, mode, json.dumps(options)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def input_error(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    lines = [line for line in result.stdout.splitlines() if line.startswith("INPUT-ERROR ")]
    assert result.returncode == 3 and lines, f"expected an InputError: {result.stdout}\n{result.stderr[-3000:]}"
    return json.loads(lines[0].removeprefix("INPUT-ERROR "))


@pytest.fixture(scope="module")
def pulse() -> Iterator[PulseAudio]:
    if pulse_module.available() is not None:
        pytest.skip(str(pulse_module.available()))
    server = PulseAudio()
    try:
        server.start()
        yield server
    finally:
        server.stop()


def loud_runs(samples: np.ndarray, block: int = CHUNK, threshold: float = LOUD_RMS, bridge: int = 5
              ) -> list[tuple[int, int]]:
    """``(first, last + 1)`` block indices of each run of loud blocks; runs at most ``bridge`` blocks apart are
    one (a player that underruns on a loaded machine cuts short holes into a sound)."""
    count = len(samples) // block
    levels = np.sqrt(np.mean(np.square(samples[: count * block].reshape(count, block)), axis=1))
    runs: list[tuple[int, int]] = []
    for index in np.flatnonzero(levels > threshold).tolist():
        if runs and index - runs[-1][1] <= bridge:
            runs[-1] = (runs[-1][0], index + 1)
        else:
            runs.append((index, index + 1))
    return runs


def dominant_frequency(samples: np.ndarray, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * rate / len(samples))


def capture(pulse: PulseAudio, tmp_path: Path, sounds: list[tuple[np.ndarray, int]], options: dict[str, Any],
            seconds: float) -> tuple[dict[str, np.ndarray], dict[str, Any], list[float]]:
    """Starts a capturing child and, once audio flows, plays each ``(sound, player buffer in ms)`` in turn into
    the sink; returns what the child recorded, its metadata and the monotonic time each sound was handed to its
    (already connected) player."""
    child = Child("capture", {**options, "seconds": seconds, "out": str(tmp_path)}, pulse.client_env())
    played_at = []
    try:
        child.wait_ready()
        for sound, buffer_ms in sounds:
            player = pulse.player(latency_ms=buffer_ms)
            time.sleep(0.3)
            played_at.append(player.write(sound))
            player.finish()
        code = child.finish(timeout=seconds + 60)
        assert code == 0, child.output()
    finally:
        child.stop()
    data = dict(np.load(tmp_path / "capture.npz"))
    meta = json.loads((tmp_path / "capture.json").read_text())
    return data, meta, played_at


PLAYER_BUFFER_MS = 250
"""pacat's buffer for sounds whose timing is checked: a small one underruns on a loaded machine, which inserts
silence into the played sound (the player's fault, not the microphone's)."""


# --- tests ---------------------------------------------------------------------------------------------------


def test_the_plugin_registers_mic_without_importing_sounddevice() -> None:
    code = ("import sys; from anchorcast.host import Host; from anchorcast.plugin_manager import PluginPolicy; "
            "from anchorcast_plugins.sources import mic_source; "
            "host = Host.create(PluginPolicy(), entry_points=False, extra_plugins=(mic_source,)); "
            "assert host.plugins.component('source', 'mic') is not None; "
            "assert 'sounddevice' not in sys.modules and 'soxr' not in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def steady_arrivals(estimator: GapEstimator, start: float, count: int, jitter: float = 0.004,
                    period: float = 0.02) -> float:
    """Feeds ``count`` blocks arriving every ``period`` (with random jitter); returns the time after them."""
    noise = np.random.default_rng(7).uniform(0, jitter, count)
    for i in range(count):
        assert estimator.observe(start + i * period + noise[i], overflow=False) == 0
    return start + count * period


def test_an_overflow_after_lost_audio_is_filled_with_that_many_blocks() -> None:
    estimator = GapEstimator(RATE, CHUNK)
    now = steady_arrivals(estimator, 100.0, 50)
    assert estimator.observe(now + 0.5, overflow=True) == 25  # 0.5 s lost: 25 blocks of 20 ms
    assert estimator.blocks == 50 + 25 + 1
    steady_arrivals(estimator, now + 0.52, 20)  # back in step: nothing more to fill


def test_an_overflow_without_a_late_arrival_fills_nothing() -> None:
    estimator = GapEstimator(RATE, CHUNK)
    now = steady_arrivals(estimator, 0.0, 30)
    assert estimator.observe(now + 0.003, overflow=True) == 0


def test_buffered_audio_arriving_late_and_in_a_burst_is_not_a_gap() -> None:
    estimator = GapEstimator(RATE, CHUNK)
    now = steady_arrivals(estimator, 0.0, 30)
    for _ in range(50):  # a 1 s stall, then the buffered blocks all at once: nothing was lost
        assert estimator.observe(now + 1.0, overflow=False) == 0
    now = steady_arrivals(estimator, now + 1.0, 30)
    assert estimator.observe(now + 0.2, overflow=True) == 10


def test_the_baseline_follows_a_sound_card_clock_slower_than_the_host_clock() -> None:
    estimator = GapEstimator(RATE, CHUNK)
    now = steady_arrivals(estimator, 0.0, 3000, period=0.02 * 1.001)  # 0.1 % slow: 60 ms late after a minute
    assert estimator.observe(now, overflow=True) == 0


@pytest.mark.slow
def test_a_tone_and_a_burst_pattern_come_back_in_contiguous_320_sample_chunks(
    pulse: PulseAudio, tmp_path: Path
) -> None:
    click = np.concatenate([tone(0.3, 880), silence(0.3)])
    bursts = [tone(0.2, 660), silence(0.3)] * 3
    pattern = np.concatenate([tone(1.0, 440), silence(0.6), *bursts])
    seconds = (len(click) + len(pattern)) / RATE + 3
    data, meta, (click_at, _) = capture(pulse, tmp_path, [(click, 20), (pattern, PLAYER_BUFFER_MS)],
                                        {"device": "pulse"}, seconds)

    assert meta["device"].split(": ", 1)[1].startswith("pulse")
    assert meta["capture_rate"] == RATE
    assert set(data["lengths"].tolist()) == {CHUNK}
    assert data["starts"].tolist() == [i * CHUNK for i in range(len(data["starts"]))]
    assert meta["stats"]["dropped_blocks"] == 0

    runs = loud_runs(data["samples"])
    assert len(runs) == 5, runs
    (click_start, _), (tone_start, tone_end), *burst_runs = runs
    assert abs((tone_end - tone_start) * CHUNK / RATE - 1.0) <= 0.08, runs
    first, last = tone_start * CHUNK, tone_end * CHUNK
    assert abs(dominant_frequency(data["samples"][first + 1600 : last - 1600]) - 440) < 3
    for (start, end), (next_start, _) in zip(burst_runs, [*burst_runs[1:], (None, None)], strict=True):
        assert abs((end - start) * CHUNK / RATE - 0.2) <= 0.06, runs
        assert abs(dominant_frequency(data["samples"][start * CHUNK + 320 : end * CHUNK - 320]) - 660) < 15
        if next_start is not None:
            assert abs((next_start - start) * CHUNK / RATE - 0.5) <= 0.04, runs  # the pattern's period
    assert abs((burst_runs[0][0] - tone_end) * CHUNK / RATE - 0.6) <= 0.08, runs

    latency_ms = (data["arrivals"][click_start] - click_at) * 1000
    print(f"\ncapture latency (sound handed to pacat with a 20 ms buffer -> the 20 ms chunk with its onset read): "
          f"{latency_ms:.0f} ms")
    assert 0 < latency_ms < 2000


@pytest.mark.slow
def test_device_by_index_at_another_capture_rate_is_resampled_to_16_khz(pulse: PulseAudio, tmp_path: Path) -> None:
    sound = np.concatenate([tone(0.8, 1000), silence(0.2)])
    data, meta, _ = capture(pulse, tmp_path, [(sound, PLAYER_BUFFER_MS)],
                            {"device": "INDEX-OF-PULSE", "capture_rate": 48000}, seconds=len(sound) / RATE + 2)

    assert meta["device"].startswith(f"{meta['device_index']}: pulse")
    assert meta["capture_rate"] == 48000
    assert set(data["lengths"].tolist()) == {CHUNK}
    assert data["starts"].tolist() == [i * CHUNK for i in range(len(data["starts"]))]
    [(start, end)] = loud_runs(data["samples"])
    assert abs((end - start) * CHUNK / RATE - 0.8) <= 0.06
    assert abs(dominant_frequency(data["samples"][start * CHUNK + 1600 : end * CHUNK - 1600]) - 1000) < 5


@pytest.mark.slow
def test_interrupt_silences_the_queued_audio_and_the_clock_does_not_slip(pulse: PulseAudio, tmp_path: Path
                                                                         ) -> None:
    sound = np.concatenate([tone(2.0, 500), silence(0.2)])
    options = {"device": "pulse", "pause_at": 1.0, "pause_s": 0.6, "interrupt": True}
    data, meta, _ = capture(pulse, tmp_path, [(sound, PLAYER_BUFFER_MS)], options, seconds=len(sound) / RATE + 2)

    assert data["starts"].tolist() == [i * CHUNK for i in range(len(data["starts"]))]
    assert meta["stats"]["dropped_blocks"] == 0
    (start, end), (resumed, last) = loud_runs(data["samples"])
    assert not data["samples"][end * CHUNK : resumed * CHUNK].any(), "the dropped audio is exact silence"
    assert 0.4 <= (resumed - end) * CHUNK / RATE <= 0.8  # about the 0.6 s queued while the reader slept
    assert abs((last - start) * CHUNK / RATE - 2.0) <= 0.1  # the tone ends where it would have: no slip


@pytest.mark.slow
def test_a_reader_that_falls_behind_loses_the_oldest_audio_and_it_is_counted(pulse: PulseAudio, tmp_path: Path
                                                                             ) -> None:
    sound = np.concatenate([tone(2.0, 500), silence(0.2)])
    options = {"device": "pulse", "pause_at": 1.0, "pause_s": 0.6, "queue_seconds": 0.2}
    data, meta, _ = capture(pulse, tmp_path, [(sound, PLAYER_BUFFER_MS)], options, seconds=len(sound) / RATE + 2)

    assert data["starts"].tolist() == [i * CHUNK for i in range(len(data["starts"]))]
    dropped = meta["stats"]["dropped_blocks"]
    assert 10 <= dropped <= 30, meta["stats"]  # 0.6 s queued into room for 0.2 s: about 20 blocks
    [(start, end)] = loud_runs(data["samples"])
    assert abs((end - start) * CHUNK / RATE - (2.0 - dropped * 0.02)) <= 0.1


@pytest.mark.slow
def test_an_unknown_device_name_or_index_lists_the_input_devices(pulse: PulseAudio) -> None:
    for wanted in ("no-such-microphone", 97):
        error = input_error(run_child("error", {"device": wanted}, pulse.client_env()))
        assert repr(wanted) in error["message"] or f"device = {wanted} " in error["message"]
        assert "available input devices" in error["message"]
        assert ": pulse (ALSA" in error["message"]  # index and name of the loopback device
    error = input_error(run_child("error", {"device": "U"}, pulse.client_env()))  # in "pulse" and "default"
    assert "matches 2 input devices" in error["message"] and ": pulse (" in error["message"]


@pytest.mark.slow
def test_no_input_device_at_all_explains_how_to_get_one(tmp_path: Path) -> None:
    """With no sound server to reach, a machine without sound cards (like CI's) has no input device at all."""
    env = {**os.environ, "PULSE_SERVER": f"unix:{tmp_path}/nothing-listens-here"}
    result = run_child("error", {"device": None}, env)
    if result.returncode == 0 and "OPENED" in result.stdout:
        pytest.skip("this machine has a sound card: there is an input device without a sound server")
    error = input_error(result)
    assert "no audio input device" in error["message"]
    assert "PulseAudio" in error["hint"]


@pytest.mark.slow
def test_live_stream_from_the_mic_moves_the_mouth_during_speech_only(pulse: PulseAudio, tmp_path: Path) -> None:
    from anchorcast_plugins.voices.espeak_voice import EspeakVoice

    voice = EspeakVoice("en")
    speech = np.concatenate([s.audio for s in voice.synthesize(TextSegment("Hello there, the anchor is live."))])
    rate = voice.sample_rate
    options = {"seconds": 2.0 + len(speech) / rate + 2.0, "out": str(tmp_path), "budget_ms": LIVE_BUDGET_MS}
    child = Child("host", options, pulse.client_env())
    try:
        child.wait_ready()
        player = pulse.player(rate, latency_ms=PLAYER_BUFFER_MS)
        time.sleep(1.5)
        played_at = player.write(speech)
        player.finish()
        code = child.finish(timeout=90)
        assert code == 0, child.output()
    finally:
        child.stop()
    frames = np.load(tmp_path / "frames.npy")
    report = json.loads((tmp_path / "report.json").read_text())
    index, change, level, written = frames.T
    assert (np.diff(index) == 1).all()

    loud = np.flatnonzero(level > 0.02)
    assert len(loud) > 25, f"the speech never reached the frames: levels {np.round(level, 3).tolist()}"
    first_loud, last_loud = loud[0], loud[-1]
    before, after = change[: max(0, first_loud - 12)], change[last_loud + 12 :]
    assert len(before) > 10 and (before == 0).all(), "the mouth moved before the speech"
    assert (after == 0).all(), "the mouth kept moving after the speech"
    moving = change[first_loud : last_loud + 1] > 0
    assert moving.mean() > 0.6, f"the mouth moved in {moving.mean():.0%} of the speech frames"

    first_moving = first_loud + int(np.argmax(moving))
    latency = report["stages"].get("audio_to_air", {})
    keys = ("overruns", "silence_underruns", "dropped_frames")
    print(f"\nmic -> frame: sound handed to pacat -> first moving frame written "
          f"{1000 * (written[first_moving] - played_at):.0f} ms; scheduler audio_to_air {json.dumps(latency)}; "
          f"{ {key: report[key] for key in keys} }")
    assert written[first_moving] > played_at


@pytest.mark.slow
def test_a_microphone_that_disappears_leaves_the_anchor_idle_and_is_back_when_it_returns(
    pulse: PulseAudio, tmp_path: Path
) -> None:
    """The sound server's source is removed mid-stream (as unplugging a USB microphone does) and added again:
    frames keep airing, idle, through the gap; the mic reopens by itself and the mouth follows speech again."""
    from anchorcast_plugins.voices.espeak_voice import EspeakVoice

    voice = EspeakVoice("en")
    speech = np.concatenate([s.audio for s in voice.synthesize(TextSegment("The anchor is live again."))])
    rate = voice.sample_rate
    options = {"seconds": 12.0 + len(speech) / rate, "out": str(tmp_path), "budget_ms": LIVE_BUDGET_MS}
    child = Child("host", options, pulse.client_env())
    try:
        child.wait_ready()
        time.sleep(1.0)
        sink_module = next(line.split()[0] for line in pulse.pactl("list", "short", "modules").splitlines()
                           if "module-null-sink" in line)
        pulse.pactl("unload-module", sink_module)
        lost_at = time.monotonic()
        time.sleep(3.0)
        pulse.pactl("load-module", "module-null-sink", f"sink_name={pulse_module.SINK}", f"rate={RATE}")
        back_at = time.monotonic()
        time.sleep(3.0)  # the mic reopens within reconnect_s
        player = pulse.player(rate, latency_ms=PLAYER_BUFFER_MS)
        played_at = player.write(speech)
        player.finish()
        code = child.finish(timeout=90)
        assert code == 0, child.output()
    finally:
        child.stop()
        if not any("anchor_sink" in line for line in pulse.pactl("list", "short", "sinks").splitlines()):
            pulse.pactl("load-module", "module-null-sink", f"sink_name={pulse_module.SINK}", f"rate={RATE}")
    frames = np.load(tmp_path / "frames.npy")
    events = json.loads((tmp_path / "events.json").read_text())
    index, change, level, written = frames.T
    assert (np.diff(index) == 1).all()
    during = (written > lost_at + 0.5) & (written < back_at)
    assert during.sum() > 40, "the stream stopped while the microphone was gone"  # 25 fps for ~2.5 s
    assert np.diff(written[during]).max() < 0.5, "frames stalled while the microphone was gone"
    assert (change[during] == 0).all(), "the anchor was not idle while the microphone was gone"
    states = [e["state"] for e in events if e["kind"] == "source_state"]
    assert states == ["lost", "live"], events
    live_at = next(e["wall"] for e in events if e["kind"] == "source_state" and e["state"] == "live")
    assert back_at < live_at < back_at + 3.0
    after = written > played_at
    moving = change[after] > 0
    assert (level[after] > 0.02).sum() > 10, "the speech after the reconnect never reached the frames"
    assert moving.sum() > 10, "the mouth did not follow speech after the reconnect"
    print(f"\nmic lost -> 'lost' event; back -> 'live' event {1000 * (live_at - back_at):.0f} ms after the source "
          f"returned; {during.sum()} idle frames aired while it was gone")
