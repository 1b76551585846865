"""Real servers the integration tests start, and a reader for what they serve.

- :class:`NginxRtmp`: nginx with the RTMP module (Debian's libnginx-mod-rtmp) on a free loopback port.
- :class:`RtmpReader`: a PyAV client that plays an RTMP stream in a thread and keeps every packet's timestamp and
  arrival time, the decoded frames' brightness and the decoded audio, so tests (and benchmarks) can measure frame
  counts, pacing and the A/V offset as a viewer sees them.

``.ci/run`` installs the servers; a test that finds one missing fails with the install command rather than
skipping.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

NGINX_RTMP_MODULE = Path("/usr/lib/nginx/modules/ngx_rtmp_module.so")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def wait_for_port(port: int, timeout: float = 10.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {timeout} s")


class NginxRtmp:
    """nginx serving ``rtmp://127.0.0.1:PORT/live/KEY`` from a private folder; start, stop (a crash), restart, pause.

    nginx runs as a master and a worker process; both live in their own process group, which :meth:`stop` kills
    as a whole (killing only the master leaves the worker serving the stream and holding the port).
    """

    def __init__(self, folder: Path, port: int | None = None) -> None:
        nginx = shutil.which("nginx") or "/usr/sbin/nginx"
        if not Path(nginx).exists() or not NGINX_RTMP_MODULE.exists():
            raise RuntimeError(
                "nginx with the RTMP module is missing: apt-get install -y nginx libnginx-mod-rtmp (see .ci/run)"
            )
        self.nginx = nginx
        self.folder = folder
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None
        (folder / "logs").mkdir(parents=True, exist_ok=True)
        self.config = folder / "nginx.conf"
        self.config.write_text(
            f"load_module {NGINX_RTMP_MODULE};\n"
            "daemon off;\n"
            "worker_processes 1;\n"
            f"pid {folder}/nginx.pid;\n"
            f"error_log {folder}/logs/error.log info;\n"
            "events { worker_connections 64; }\n"
            "rtmp { server {\n"
            f"    listen 127.0.0.1:{self.port};\n"
            "    chunk_size 4096;\n"
            "    application live { live on; record off; }\n"
            "} }\n"
        )

    def url(self, key: str = "anchor") -> str:
        return f"rtmp://127.0.0.1:{self.port}/live/{key}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 15.0) -> NginxRtmp:
        if self.running:
            return self
        self.process = subprocess.Popen(
            [self.nginx, "-c", str(self.config), "-p", str(self.folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while not port_open(self.port):
            if self.process.poll() is not None:
                log = (self.folder / "logs" / "error.log").read_text(errors="replace")[-2000:]
                self.process = None
                raise RuntimeError(f"nginx exited at start; its log ends with:\n{log}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"nginx did not listen on port {self.port} within {timeout} s")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Kills nginx (master and worker) at once, as a crash would: open connections are reset."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
            os.killpg(process.pid, signal.SIGCONT)  # a paused group dies only once it runs again
        process.wait(timeout=10)
        deadline = time.monotonic() + 10
        while port_open(self.port) and time.monotonic() < deadline:  # the worker may outlive the master briefly
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freezes nginx (SIGSTOP): connections stay open but nothing is read, like a stalled network."""
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGCONT)

    def __enter__(self) -> NginxRtmp:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- reading a stream back ----------------------------------------------------------------------------------


@dataclass
class Received:
    """What an :class:`RtmpReader` got. Times are ``time.monotonic()`` seconds; pts are stream seconds."""

    opened_at: float | None = None
    video_size: tuple[int, int] | None = None
    audio_rate: int | None = None
    audio_channels: int | None = None
    video_packets: list[tuple[float, float, bool]] = field(default_factory=list)
    """(pts, arrival time, keyframe) of every video packet."""
    audio_packets: list[tuple[float, float]] = field(default_factory=list)
    """(pts, arrival time) of every audio packet."""
    frames: list[tuple[float, float]] = field(default_factory=list)
    """(pts, mean luma) of every decoded video frame."""
    audio_chunks: list[tuple[float, np.ndarray]] = field(default_factory=list)
    """(pts, mono samples) of every decoded audio frame."""
    error: str = ""

    def audio(self) -> tuple[float, np.ndarray]:
        """The decoded audio as one array, with the pts of its first sample (gaps are not filled)."""
        if not self.audio_chunks:
            return 0.0, np.zeros(0, np.float32)
        return self.audio_chunks[0][0], np.concatenate([samples for _, samples in self.audio_chunks])

    def live_video(self, settle_s: float = 0.05) -> list[tuple[float, float, bool]]:
        """Video packets that arrived live: the few read while probing arrive in one batch when ``av.open``
        returns, so their arrival times say nothing about pacing."""
        if self.opened_at is None:
            return []
        return [p for p in self.video_packets if p[1] > self.opened_at + settle_s]


