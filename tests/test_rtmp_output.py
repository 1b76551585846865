"""The ``rtmp`` output against a real nginx-rtmp server, read back by a real PyAV player.

The stream is a beep-and-flash pattern from the test components: the tone voice speaks each line as a tone whose
length is a whole number of frames, and the level engine draws a frame bright exactly when its own audio is loud.
The player decodes both, so the A/V offset is measured as a viewer sees it: flash onset against beep onset.
Figures (offset, reconnect time, frames dropped) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from anchorcast.errors import InputError
from anchorcast.host import Host
from anchorcast.media import AudioChunk, StreamFormat, VideoFrame
from anchorcast.plugin_manager import PluginPolicy
from anchorcast.scheduler import Scheduler
from anchorcast_plugins.outputs import rtmp_output
from anchorcast_plugins.outputs.rtmp_output import RtmpOutput, _AudioFeed
from tests.components import CollectOutput, RecordingPlugin
from tests.conftest import make_profile
from tests.servers import NginxRtmp, Received, RtmpReader, av_offsets, free_port

FPS = 25
FRAME_S = 1 / FPS
KEY_ENV = "ANCHORCAST_TEST_RTMP_KEY"
BEEP = "beep beep beep b"  # 16 characters: a 0.8 s tone from the test voice, 20 frames exactly
STREAM = {"width": 320, "height": 240, "fps": FPS, "sample_rate": 16000}
# lead-in and pauses of whole frames put every beep onset on a frame boundary
SCHEDULER = {"lead_in_ms": 400, "pause_ms": 400, "tail_ms": 400, "latency_budget_ms": 300}
FLASH_LUMA = 70.0  # the level engine draws ~Y 17 in silence and ~Y 140 under the test tone
BEEP_LEVEL = 0.25  # the tone's amplitude is 0.5


@pytest.fixture
def nginx(tmp_path: Path) -> Iterator[NginxRtmp]:
    server = NginxRtmp(tmp_path / "nginx")
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
def stream_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, "anchor")
    return "anchor"


@pytest.fixture
def background() -> Iterator[Any]:
    """Starts host runs in background threads; whatever a failing test left running is stopped."""
    runs: list[Run] = []

    def start(plugin: RecordingPlugin, raw: dict[str, Any]) -> Run:
        runs.append(Run(rtmp_host(plugin), raw))
        return runs[-1].start()

    try:
        yield start
    finally:
        for run in runs:
            run.host.stop()
            run.thread.join(30)


def rtmp_host(plugin: RecordingPlugin) -> Host:
    """The test components and the rtmp output registered in process (no entry points: nothing twice)."""
    return Host.create(PluginPolicy(), entry_points=False, extra_plugins=(plugin, rtmp_output))


def beep_profile(port: int, beeps: int, **rtmp: Any) -> dict[str, Any]:
    settings = {"use": "rtmp", "url": f"rtmp://127.0.0.1:{port}/live", "key_env": KEY_ENV, "preset": "ultrafast",
                "video_bitrate": 400_000, **rtmp}
    return make_profile(
        [(BEEP, "")] * beeps,
        stream=STREAM,
        scheduler=SCHEDULER,
        outputs={"rtmp": settings, "collect": {"use": "test-collect", "live": True}},
    )


class Run:
    """A host run in a background thread, with its scheduler once it is ready."""

    def __init__(self, host: Host, raw: dict[str, Any]) -> None:
        self.host = host
        self.profile = host.load_profile(None, raw=raw)
        self.ready = threading.Event()
        self.scheduler: Scheduler | None = None
        self.report: dict[str, Any] = {}
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        def on_ready(scheduler: Scheduler) -> None:
            self.scheduler = scheduler
            self.ready.set()

        try:
            self.report = self.host.run(self.profile, on_ready=on_ready)
        except BaseException as error:
            self.error = error
        finally:
            self.ready.set()

    def start(self) -> Run:
        self.thread.start()
        assert self.ready.wait(60), "the host did not start"
        return self

    def join(self, timeout: float = 90) -> dict[str, Any]:
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.host.stop()
            self.thread.join(10)
            raise AssertionError("the run did not end")
        if self.error is not None:
            raise self.error
        return self.report

    @property
    def rtmp(self) -> RtmpOutput:
        assert self.scheduler is not None
        return dict(self.scheduler.outputs)["rtmp"]  # type: ignore[return-value]


def wait_until(condition: Any, timeout: float, step: float = 0.02) -> float | None:
    """Polls ``condition`` until it holds; returns the time it first held, None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(step)
    return None


