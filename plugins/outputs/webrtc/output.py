"""The ``webrtc`` output of a studio-server session: its audio and video to any number of WHEP viewers.

Only while someone watches: the playout thread encodes each frame's sound itself (Opus, :class:`~.encoding.
AudioEncoder`, cheap) and hands over a reference to its picture, which a thread of its own encodes once per
picture layout watched (:class:`~.encoding.VideoEncoder`). The packets go to every viewer on the server's event
loop, video when encoded and each 20 ms Opus packet at the moment it plays, so both tracks leave on the session's
clock and aiortc's RTCP sender reports (which a browser uses for lip sync) map both to the same wall clock.

What a viewer costs: nothing for encoding (one VP8 encoder per picture layout watched and one Opus encoder per
session, however many watch); per viewer, RTP packetisation, SRTP encryption and the network: about 1.5 Mbit/s at
the default bit rate. The overlay's layout (alpha packed beside the colour) is a second VP8 stream of twice the
width, encoded only while an overlay watches.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import av

from anchorcast.media import AudioChunk, Image, StreamFormat, VideoFrame
from anchorcast_plugins.outputs.webrtc.encoding import AudioEncoder, Layout, VideoEncoder
from anchorcast_plugins.outputs.webrtc.viewers import Viewer

log = logging.getLogger(__name__)

DEFAULT_BITRATE = 1_500_000
DEFAULT_MAX_VIEWERS = 10
ENCODE_BACKLOG = 6
"""Frames the encoder may fall behind before the oldest is dropped (and a keyframe forced)."""


class TooManyViewers(Exception):
    """The session already has its maximum number of viewers."""


class WebRtcOutput:
    """Serves the frames on air to WHEP viewers (see the module docstring)."""

    live = False

    def __init__(self, ice_servers: list[str] | None = None, bitrate: int = DEFAULT_BITRATE,
                 max_viewers: int = DEFAULT_MAX_VIEWERS) -> None:
        self.ice_servers = list(ice_servers or [])
        self.bitrate = bitrate
        self.max_viewers = max_viewers
        self.viewers: dict[str, Viewer] = {}
        self.encoded_frames = 0
        self.dropped_frames = 0
        self.audio_filled_s = 0.0
        self._audio_late: collections.deque[float] = collections.deque(maxlen=500)  # seconds, recent packets
        self._fmt: StreamFormat | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.matte_source: Callable[[], Image | None] = lambda: None
        """Where the overlay's alpha comes from: the session sets it to its engine's ``matte``."""
        self._frames: queue.Queue[tuple[Image, int] | None] = queue.Queue(ENCODE_BACKLOG)
        self._audio_encoder: AudioEncoder | None = None  # the playout thread's
        self._keyframe = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False

    # --- the Output protocol (the playout thread) -------------------------------------------------------

    def open(self, fmt: StreamFormat) -> None:
        self._fmt = fmt
        self._thread = threading.Thread(target=self._encode_loop, name="anchorcast-webrtc", daemon=True)
        self._thread.start()

    def write(self, frame: VideoFrame, audio: AudioChunk) -> None:
        if not self.viewers or self._closed:
            self._audio_encoder = None  # the next first viewer starts a fresh stream
            return
        self._send_sound_of(audio, time.monotonic())
        item = (frame.image, frame.index)
        try:
            self._frames.put_nowait(item)
        except queue.Full:
            try:
                self._frames.get_nowait()
                self.dropped_frames += 1
            except queue.Empty:
                pass
            self._keyframe.set()
            self._frames.put_nowait(item)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._frames.put_nowait(None)
        except queue.Full:
            self._frames.get_nowait()
            self._frames.put_nowait(None)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        loop = self._loop
        if loop is None or loop.is_closed() or not self.viewers:
            return
        hang_up = asyncio.run_coroutine_threadsafe(self._close_viewers(), loop)
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is not loop:
            try:
                hang_up.result(timeout=5)
            except (concurrent.futures.TimeoutError, RuntimeError):
                log.warning("webrtc: viewers did not hang up within 5 s")

    # --- viewers (the server's event loop) ------------------------------------------------------------------

    async def add_viewer(self, offer_sdp: str, layout: Layout | None = None) -> tuple[Viewer, str]:
        """A new viewer from its SDP offer, watching ``layout`` (default: the plain frame); returns it with the SDP
        answer. :class:`TooManyViewers` at the limit, ValueError for an offer that cannot be answered."""
        if self._closed:
            raise ValueError("the session is ending")
        if len(self.viewers) >= self.max_viewers:
            raise TooManyViewers(f"this session already has {self.max_viewers} viewers (the most it takes)")
        self._loop = asyncio.get_running_loop()
        viewer = Viewer(self.ice_servers, self._forget, self._keyframe.set, layout or Layout())
        try:
            answer = await viewer.answer(offer_sdp)
        except Exception:
            await viewer.close()
            raise
        self.viewers[viewer.id] = viewer
        self._keyframe.set()
        return viewer, answer

    async def remove_viewer(self, viewer_id: str) -> bool:
        viewer = self.viewers.get(viewer_id)
        if viewer is None:
            return False
        await viewer.close()
        return True

    def _forget(self, viewer: Viewer) -> None:
        self.viewers.pop(viewer.id, None)

    async def _close_viewers(self) -> None:
        await asyncio.gather(*(viewer.close() for viewer in list(self.viewers.values())), return_exceptions=True)

    def describe(self) -> dict[str, Any]:
        return {"viewers": [viewer.describe() for viewer in list(self.viewers.values())],
                "encoded_frames": self.encoded_frames, "dropped_frames": self.dropped_frames,
                "audio_filled_s": round(self.audio_filled_s, 3), **self._lateness()}

    def _lateness(self) -> dict[str, float | None]:
        """How late the recent audio packets left after the moment they play (ms): the event loop's jitter,
        which a browser's jitter buffer (and the picture synced to it) grows to absorb."""
        late = sorted(self._audio_late)
        if not late:
            return {"audio_send_late_p95_ms": None, "audio_send_late_max_ms": None}
        return {"audio_send_late_p95_ms": round(1000 * late[int(0.95 * (len(late) - 1))], 1),
                "audio_send_late_max_ms": round(1000 * late[-1], 1)}

    # --- encoding (its own thread) ----------------------------------------------------------------------------

    def _encode_loop(self) -> None:
        assert self._fmt is not None
        encoders: dict[Layout, VideoEncoder] = {}
        while True:
            item = self._frames.get()
            if item is None:
                return
            image, index = item
            layouts = {viewer.layout for viewer in list(self.viewers.values())}
            for gone in set(encoders) - layouts:
                del encoders[gone]  # the next viewer of that layout starts a fresh stream
            if not layouts:
                continue
            keyframe = self._keyframe.is_set()
            self._keyframe.clear()
            matte = self.matte_source() if any(layout.alpha for layout in layouts) else None
            video: dict[Layout, tuple[list[av.Packet], bool]] = {}
            try:
                for layout in layouts:
                    picture = layout.picture(image, matte)
                    encoder = encoders.get(layout)
                    if encoder is None or (encoder.width, encoder.height) != (picture.shape[1], picture.shape[0]):
                        encoder = encoders[layout] = VideoEncoder(self._fmt, self.bitrate, picture.shape[1],
                                                                  picture.shape[0])
                    video[layout] = encoder.encode(picture, index, keyframe)
            except Exception:
                log.exception("webrtc: encoding frame %d failed; starting new streams", index)
                encoders = {}
                continue
            self.encoded_frames += 1
            if not self._post(self._send_video, video):
                return

    def _send_sound_of(self, audio: AudioChunk, air: float) -> None:
        """Encodes the frame's sound here, on the playout thread (Opus is cheap: about 0.2 ms a frame), and posts
        it at once: its packets then leave as they play, never queued behind the pictures' encoding, which takes
        a while when the CPU is busy (a browser grows its jitter buffer to match, and the picture synced to it)."""
        assert self._fmt is not None
        try:
            encoder = self._audio_encoder = self._audio_encoder or AudioEncoder(self._fmt)
            filled = encoder.filled_s
            sound = encoder.encode(audio)
            self.audio_filled_s += encoder.filled_s - filled
        except Exception:
            log.exception("webrtc: encoding the sound at sample %d failed; starting a new stream", audio.start)
            self._audio_encoder = None
            return
        if sound:
            self._post(self._send_sound, sound, air)

    def _post(self, callback: Callable[..., None], *args: Any) -> bool:
        """Runs ``callback(*args)`` on the server's event loop; False once that loop has closed."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return True
        try:
            loop.call_soon_threadsafe(callback, *args)
        except RuntimeError:  # the loop closed meanwhile
            return False
        return True

    def _send_video(self, video: dict[Layout, tuple[list[av.Packet], bool]]) -> None:
        viewers = list(self.viewers.values())
        for layout, (packets, keyframe) in video.items():
            watching = [viewer for viewer in viewers if viewer.layout == layout]
            for packet in packets:
                for viewer in watching:
                    viewer.offer("video", packet, keyframe)

    def _send_sound(self, audio: list[tuple[float, av.Packet]], air: float) -> None:
        assert self._loop is not None
        now = self._loop.time()
        for offset, packet in audio:
            when = air + offset
            if when <= now + 0.002:
                self._send_audio(packet, when)
            else:
                self._loop.call_at(when, self._send_audio, packet, when)

    def _send_audio(self, packet: Any, when: float) -> None:
        assert self._loop is not None
        self._audio_late.append(self._loop.time() - when)
        for viewer in list(self.viewers.values()):
            viewer.offer("audio", packet)
