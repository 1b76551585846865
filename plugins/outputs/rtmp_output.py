"""The ``rtmp`` output: the anchor pushed live to an RTMP ingest as FLV with H.264 (libx264) and AAC.

The playout never waits for the network. :meth:`RtmpOutput.write` converts the frame to I420 and its audio to the
ingest's rate and hands both, as one unit, to a bounded queue; a feeder thread pipes units to a *sender process*
(:mod:`~anchorcast_plugins.outputs.rtmp_sender`) that encodes, muxes and talks RTMP. A process rather than a
thread because FFmpeg holds Python's GIL while it connects, handshakes and writes the trailer: in a thread, a slow
or hung server would freeze the whole host. When the queue is full (a stalled network) the oldest units are
dropped, picture and audio together, and counted.

Timestamps come from the media clock: within one connection, video pts is the frame index and audio pts the
sample position (at ``audio_rate``), both counted from the connection's first frame. When the server goes away the
sender closes the connection and reconnects with exponential backoff while the host keeps running; frames aired
during the outage are dropped (counted), and the new connection starts with the frame airing when it comes up,
so the viewer gets no burst of stale frames and audio and video stay on one clock.

The stream key is never in the profile: ``key_env`` names the environment variable that holds it, and it is
appended to ``url`` as the last path element. It reaches the sender through its pipe (not its command line);
logs and errors show ``url`` without the key.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import numpy as np

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import AnchorcastError, InputError
from anchorcast.media import AudioChunk, FloatAudio, Image, OutputState, StreamFormat, VideoFrame
from anchorcast_plugins.outputs.file_output import (
    X264_PRESETS,
)

if TYPE_CHECKING:
    from anchorcast.host import Host

from anchorcast_plugins.outputs.rtmp_sender import (
    FIRST_BACKOFF_S,
    _send_message,
    _Unit,
)

log = logging.getLogger(__name__)

AAC_RATES = (8000, 11025, 12000, 16000, 22050, 24000, 32000, 44100, 48000, 64000, 88200, 96000)
FIRST_ANSWER_S = 20.0
"""How long :meth:`RtmpOutput.open` waits for the sender to start and try the server once."""
CLOSE_WAIT_S = 10.0
"""How long :meth:`RtmpOutput.close` lets the sender flush before it is killed (a stalled socket never lets go)."""


class _AudioFeed:
    """Brings the timeline's audio chunks to the output rate in one continuous soxr stream, keeping each output
    sample's exact position (soxr removes its own delay, so output sample n is input time n / rate)."""

    def __init__(self, in_rate: int, out_rate: int) -> None:
        self.in_rate, self.out_rate = in_rate, out_rate
        self._stream: Any = None
        if in_rate != out_rate:
            import soxr

            self._stream = soxr.ResampleStream(in_rate, out_rate, 1, dtype="float32", quality="HQ")
        self._next_in: int | None = None
        self._next_out = 0

    def convert(self, chunk: AudioChunk) -> tuple[FloatAudio, int]:
        """The chunk at the output rate and the output position of its first sample. A gap in the input becomes
        silence and an overlap is dropped, so positions never drift."""
        samples = np.asarray(chunk.samples, np.float32).reshape(-1)
        if self._next_in is None:
            self._next_in = chunk.start
            self._next_out = round(Fraction(chunk.start * self.out_rate, self.in_rate))
        if chunk.start > self._next_in:
            samples = np.concatenate([np.zeros(chunk.start - self._next_in, np.float32), samples])
        elif chunk.start < self._next_in:
            samples = samples[self._next_in - chunk.start :]
        self._next_in += len(samples)
        return self._emit(samples if self._stream is None else self._stream.resample_chunk(samples))

    def flush(self) -> tuple[FloatAudio, int]:
        if self._stream is None:
            return self._emit(np.zeros(0, np.float32))
        return self._emit(self._stream.resample_chunk(np.zeros(0, np.float32), last=True))

    def _emit(self, samples: FloatAudio) -> tuple[FloatAudio, int]:
        start = self._next_out
        self._next_out += len(samples)
        return np.ascontiguousarray(samples, np.float32), start


