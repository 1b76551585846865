"""The ``rtmp`` output's sender process: reads units (an I420 picture with its audio) from its stdin pipe,
encodes H.264 and AAC, muxes FLV and talks RTMP, reconnecting with backoff; reports what happened on stdout.

Run by :class:`~anchorcast_plugins.outputs.rtmp_output.RtmpOutput` as ``python -m
anchorcast_plugins.outputs.rtmp_sender`` (a process, not a thread: FFmpeg holds the GIL while it connects).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import signal
import socket
import struct
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import IO, Any

import numpy as np

from anchorcast.clock import MediaClock
from anchorcast.media import FloatAudio
from anchorcast_plugins.outputs.file_output import (
    AAC_MAX_BITS_PER_SAMPLE,
    AVCOL_RANGE_MPEG,
    AVCOL_SPC_SMPTE170M,
    GOP_SECONDS,
)

log = logging.getLogger(__name__)

FIRST_BACKOFF_S = 0.5


@dataclass(frozen=True, slots=True)
class _Unit:
    """One aired frame as I420 with the audio the resampler gave for it, starting at ``audio_start`` on the
    output's audio timeline. ``picture`` is None for the resampler's tail at the end. ``written_at`` is
    ``time.monotonic()`` at write (one clock for both processes): what was written before a connection came up
    is stale on it."""

    index: int
    picture: np.ndarray | None
    audio: FloatAudio
    audio_start: int
    written_at: float


# --- the pipe between the output and its sender -------------------------------------------------------------

_FRAME = struct.Struct("<II")  # header length, payload length


def _send_message(stream: IO[bytes], header: dict[str, Any], *payload: Any) -> None:
    encoded = json.dumps(header).encode()
    views = [memoryview(part).cast("B") for part in payload]
    stream.write(_FRAME.pack(len(encoded), sum(view.nbytes for view in views)))
    stream.write(encoded)
    for view in views:
        stream.write(view)
    stream.flush()


def _receive_message(stream: IO[bytes]) -> tuple[dict[str, Any], bytes] | None:
    """The next message, or None at the end of the pipe."""
    prefix = stream.read(_FRAME.size)
    if len(prefix) < _FRAME.size:
        return None
    header_size, payload_size = _FRAME.unpack(prefix)
    header = stream.read(header_size)
    payload = stream.read(payload_size)
    if len(header) < header_size or len(payload) < payload_size:
        return None
    return json.loads(header), payload


# --- the sender process -----------------------------------------------------------------------------------------


class _Connection:
    """One publishing session: an FLV container on the RTMP URL with fresh encoders. Timestamps count from the
    session's first frame (the origin), on the media clock."""

    def __init__(self, config: dict[str, Any]) -> None:
        import av

        fps = Fraction(*config["fps"])
        self.fps = fps
        self.audio_rate = config["audio_rate"]
        self.clock = MediaClock(fps, self.audio_rate)
        self.container = av.open(
            config["target"], "w", format="flv", container_options={"flvflags": "no_duration_filesize"}
        )
        try:
            bitrate = config["video_bitrate"]
            video = self.container.add_stream(
                "libx264",
                rate=fps,
                time_base=1 / fps,
                options={
                    "preset": config["preset"],
                    "tune": "zerolatency",
                    "sc_threshold": "0",  # keyframes only on the fixed interval, as ingests expect
                    "maxrate": str(bitrate),
                    "bufsize": str(2 * bitrate),
                },
            )
            video.width, video.height, video.pix_fmt = config["width"], config["height"], "yuv420p"
            video.codec_context.bit_rate = bitrate
            video.codec_context.gop_size = max(1, round(GOP_SECONDS * fps))
            video.codec_context.colorspace = AVCOL_SPC_SMPTE170M
            video.codec_context.color_range = AVCOL_RANGE_MPEG
            audio = self.container.add_stream("aac", rate=self.audio_rate)
            audio.codec_context.layout = "mono"
            audio.codec_context.time_base = Fraction(1, self.audio_rate)
            audio.codec_context.bit_rate = min(config["audio_bitrate"], AAC_MAX_BITS_PER_SAMPLE * self.audio_rate)
            self.video, self.audio = video, audio
            self.container.start_encoding()  # connects and publishes now
        except BaseException:
            self.abandon()
            raise
        self.origin_index: int | None = None
        self.origin_audio = 0
        self.audio_end = 0
        self._pending: list[FloatAudio] = []

    def send(self, unit: _Unit) -> None:
        import av

        if self.origin_index is None:
            self.origin_index = unit.index
            self.origin_audio = self.audio_end = self.clock.frame_start(unit.index)
        if unit.picture is not None:
            picture = av.VideoFrame.from_ndarray(unit.picture, format="yuv420p")
            picture.pts = unit.index - self.origin_index
            picture.time_base = 1 / self.fps
            self.container.mux(self.video.encode(picture))
        self._add_audio(unit.audio, unit.audio_start)
        self._encode_audio(final=False)

    def finish(self) -> None:
        """Flushes both encoders and ends the session cleanly."""
        try:
            if self.origin_index is not None:
                self._encode_audio(final=True)
                self.container.mux(self.audio.encode(None))
                self.container.mux(self.video.encode(None))
        finally:
            self.container.close()

    def abandon(self) -> None:
        """Closes a broken session without flushing; errors from the dead connection add nothing."""
        with contextlib.suppress(Exception):
            self.container.close()

    def _add_audio(self, samples: FloatAudio, start: int) -> None:
        """Keeps the audio track continuous on the clock: a gap (dropped units) becomes silence, audio from
        before the origin or already sent is dropped."""
        if start > self.audio_end:
            self._pending.append(np.zeros(start - self.audio_end, np.float32))
            self.audio_end = start
        skip = self.audio_end - start
        if skip < len(samples):
            self._pending.append(samples[skip:])
            self.audio_end += len(samples) - skip

    def _encode_audio(self, *, final: bool) -> None:
        import av

        if not self._pending:
            return
        frame_size = self.audio.codec_context.frame_size or 1024
        queued = np.concatenate(self._pending)
        position = self.audio_end - len(queued)
        whole = len(queued) if final else len(queued) - len(queued) % frame_size
        for offset in range(0, whole, frame_size):
            block = queued[offset : offset + frame_size]
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="fltp", layout="mono")
            frame.sample_rate = self.audio_rate
            frame.pts = position + offset - self.origin_audio
            frame.time_base = Fraction(1, self.audio_rate)
            self.container.mux(self.audio.encode(frame))
        rest = queued[whole:]
        self._pending = [rest] if len(rest) else []


