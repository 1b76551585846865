"""The ``mic`` source through a real audio loopback: a private PulseAudio server's null sink and its monitor.
What records runs in a child process (tests/mic_child.py) started with the server's environment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anchorcast.media import TextSegment
from anchorcast_plugins.sources.mic_source import GapEstimator
from tests.mic_child import CHUNK, LIVE_BUDGET_MS, LOUD_RMS, RATE, REPO, Child, input_error, run_child
from tests.pulse import PulseAudio, silence, tone


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
        pulse.remove_sink()
        lost_at = time.monotonic()
        time.sleep(3.0)
        pulse.restore_sink()
        back_at = time.monotonic()
        time.sleep(3.0)  # the mic reopens within reconnect_s
        player = pulse.player(rate, latency_ms=PLAYER_BUFFER_MS)
        played_at = player.write(speech)
        player.finish()
        code = child.finish(timeout=90)
        assert code == 0, child.output()
    finally:
        child.stop()
        pulse.restore_sink()
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
