"""The session's preview: JPEG frames for ``GET /v1/sessions/{id}/preview.mjpeg`` (any browser or VLC shows it).

An output like any other, added to every session. The playout thread only hands over a reference to the frame
(at most ``fps`` a second, and only while someone watches); a thread of its own scales and encodes it, so the
preview can never make a frame late.
"""

from __future__ import annotations

import threading

from anchorcast.media import AudioChunk, Image, StreamFormat, VideoFrame
from anchorcast.server.fanout import Fanout

BOUNDARY = "anchorcastframe"
MAX_WIDTH = 640
JPEG_QUALITY = 80


class PreviewOutput:
    """Encodes the frames on air as JPEG for the viewers subscribed to :attr:`frames`."""

    live = False

    def __init__(self, fps: float = 10.0) -> None:
        self.interval = 1.0 / fps if fps > 0 else 0.0
        self.frames: Fanout[bytes] = Fanout(maxsize=2, drop_oldest=True)
        self._pending: Image | None = None
        self._next_pts = 0.0
        self._cond = threading.Condition()
        self._closed = False
        self._thread: threading.Thread | None = None
        self.encoded = 0

    def open(self, fmt: StreamFormat) -> None:
        self._closed = False
        self._thread = threading.Thread(target=self._encode_loop, name="anchorcast-preview", daemon=True)
        self._thread.start()

    def write(self, frame: VideoFrame, audio: AudioChunk) -> None:
        if frame.pts + 1e-9 < self._next_pts or not self.frames.subscribers:
            return
        self._next_pts = frame.pts + self.interval
        with self._cond:
            self._pending = frame.image
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)
        self.frames.close()

    def _encode_loop(self) -> None:
        import cv2

        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                image, self._pending = self._pending, None
            height, width = image.shape[:2]
            if width > MAX_WIDTH:
                image = cv2.resize(image, (MAX_WIDTH, round(height * MAX_WIDTH / width)), interpolation=cv2.INTER_AREA)
            bgr = cv2.cvtColor(image[..., :3], cv2.COLOR_RGB2BGR)
            ok, jpeg = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if ok:
                self.encoded += 1
                self.frames.publish(jpeg.tobytes())


def multipart_part(jpeg: bytes) -> bytes:
    """One part of a ``multipart/x-mixed-replace`` stream."""
    head = f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode()
    return head + jpeg + b"\r\n"