_END = None


class _Sender:
    """The sender process's loop: connect (with backoff), send units, reconnect when the connection breaks.

    ``inbox`` yields units and finally ``_END``; ``report`` sends status messages to the output."""

    def __init__(self, config: dict[str, Any], inbox: queue.Queue[_Unit | None],
                 report: Callable[..., None]) -> None:
        self.config = config
        self.inbox = inbox
        self.report = report
        self.max_backoff_s = float(config["max_backoff_s"])

    def run(self) -> None:
        import av

        network_errors = (OSError, av.FFmpegError)
        connection: _Connection | None = None
        connected_at = 0.0
        lost_at = time.monotonic()
        ever_connected = False
        delay = FIRST_BACKOFF_S
        attempted = False
        while True:
            if connection is None:
                if attempted:
                    if not self._discard_for(delay):
                        self.report("finished")
                        return
                    delay = min(2 * delay, self.max_backoff_s)
                attempted = True
                try:
                    connection = _Connection(self.config)
                except network_errors as error:
                    self.report("connect_failed", error=_explain_connect_failure(self.config["url"],
                                                                                 self._reason(error)))
                    if not ever_connected and not self.config["retry"]:
                        self.report("finished")
                        return
                    continue
                connected_at = time.monotonic()
                self.report("connected", reconnect=ever_connected, outage=round(connected_at - lost_at, 3))
                ever_connected = True
                delay = FIRST_BACKOFF_S
                continue
            unit = self.inbox.get()
            if unit is _END:
                try:
                    connection.finish()
                except network_errors as error:
                    self.report("error", error=f"ending the stream failed: {self._reason(error)}")
                self.report("finished")
                return
            if unit.written_at < connected_at:  # written before this connection: sending it now is a burst
                self._dropped(unit)
                continue
            try:
                connection.send(unit)
            except network_errors as error:
                connection.abandon()
                connection = None
                lost_at = time.monotonic()
                self._dropped(unit)
                self.report("lost", error=self._reason(error))
                continue
            if unit.picture is not None:
                self.report("sent")

    def _discard_for(self, seconds: float) -> bool:
        """Waits ``seconds`` (backing off), dropping what arrives meanwhile; False once the stream has ended."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                unit = self.inbox.get(timeout=left)
            except queue.Empty:
                break
            if unit is _END:
                return False
            self._dropped(unit)
        return True

    def _dropped(self, unit: _Unit) -> None:
        if unit.picture is not None:
            self.report("dropped", count=1)

    def _reason(self, error: BaseException) -> str:
        """The error in words, without the stream key (FFmpeg errors carry the full URL)."""
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        reason = reason.replace(self.config["target"], self.config["url"])
        return reason[:1].lower() + reason[1:]


def _explain_connect_failure(url: str, reason: str) -> str:
    """FFmpeg says "input/output error" for most failures: find out whether the name, the port or the RTMP
    session failed (this runs in the sender process, where waiting on the network harms nothing)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme.lower() == "rtmps" else 1935)
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, ValueError, UnicodeError):
        return f"cannot resolve the host name {host!r}"
    try:
        with socket.create_connection(addresses[0][4][:2], timeout=5):
            pass
    except OSError as error:
        return (error.strerror or str(error) or reason).lower()
    return (
        f"the server took the connection but refused the stream ({reason}): check the application name in "
        "the URL and the stream key, and that nothing else publishes with that key"
    )