# --- the output, in the host's process ----------------------------------------------------------------------


class RtmpOutput:
    """Pushes the stream to ``url`` (plus ``/key`` when a key is given), reconnecting when the server goes away.

    Counters (also in :meth:`metrics`): ``frames_sent``, ``frames_dropped`` (queue overflow, outages, stale
    frames at a reconnect, the frame in flight when a connection broke), ``reconnects`` (connections made after
    one was lost), ``last_error``, ``outage_seconds`` (all outages) and ``last_outage_s``.
    """

    live = True
    close_wait_s = CLOSE_WAIT_S

    def __init__(
        self,
        url: str,
        *,
        key: str | None = None,
        video_bitrate: int = 1_500_000,
        audio_bitrate: int = 128_000,
        audio_rate: int = 44100,
        preset: str = "veryfast",
        retry: bool = True,
        max_backoff_s: float = 8.0,
        buffer_s: float = 1.0,
        on_state: Callable[[str, str], None] = lambda state, detail: None,
    ) -> None:
        self.url = url.rstrip("/")
        self.on_state = on_state
        """Told ``("reconnecting", why)`` when the connection is lost and ``("restored", "")`` when it is back."""
        self._target = f"{self.url}/{key}" if key else self.url
        self.video_bitrate = video_bitrate
        self.audio_bitrate = audio_bitrate
        self.audio_rate = audio_rate
        self.preset = preset
        self.retry = retry
        self.max_backoff_s = max(FIRST_BACKOFF_S, max_backoff_s)
        self.buffer_s = buffer_s
        self.frames_sent = 0
        self.frames_dropped = 0
        self.reconnects = 0
        self.last_error = ""
        self.outage_seconds = 0.0
        self.last_outage_s: float | None = None
        self._cond = threading.Condition()
        self._queue: deque[_Unit] = deque()
        self._capacity = 2
        self._connected = False
        self._closing = False
        self._finished = False
        self._fatal: str | None = None
        self._first_answer = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._threads: list[threading.Thread] = []
        self._feed: _AudioFeed | None = None
        self._last_index: int | None = None
        self._piped = 0  # frames handed to the sender
        self._accounted = 0  # frames the sender reported sent or dropped

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def open(self, fmt: StreamFormat) -> None:
        """Starts the sender and waits for its first connection attempt. An unreachable server is an
        :class:`InputError` unless ``retry``, in which case the sender keeps trying in the background."""
        self.close()
        if fmt.width % 2 or fmt.height % 2:
            raise InputError(
                f"rtmp output {self.url}: the video size {fmt.width}x{fmt.height} is odd, and H.264 in yuv420p "
                "needs an even width and height",
                hint="make the width and height even",
            )
        self.format = fmt
        self._capacity = max(2, round(self.buffer_s * float(fmt.fps)))
        self._feed = _AudioFeed(fmt.sample_rate, self.audio_rate)
        self._last_index = None
        self._queue.clear()
        self._connected = self._closing = self._finished = False
        self._fatal = None
        self._first_answer.clear()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "anchorcast_plugins.outputs.rtmp_sender"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches the host, which then ends the stream cleanly
        )
        assert self._process.stdin is not None
        with contextlib.suppress(OSError):  # a sender that died at start is reported by the status thread
            _send_message(self._process.stdin, self._config(fmt))
        self._threads = [
            threading.Thread(target=self._watch_sender, name="anchorcast-rtmp-status", daemon=True),
            threading.Thread(target=self._feed_sender, name="anchorcast-rtmp-feeder", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        answered = self._first_answer.wait(FIRST_ANSWER_S)
        if self._fatal is not None:
            problem = self._fatal
            self._stop_sender()
            raise AnchorcastError(f"rtmp output {self.url}: {problem}")
        if self._connected:
            log.info("rtmp output %s: publishing", self.url)
            return
        problem = self.last_error if answered else f"no answer within {FIRST_ANSWER_S:.0f} s"
        if not self.retry:
            self._stop_sender()
            raise InputError(
                f"rtmp output {self.url}: cannot connect: {problem}",
                hint="start the RTMP server (or check the URL and the stream key), or set retry = true to keep "
                "trying in the background",
            )
        log.warning("rtmp output %s: cannot connect (%s); retrying in the background", self.url, problem)

    def _config(self, fmt: StreamFormat) -> dict[str, Any]:
        fps = Fraction(fmt.fps)
        return {
            "t": "config",
            "target": self._target,
            "url": self.url,
            "width": fmt.width,
            "height": fmt.height,
            "fps": [fps.numerator, fps.denominator],
            "audio_rate": self.audio_rate,
            "video_bitrate": self.video_bitrate,
            "audio_bitrate": self.audio_bitrate,
            "preset": self.preset,
            "retry": self.retry,
            "max_backoff_s": self.max_backoff_s,
        }

    def write(self, frame: VideoFrame, audio: AudioChunk) -> None:
        if self._fatal is not None:
            raise AnchorcastError(f"rtmp output {self.url} failed: {self._fatal}")
        if self._feed is None or self._process is None:
            raise RuntimeError("RtmpOutput.write() called while the output is not open")
        image = frame.image
        fmt = self.format
        if image.ndim != 3 or image.shape[:2] != (fmt.height, fmt.width) or image.shape[2] not in (3, 4):
            raise ValueError(f"frame {frame.index} is {image.shape}, expected ({fmt.height}, {fmt.width}, 3 or 4)")
        if self._last_index is not None and frame.index <= self._last_index:
            raise ValueError(f"frame {frame.index} arrived after frame {self._last_index}: indices must increase")
        if audio.sample_rate != fmt.sample_rate:
            raise ValueError(f"audio at {audio.sample_rate} Hz given to an output opened at {fmt.sample_rate} Hz")
        self._last_index = frame.index
        samples, audio_start = self._feed.convert(audio)  # always: the resampler must see the whole timeline
        with self._cond:
            if not self._connected:  # an outage: nothing to send it to, and it is stale by the reconnect
                self.frames_dropped += 1
                return
        self._enqueue(_Unit(frame.index, _to_i420(image), samples, audio_start, time.monotonic()))

    def close(self) -> None:
        """Sends what is queued, flushes the encoders and ends the stream. Safe to call more than once."""
        if self._process is None:
            return
        if self._feed is not None and self._last_index is not None and self._connected:
            tail, start = self._feed.flush()
            if len(tail):
                self._enqueue(_Unit(self._last_index, None, tail, start, time.monotonic()))
        self._feed = None
        self._stop_sender()
        log.info(
            "rtmp output %s closed: %d frames sent, %d dropped, %d reconnects",
            self.url, self.frames_sent, self.frames_dropped, self.reconnects,
        )  # fmt: skip

    def metrics(self) -> dict[str, Any]:
        """The output's counters, JSON-ready (for the host's metrics report)."""
        with self._cond:
            return {
                "connected": self._connected,
                "frames_sent": self.frames_sent,
                "frames_dropped": self.frames_dropped,
                "reconnects": self.reconnects,
                "queued": self._queued_frames(),
                "outage_seconds": round(self.outage_seconds, 3),
                "last_outage_seconds": None if self.last_outage_s is None else round(self.last_outage_s, 3),
                "last_error": self.last_error,
            }

    @property
    def connected(self) -> bool:
        return self._connected

    # --- the queue and the feeder thread -----------------------------------------------------------------------

    def _enqueue(self, unit: _Unit) -> None:
        with self._cond:
            while len(self._queue) >= self._capacity:
                self.frames_dropped += self._queue.popleft().picture is not None
            self._queue.append(unit)
            self._cond.notify_all()

    def _queued_frames(self) -> int:
        return sum(unit.picture is not None for unit in self._queue)

    def _feed_sender(self) -> None:
        """Pipes queued units to the sender; blocks (without the GIL) while the sender is stuck in the network,
        so the queue overflows instead of the playout waiting."""
        process = self._process
        assert process is not None and process.stdin is not None
        stream = process.stdin
        try:
            while True:
                with self._cond:
                    while not self._queue and not self._closing:
                        self._cond.wait(0.1)
                    if not self._queue:
                        break
                    unit = self._queue.popleft()
                header = {"t": "unit", "index": unit.index, "audio_start": unit.audio_start,
                          "audio": len(unit.audio), "picture": unit.picture is not None,
                          "written_at": unit.written_at}
                payload = [unit.audio] if unit.picture is None else [unit.picture, unit.audio]
                try:
                    _send_message(stream, header, *payload)
                except (OSError, ValueError):  # the sender is gone: the status thread reports why
                    with self._cond:
                        self.frames_dropped += (unit.picture is not None) + self._queued_frames()
                        self._queue.clear()
                    return
                if unit.picture is not None:
                    with self._cond:
                        self._piped += 1
            _send_message(stream, {"t": "end"})
        except (OSError, ValueError):
            pass
        finally:
            with contextlib.suppress(OSError):
                stream.close()

    def _stop_sender(self) -> None:
        process, threads = self._process, self._threads
        self._process, self._threads = None, []
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if process is None:
            return
        try:
            process.wait(self.close_wait_s)
        except subprocess.TimeoutExpired:
            log.warning("rtmp output %s: the network did not let the last data go; stopping the sender", self.url)
            process.kill()
            process.wait()
        for thread in threads:
            thread.join(5)
        with self._cond:
            self._connected = False
            self.frames_dropped += self._queued_frames()
            self._queue.clear()
            # frames the sender had from the pipe but neither sent nor dropped before it was stopped
            self.frames_dropped += max(0, self._piped - self._accounted)
            self._piped = self._accounted = 0

    # --- the status thread -------------------------------------------------------------------------------------

    def _watch_sender(self) -> None:
        process = self._process
        assert process is not None and process.stdout is not None
        for line in process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            self._on_status(message)
        code = process.wait()
        with self._cond:
            self._connected = False
            if not self._finished and self._fatal is None and not self._closing:
                self._fatal = f"the sender process ended unexpectedly (exit code {code})"
                log.error("rtmp output %s: %s", self.url, self._fatal)
        self._first_answer.set()

    def _on_status(self, message: dict[str, Any]) -> None:
        kind = message.get("t")
        with self._cond:
            if kind == "sent":
                self.frames_sent += 1
                self._accounted += 1
            elif kind == "dropped":
                self.frames_dropped += int(message["count"])
                self._accounted += int(message["count"])
            elif kind == "connected":
                self._connected = True
                if message["reconnect"]:
                    self.reconnects += 1
                    self.outage_seconds += message["outage"]
                    self.last_outage_s = message["outage"]
            elif kind in ("connect_failed", "lost"):
                self.last_error = message["error"]
                self._connected = False
            elif kind == "error":
                self.last_error = message["error"]
            elif kind == "fatal":
                self._fatal = self.last_error = message["error"]
            elif kind == "finished":
                self._finished = True
        if kind in ("connected", "lost"):
            restored = kind == "connected" and message["reconnect"]
            if kind == "lost" or restored:
                self.on_state("reconnecting" if kind == "lost" else "restored", message.get("error", ""))
        if kind == "connected":
            self._first_answer.set()
            if message["reconnect"]:
                log.warning(
                    "rtmp output %s: reconnected after %.1f s (%d frames dropped so far)",
                    self.url, message["outage"], self.frames_dropped,
                )  # fmt: skip
            elif message["outage"] > 1.0:
                log.warning("rtmp output %s: connected after %.1f s", self.url, message["outage"])
        elif kind == "connect_failed":
            self._first_answer.set()
            log.debug("rtmp output %s: connecting failed: %s", self.url, message["error"])
        elif kind == "lost":
            log.warning(
                "rtmp output %s: connection lost (%s); reconnecting with backoff up to %.0f s",
                self.url, message["error"], self.max_backoff_s,
            )  # fmt: skip
        elif kind == "error":
            log.warning("rtmp output %s: %s", self.url, message["error"])
        elif kind == "fatal":
            self._first_answer.set()
            log.error("rtmp output %s: the sender failed: %s", self.url, message["error"])


def _to_i420(image: Image) -> np.ndarray:
    import cv2

    conversion = cv2.COLOR_RGB2YUV_I420 if image.shape[2] == 3 else cv2.COLOR_RGBA2YUV_I420
    return cv2.cvtColor(np.ascontiguousarray(image), conversion)


# --- registration -----------------------------------------------------------------------------------------------


def stream_key(variable: str) -> str | None:
    """The stream key from the environment variable ``variable`` (None when no variable is named)."""
    if not variable:
        return None
    key = os.environ.get(variable, "").strip()
    if not key:
        raise InputError(
            f"rtmp output: the stream key variable {variable} (key_env) is not set",
            hint=f"export {variable}=<your stream key>, or leave key_env empty when the URL needs no key",
        )
    return key


def _make_output(host: Host, settings: dict[str, Any]) -> RtmpOutput:
    url = settings["url"].strip()
    scheme, _, rest = url.partition("://")
    if scheme.lower() not in ("rtmp", "rtmps") or not rest.split("/", 1)[0]:
        raise InputError(
            f"rtmp output: url {url!r} is not an RTMP address",
            hint="write it as rtmp://HOST[:PORT]/APP, e.g. rtmp://127.0.0.1:1935/live; the stream key comes "
            "from the environment variable named by key_env",
        )
    return RtmpOutput(
        url,
        key=stream_key(settings["key_env"]),
        video_bitrate=settings["video_bitrate"],
        audio_bitrate=settings["audio_bitrate"],
        audio_rate=settings["audio_rate"],
        preset=settings["preset"],
        retry=settings["retry"],
        max_backoff_s=settings["max_backoff_s"],
        buffer_s=settings["buffer_s"],
        on_state=lambda state, detail: host.post_event(OutputState(host.next_pts, "rtmp", state, detail)),
    )


@hookimpl
def anchorcast_register_outputs(host: Host, register: Any) -> None:
    register(
        "rtmp",
        _make_output,
        settings={
            "url": Setting(str, help="the ingest address without the key, e.g. rtmp://127.0.0.1:1935/live"),
            "key_env": Setting(
                str,
                "",
                help="the environment variable holding the stream key, appended to url as its last path "
                "element (empty: the url is complete)",
            ),
            "video_bitrate": Setting(
                int, 1_500_000, help="H.264 bit rate in bits per second", minimum=100_000, maximum=50_000_000
            ),
            "audio_bitrate": Setting(
                int, 128_000, help="AAC bit rate in bits per second", minimum=8000, maximum=512_000
            ),
            "audio_rate": Setting(
                int, 44100, help="AAC sample rate (most ingests want 44100 or 48000)", choices=AAC_RATES
            ),
            "preset": Setting(
                str, "veryfast", help="x264 speed preset (ultrafast uses the least CPU)", choices=X264_PRESETS
            ),
            "retry": Setting(
                bool,
                True,
                help="keep retrying in the background when the server is unreachable at start (false: stop "
                "with an error); a connection lost later is always retried",
            ),
            "max_backoff_s": Setting(
                float, 8.0, help="longest wait between reconnection attempts, in seconds", minimum=0.5,
                maximum=300.0,
            ),
            "buffer_s": Setting(
                float,
                1.0,
                help="how much video may queue for a slow network before the oldest frames are dropped, in "
                "seconds",
                minimum=0.1,
                maximum=10.0,
            ),
        },
        summary="pushes the anchor live to an RTMP server (H.264 + AAC in FLV), reconnecting on failure",
    )