def beep_offsets(got: Received) -> list[float]:
    """Beep onset minus flash onset for every beep the player both saw and heard (seconds)."""
    return av_offsets(got, FLASH_LUMA, BEEP_LEVEL)


def lateness_spread(packets: list[tuple[float, float, bool]]) -> float:
    """Spread of (arrival - pts) over packets, from the 2nd to the 98th percentile (single packets held back by
    interleaving do not count): about 0 for a stream that arrives in real time; a burst of stale frames or a
    drifting clock makes it grow. Packets read while the player probed count as arriving when it opened (the
    probe adds up to its 0.15 s), so a burst at the start of the stream shows too."""
    lateness = [arrival - pts for pts, arrival, _ in packets]
    low, high = np.percentile(lateness, [2, 98])
    return float(high - low)


def pts_per_wall_second(packets: list[tuple[float, float, bool]]) -> float:
    """The stream's media seconds per wall-clock second at the player (least squares): 1 in real time."""
    pts = np.array([p for p, _, _ in packets])
    arrival = np.array([a for _, a, _ in packets])
    return float(np.polyfit(arrival - arrival[0], pts, 1)[0])


def playout_gaps(collect: CollectOutput) -> tuple[float, float]:
    """The longest wall-clock gap between two aired frames, and the spread of (air time - media time)."""
    times = np.array(collect.times)
    media = np.array(collect.indices) / FPS
    return float(np.diff(times).max()), float(np.ptp(times - media))


# --- against the server -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_host_run_reaches_the_player_complete_and_in_sync(
    nginx: NginxRtmp, stream_key: str, plugin: RecordingPlugin, background: Any
) -> None:
    reader = RtmpReader(nginx.url(stream_key)).start()
    time.sleep(0.3)  # the player waits at the server for the stream to be published
    run = background(plugin, beep_profile(nginx.port, beeps=3))
    report = run.join()
    output = run.rtmp
    got = reader.join()

    aired = len(plugin.outputs[0].indices)
    offsets = beep_offsets(got)
    keyframes = [pts for pts, _, key in got.video_packets if key]
    print(f"\nrtmp: aired {aired}, sent {output.frames_sent}, dropped {output.frames_dropped}, "
          f"received {len(got.video_packets)} video packets, decoded {len(got.frames)} frames; "
          f"A/V offsets at the player (ms): {[round(o * 1000, 1) for o in offsets]}; keyframes at {keyframes}; "
          f"write p95 {report['stages']['output:rtmp'].get('p95_ms')} ms")
    assert output.metrics()["frames_sent"] == output.frames_sent == aired and output.frames_dropped == 0
    assert aired - 2 <= len(got.video_packets) <= aired
    assert len(got.frames) >= aired - 3
    assert got.video_size == (320, 240)
    assert got.audio_rate == 44100 and got.audio_channels == 1
    assert len(offsets) == 3, f"expected three beeps with flashes, got offsets {offsets}"
    assert max(abs(o) for o in offsets) <= FRAME_S
    assert np.allclose(np.diff(keyframes), 2.0, atol=FRAME_S)
    assert not output.connected and output.metrics()["reconnects"] == 0
    output.close()  # again: nothing happens
    assert output.frames_sent == aired