def _read_units(stream: IO[bytes], config: dict[str, Any], inbox: queue.Queue[_Unit | None]) -> None:
    """Turns the pipe's messages into units; a small ``inbox`` pushes back on the output when the network stalls."""
    picture_size = config["width"] * config["height"] * 3 // 2
    shape = (config["height"] * 3 // 2, config["width"])
    while (message := _receive_message(stream)) is not None:
        header, payload = message
        if header["t"] != "unit":
            break
        split = picture_size if header["picture"] else 0
        picture = np.frombuffer(payload, np.uint8, split).reshape(shape) if split else None
        audio = np.frombuffer(payload, np.float32, header["audio"], offset=split)
        inbox.put(_Unit(header["index"], picture, audio, header["audio_start"], header["written_at"]))
    inbox.put(_END)


def _sender_main() -> None:
    """The sender process: a config message, then units on stdin; status as JSON lines on stdout."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the output ends the stream; a Ctrl-C must not cut it
    status = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else printed (by FFmpeg or Python) must not corrupt the status lines
    lock = threading.Lock()

    def report(kind: str, **fields: Any) -> None:
        with lock, contextlib.suppress(OSError):  # the output is gone: the end of stdin ends this process too
            status.write(json.dumps({"t": kind, **fields}) + "\n")

    source = sys.stdin.buffer
    first = _receive_message(source)
    if first is None or first[0].get("t") != "config":
        os._exit(2)
    config = first[0]
    inbox: queue.Queue[_Unit | None] = queue.Queue(maxsize=2)
    threading.Thread(target=_read_units, args=(source, config, inbox), daemon=True).start()
    code = 0
    try:
        _Sender(config, inbox, report).run()
    except BaseException as error:  # a bug, not the network: the output reports it and the host drops it
        report("fatal", error=f"{type(error).__name__}: {error}".replace(config["target"], config["url"]))
        traceback.print_exc()
        code = 1
    with contextlib.suppress(OSError):
        status.flush()
        sys.stderr.flush()
    os._exit(code)  # at once: the reader thread may sit in a read of stdin, which blocks interpreter shutdown


if __name__ == "__main__":
    _sender_main()