class RtmpReader:
    """Plays ``url`` with PyAV in a background thread until the stream ends or nothing arrives for ``idle_s``.

    Start it before the publisher: nginx-rtmp holds a player of a stream that is not published yet and starts
    sending when the publisher arrives. ``decode`` also decodes frames and audio (cheap at small sizes).
    """

    def __init__(self, url: str, *, decode: bool = True, open_s: float = 60.0, idle_s: float = 3.0,
                 probe_s: float = 0.15) -> None:
        self.url = url
        self.probe_s = probe_s
        """How long the opening probes for streams: a player joining a stream already on air gets its video
        from the next keyframe (the RTMP output's keyframes are 2 s apart), so it needs a longer probe than
        one started before the publisher."""
        self.decode = decode
        self.open_s = open_s
        self.idle_s = idle_s
        self.received = Received()
        self._thread = threading.Thread(target=self._run, name="rtmp-reader", daemon=True)

    def start(self) -> RtmpReader:
        self._thread.start()
        return self

    def join(self, timeout: float = 60.0) -> Received:
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"the RTMP reader of {self.url} is still reading after {timeout} s")
        return self.received

    def _run(self) -> None:
        import av

        got = self.received
        try:
            # a short probe by default (0.15 s of stream, time enough to see both streams appear): av.open
            # returns soon after the stream starts, so the arrival times of all but the first few packets are real
            options = {"analyzeduration": str(round(self.probe_s * 1e6))}
            with av.open(self.url, timeout=(self.open_s, self.idle_s), options=options) as container:
                got.opened_at = time.monotonic()
                video = container.streams.video[0] if container.streams.video else None
                audio = container.streams.audio[0] if container.streams.audio else None
                if video is not None:
                    got.video_size = (video.codec_context.width, video.codec_context.height)
                if audio is not None:
                    got.audio_rate = audio.codec_context.sample_rate
                    got.audio_channels = audio.codec_context.channels
                for packet in container.demux():
                    if packet.pts is None:
                        continue
                    now = time.monotonic()
                    pts = float(packet.pts * packet.time_base)
                    if packet.stream.type == "video":
                        got.video_packets.append((pts, now, packet.is_keyframe))
                        if self.decode:
                            for frame in packet.decode():
                                luma = frame.to_ndarray(format="gray")
                                got.frames.append((float(frame.time), float(luma.mean())))
                    elif packet.stream.type == "audio":
                        got.audio_packets.append((pts, now))
                        if self.decode:
                            for frame in packet.decode():
                                samples = frame.to_ndarray().astype(np.float32)
                                got.audio_chunks.append((float(frame.time), samples.reshape(-1)[: frame.samples]))
        except (OSError, av.FFmpegError) as error:  # the end of a live stream is an I/O error or a timeout
            got.error = f"{type(error).__name__}: {error}"


def onsets(times: list[float], values: list[float], threshold: float, min_gap_s: float) -> list[float]:
    """Times where ``values`` rise through ``threshold``, at least ``min_gap_s`` after the previous onset."""
    found: list[float] = []
    below = True
    for t, value in zip(times, values, strict=True):
        if below and value >= threshold and (not found or t - found[-1] >= min_gap_s):
            found.append(t)
        below = value < threshold
    return found


def audio_onsets(start_pts: float, samples: np.ndarray, rate: int, threshold: float, min_gap_s: float) -> list[float]:
    """Onsets of sounds in decoded audio: where the 2 ms envelope rises through ``threshold``."""
    hop = max(1, rate // 500)
    count = len(samples) // hop
    envelope = np.abs(samples[: count * hop]).reshape(count, hop).max(axis=1)
    times = [start_pts + i * hop / rate for i in range(count)]
    return onsets(times, envelope.tolist(), threshold, min_gap_s)


def av_offsets(got: Received, flash_luma: float, beep_level: float, min_gap_s: float = 0.5) -> list[float]:
    """For a stream of beeps with a flash on the same frames: beep onset minus flash onset (seconds) for every
    beep the player both saw and heard. Positive: the sound comes late."""
    flashes = onsets([t for t, _ in got.frames], [luma for _, luma in got.frames], flash_luma, min_gap_s)
    start, samples = got.audio()
    if got.audio_rate is None or not len(samples):
        return []
    beeps = audio_onsets(start, samples, got.audio_rate, beep_level, min_gap_s)
    offsets = []
    for flash in flashes:
        nearest = min(beeps, key=lambda beep: abs(beep - flash), default=None)
        if nearest is not None and abs(nearest - flash) < min_gap_s:
            offsets.append(nearest - flash)
    return offsets