@pytest.mark.slow
def test_the_stream_survives_the_server_dying_and_resumes_on_the_clock(
    nginx: NginxRtmp, stream_key: str, plugin: RecordingPlugin, background: Any
) -> None:
    first_reader = RtmpReader(nginx.url(stream_key), decode=False).start()
    time.sleep(0.3)
    run = background(plugin, beep_profile(nginx.port, beeps=10, max_backoff_s=1.0))
    output = run.rtmp
    assert wait_until(lambda: output.frames_sent >= 2 * FPS, 30), "nothing was sent before the outage"

    killed_at = time.monotonic()
    nginx.stop()
    lost_at = wait_until(lambda: not output.connected, 5)
    assert lost_at is not None, "the output did not notice the server dying"
    time.sleep(2.0)
    sent_before_restart, dropped_before_restart = output.frames_sent, output.frames_dropped
    nginx.start()
    restarted_at = time.monotonic()
    reader = RtmpReader(nginx.url(stream_key)).start()
    reconnected_at = wait_until(lambda: output.connected, 15)
    assert reconnected_at is not None, f"no reconnection; last error: {output.last_error}"
    report = run.join()
    got = reader.join()
    before = first_reader.join()

    metrics = output.metrics()
    collect = plugin.outputs[0]
    longest_gap, playout_spread = playout_gaps(collect)
    live = got.live_video()
    offsets = beep_offsets(got)
    pts_rate = pts_per_wall_second(live)
    print(f"\nrtmp outage: noticed after {(lost_at - killed_at) * 1000:.0f} ms, reconnected "
          f"{reconnected_at - restarted_at:.2f} s after the server came back ({metrics['last_outage_seconds']} s "
          f"outage), {metrics['frames_dropped']} frames dropped (sent {metrics['frames_sent']} of "
          f"{len(collect.indices)} aired), reconnects {metrics['reconnects']}; playout: longest gap "
          f"{longest_gap * 1000:.0f} ms, spread {playout_spread * 1000:.0f} ms, rtmp write max "
          f"{report['stages']['output:rtmp']['max_ms']:.1f} ms; resumed stream at the player: "
          f"{len(got.video_packets)} packets, lateness spread {lateness_spread(got.video_packets) * 1000:.0f} ms, "
          f"pts/wall {pts_rate:.3f}, A/V offsets (ms) {[round(o * 1000, 1) for o in offsets]}")

    assert len(before.video_packets) >= FPS  # a viewer saw the stream before the outage
    # the host never waited for the network: frames aired on the clock all along
    assert longest_gap < 0.4 and playout_spread < 0.5
    assert report["stages"]["output:rtmp"]["max_ms"] < 200
    assert output.frames_sent > sent_before_restart
    # reconnected, and what aired in the outage was dropped, not sent late
    assert metrics["reconnects"] == 1
    states = [(e.output, e.state) for kind, e in plugin.calls if kind == "event" and e.kind == "output_state"]
    assert states == [("rtmp", "reconnecting"), ("rtmp", "restored")]  # as events, to plugins and the API
    assert output.frames_dropped >= dropped_before_restart >= 2 * FPS - 5
    assert output.frames_sent + output.frames_dropped == len(collect.indices)
    # the resumed stream arrives at the player in real time: no burst, no drift, still in sync
    assert len(live) >= 3 * FPS
    assert lateness_spread(got.video_packets) < 0.5
    assert 0.95 < pts_rate < 1.05
    assert offsets and max(abs(o) for o in offsets) <= FRAME_S


@pytest.mark.slow
def test_a_server_that_appears_later_is_found_when_retrying(
    stream_key: str, plugin: RecordingPlugin, tmp_path: Path, background: Any
) -> None:
    port = free_port()
    run = background(plugin, beep_profile(port, beeps=4, max_backoff_s=1.0))
    output = run.rtmp
    server = NginxRtmp(tmp_path / "nginx", port=port)
    try:
        time.sleep(1.5)
        assert not output.connected and output.frames_sent == 0
        server.start()
        reader = RtmpReader(server.url(stream_key), decode=False).start()
        assert wait_until(lambda: output.connected, 10) is not None, output.last_error
        run.join()
        got = reader.join()
    finally:
        server.stop()
    metrics = output.metrics()
    print(f"\nrtmp late server: {metrics}, player got {len(got.video_packets)} video packets")
    assert metrics["frames_sent"] >= 2 * FPS and metrics["frames_dropped"] > 0 and metrics["reconnects"] == 0
    assert "refused" in metrics["last_error"]
    assert len(got.video_packets) >= metrics["frames_sent"] - 2 * FPS


@pytest.mark.slow
def test_an_unreachable_server_is_a_clear_error_without_retry(stream_key: str, plugin: RecordingPlugin) -> None:
    port = free_port()
    host = rtmp_host(plugin)
    started = time.monotonic()
    with pytest.raises(InputError, match=rf"rtmp://127\.0\.0\.1:{port}/live: cannot connect: connection refused"):
        host.run(host.load_profile(None, raw=beep_profile(port, beeps=1, retry=False)))
    assert time.monotonic() - started < 10


@pytest.mark.slow
def test_a_stalled_network_never_blocks_write(nginx: NginxRtmp, stream_key: str) -> None:
    """nginx frozen (SIGSTOP) keeps the connection open but reads nothing: the socket fills up and the sender
    blocks in the network, while ``write`` stays fast and drops the oldest frames; after SIGCONT it goes on."""
    fmt = StreamFormat(320, 240, FPS, 16000)
    output = RtmpOutput(nginx.url(stream_key), preset="ultrafast", video_bitrate=50_000_000, buffer_s=0.4)
    output.open(fmt)
    noise = np.random.default_rng(1)
    slowest = 0.0
    sent = []
    try:
        for index in range(12 * FPS):
            if index == FPS:
                nginx.pause()
                sent.append(output.frames_sent)
            if index == 10 * FPS:
                sent.append(output.frames_sent)
                nginx.resume()
            image = noise.integers(0, 256, (240, 320, 3), np.uint8)
            audio = AudioChunk(np.zeros(640, np.float32), 16000, index * 640)
            began = time.perf_counter()
            output.write(VideoFrame(image, index, fmt.fps), audio)
            slowest = max(slowest, time.perf_counter() - began)
            time.sleep(FRAME_S / 2)
    finally:
        output.close()
    sent.append(output.frames_sent)
    print(f"\nrtmp stall: {output.metrics()}, slowest write {slowest * 1000:.1f} ms, sent before / during / after "
          f"the stall: {sent}")
    assert slowest < 0.1
    assert output.frames_dropped > 0
    assert sent[1] - sent[0] < 3 * FPS  # the stall was real: most of its 9 s of frames could not go out
    assert sent[2] > sent[1]  # and the stream went on afterwards


@pytest.mark.slow
def test_close_never_hangs_on_a_frozen_server(nginx: NginxRtmp, stream_key: str) -> None:
    fmt = StreamFormat(320, 240, FPS, 16000)
    output = RtmpOutput(nginx.url(stream_key), preset="ultrafast", video_bitrate=50_000_000)
    output.close_wait_s = 2.0
    output.open(fmt)
    noise = np.random.default_rng(2)
    nginx.pause()
    try:
        for index in range(4 * FPS):
            image = noise.integers(0, 256, (240, 320, 3), np.uint8)
            audio = AudioChunk(np.zeros(640, np.float32), 16000, index * 640)
            output.write(VideoFrame(image, index, fmt.fps), audio)
            time.sleep(FRAME_S / 2)
    finally:
        started = time.monotonic()
        output.close()
        took = time.monotonic() - started
        nginx.resume()
    print(f"\nrtmp close on a frozen server took {took:.2f} s: {output.metrics()}")
    assert took < output.close_wait_s + 3
    assert output.frames_sent + output.frames_dropped == 4 * FPS


@pytest.mark.slow
def test_a_dead_sender_takes_only_the_rtmp_output_off_the_stream(
    nginx: NginxRtmp, stream_key: str, plugin: RecordingPlugin, background: Any
) -> None:
    run = background(plugin, beep_profile(nginx.port, beeps=2))
    output = run.rtmp
    assert wait_until(lambda: output.frames_sent >= FPS, 30)
    assert output._process is not None
    os.kill(output._process.pid, signal.SIGKILL)
    run.join()
    collect = plugin.outputs[0]
    assert collect.indices == list(range(len(collect.indices))) and len(collect.indices) > 2 * FPS
    assert output.frames_sent < len(collect.indices)
    assert run.scheduler is not None and [name for name, _ in run.scheduler.outputs] == ["collect"]
    assert run.scheduler.metrics.counters["output_failed:rtmp"] == 1


@pytest.mark.slow
def test_a_server_that_refuses_the_stream_is_explained(nginx: NginxRtmp, stream_key: str,
                                                       plugin: RecordingPlugin) -> None:
    host = rtmp_host(plugin)
    raw = beep_profile(nginx.port, beeps=1, retry=False, url=f"rtmp://127.0.0.1:{nginx.port}/nosuchapp")
    with pytest.raises(InputError, match="refused the stream .* application name") as caught:
        host.run(host.load_profile(None, raw=raw))
    assert "/nosuchapp" in str(caught.value) and stream_key not in str(caught.value)


# --- without a server -------------------------------------------------------------------------------------


def test_an_unset_key_variable_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, plugin: RecordingPlugin) -> None:
    monkeypatch.delenv(KEY_ENV, raising=False)
    host = rtmp_host(plugin)
    with pytest.raises(InputError, match=KEY_ENV) as caught:
        host.run(host.load_profile(None, raw=beep_profile(free_port(), beeps=1)))
    assert KEY_ENV in (caught.value.hint or "")


def test_a_url_that_is_not_rtmp_is_refused(stream_key: str, plugin: RecordingPlugin) -> None:
    host = rtmp_host(plugin)
    raw = beep_profile(1935, beeps=1, url="http://127.0.0.1/live")
    with pytest.raises(InputError, match="not an RTMP address"):
        host.run(host.load_profile(None, raw=raw))


def test_the_key_never_shows_in_errors(plugin: RecordingPlugin, monkeypatch: pytest.MonkeyPatch,
                                       caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(KEY_ENV, "s3cret-key")
    host = rtmp_host(plugin)
    caplog.set_level(logging.DEBUG)  # nor in any log line, at any level
    with pytest.raises(InputError) as caught:
        host.run(host.load_profile(None, raw=beep_profile(free_port(), beeps=1, retry=False)))
    assert "s3cret" not in str(caught.value) and "s3cret" not in (caught.value.hint or "")
    assert caplog.records and "s3cret" not in caplog.text
    assert "s3cret" not in json.dumps(host.last_report, default=str)


def test_resampled_audio_keeps_its_position_on_the_clock() -> None:
    """A click at a known timeline sample comes out of the 16 -> 44.1 kHz stream at the matching position,
    however the chunks fall."""
    feed = _AudioFeed(16000, 44100)
    timeline = np.zeros(16000, np.float32)
    timeline[5000] = 1.0
    out = np.zeros(44100 + 2048, np.float32)
    for start in range(0, 16000, 640):
        samples, position = feed.convert(AudioChunk(timeline[start : start + 640], 16000, start))
        out[position : position + len(samples)] = samples
    samples, position = feed.flush()
    out[position : position + len(samples)] = samples
    assert abs(int(np.argmax(out)) - 5000 * 44100 / 16000) <= 1
    assert position + len(samples) == 44100


def test_audio_at_the_ingest_rate_passes_through_and_gaps_become_silence() -> None:
    feed = _AudioFeed(44100, 44100)
    ones = np.ones(100, np.float32)
    assert feed.convert(AudioChunk(ones, 44100, 0))[1] == 0
    samples, position = feed.convert(AudioChunk(ones, 44100, 150))  # 50 samples missing
    assert position == 100 and len(samples) == 150 and not samples[:50].any() and samples[50:].all()
    samples, position = feed.convert(AudioChunk(ones, 44100, 200))  # overlaps by 50
    assert position == 250 and len(samples) == 50


def test_reconnect_backoff_doubles_from_its_first_wait_up_to_its_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """The sender's real loop against a real closed port: each failed connect waits twice as long as the last,
    never longer than max_backoff_s, and a connect attempt follows every wait."""
    import queue as queue_module

    from anchorcast_plugins.outputs import rtmp_sender

    port = free_port()
    config = {"t": "config", "target": f"rtmp://127.0.0.1:{port}/live/k", "url": f"rtmp://127.0.0.1:{port}/live",
              "width": 64, "height": 64, "fps": [25, 1], "audio_rate": 44100, "video_bitrate": 200_000,
              "audio_bitrate": 64_000, "preset": "ultrafast", "retry": True, "max_backoff_s": 3.0}
    reports: list[str] = []
    waits: list[float] = []
    sender = rtmp_sender._Sender(config, queue_module.Queue(), lambda kind, **_: reports.append(kind))

    def wait_no_time(seconds: float) -> bool:  # the clock is not what is tested: the schedule is
        waits.append(seconds)
        return len(waits) < 8

    monkeypatch.setattr(sender, "_discard_for", wait_no_time)
    sender.run()
    first = rtmp_sender.FIRST_BACKOFF_S
    assert waits == [min(first * 2**k, 3.0) for k in range(8)] == [0.5, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0]
    assert reports.count("connect_failed") == 8 and reports[-1] == "finished"
