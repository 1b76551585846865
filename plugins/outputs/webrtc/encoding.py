"""Encodes a session's frames and audio once, for every WebRTC viewer: VP8 video and Opus audio as PyAV packets.

One VP8 encoder per picture :class:`Layout` someone watches (the console's plain frame, the overlay's frame with
its alpha packed beside it) and one Opus encoder for all of them.

aiortc sends a pre-encoded :class:`av.Packet` as it is (``Encoder.pack``) instead of encoding per viewer, so N
viewers cost one encoder plus N packetisers and SRTP. VP8 because every WebRTC browser must decode it (OBS's
Browser Source included, which has no H.264 in many builds). The settings follow aiortc's own VP8 encoder
(realtime, constant bit rate, no lag); a keyframe is forced when a viewer joins or asks for one (PLI), and one
comes every :data:`KEYFRAME_INTERVAL_S` anyway, so a lost packet heals.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from anchorcast.media import AudioChunk, Image, StreamFormat

VIDEO_TIME_BASE = Fraction(1, 90000)
"""RTP's video clock."""
OPUS_RATE = 48000
OPUS_FRAME_S = 0.02
KEYFRAME_INTERVAL_S = 2.0


KEY_NEAR, KEY_FAR = 40.0, 90.0
"""A pixel this close to the key colour (RGB distance) is transparent, this far opaque; soft in between."""


@dataclass(frozen=True)
class Layout:
    """What a viewer's picture holds: the frame as it is, or (``alpha``) the frame with its alpha beside it, so a
    page can cut the anchor out (VP8 has no alpha channel). ``key``: also key out this colour."""

    alpha: bool = False
    key: tuple[int, int, int] | None = None

    @property
    def name(self) -> str:
        if not self.alpha:
            return "plain"
        return "packed-alpha" if self.key is None else "packed-alpha-key-{:02x}{:02x}{:02x}".format(*self.key)

    def picture(self, image: Image, matte: Image | None) -> Image:
        """The picture to encode: ``image`` itself, or colour left and alpha (grey) right, twice as wide."""
        if not self.alpha:
            return image
        height, width = image.shape[:2]
        alpha = matte if matte is not None and matte.shape == (height, width) else None
        if self.key is not None:
            keyed = key_alpha(image, self.key)
            alpha = keyed if alpha is None else np.minimum(alpha, keyed)
        packed = np.empty((height, 2 * width, 3), np.uint8)
        packed[:, :width] = image[..., :3]
        packed[:, width:] = 255 if alpha is None else alpha[..., None]
        return packed


def key_alpha(image: Image, key: tuple[int, int, int]) -> Image:
    """(H, W) uint8 alpha: 0 where ``image`` is the key colour, 255 from :data:`KEY_FAR` away from it."""
    distance = np.linalg.norm(image[..., :3].astype(np.float32) - np.asarray(key, np.float32), axis=2)
    return (np.clip((distance - KEY_NEAR) / (KEY_FAR - KEY_NEAR), 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


class VideoEncoder:
    """VP8 for one picture size. Not thread-safe: one thread calls :meth:`encode`."""

    def __init__(self, fmt: StreamFormat, bitrate: int, width: int, height: int) -> None:
        self.fmt = fmt
        self.width = width
        self.height = height
        self.codec = _vp8(width, height, fmt, bitrate)
        self._keyframe_every = max(1, round(KEYFRAME_INTERVAL_S * float(fmt.fps)))
        self._since_keyframe = 0
        self.frames = 0

    def encode(self, picture: Image, index: int, keyframe: bool = False) -> tuple[list[av.Packet], bool]:
        """The packets of the picture shown at ``index / fps``, and whether they make a keyframe."""
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(picture[..., :3]), format="rgb24")
        frame = frame.reformat(format="yuv420p")
        frame.pts = round(index * VIDEO_TIME_BASE.denominator / self.fmt.fps)
        frame.time_base = VIDEO_TIME_BASE
        keyframe = keyframe or self._since_keyframe + 1 >= self._keyframe_every or self.frames == 0
        if keyframe:
            frame.pict_type = av.video.frame.PictureType.I
        packets = list(self.codec.encode(frame))
        for packet in packets:
            packet.time_base = VIDEO_TIME_BASE
        got_key = any(packet.is_keyframe for packet in packets)
        self._since_keyframe = 0 if got_key else self._since_keyframe + 1
        self.frames += 1
        return packets, got_key


MAX_GAP_S = 5.0
"""A longer gap in the audio (a stalled session) starts a new Opus stream instead of being filled."""


class AudioEncoder:
    """Opus at 48 kHz mono, once for every viewer of a session whatever its picture layout.

    The Opus stream's timestamps count samples fed, so the audio it carries must be contiguous: a gap (a frame
    dropped before encoding, a frame without audio) is filled with silence, or the audio would run ahead of the
    video by the gap and every browser, which syncs the video to the audio, would hold the picture back that much
    longer from then on."""

    def __init__(self, fmt: StreamFormat) -> None:
        self.fmt = fmt
        self.filled_s = 0.0
        """Seconds of silence filled into gaps so far."""
        self._next: int | None = None  # the next sample expected, in the chunks' sample rate
        self._start()

    def _start(self) -> None:
        self.codec = _opus()
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=OPUS_RATE)
        self._aligned = False
        self._next = None

    def encode(self, chunk: AudioChunk) -> list[tuple[float, av.Packet]]:
        """The Opus packets of the audio under a frame, each with its offset from the frame's air time
        (seconds): the frame's own packets leave one every 20 ms as they play; those of a filled gap at once."""
        samples = chunk.samples
        if len(samples) == 0:
            return []
        rate, start = chunk.sample_rate, chunk.start
        if self._next is not None and start != self._next:
            gap = start - self._next
            if gap < 0:  # overlaps what was sent: send only the rest
                samples = samples[-gap:]
                start = self._next
            elif gap > MAX_GAP_S * rate:
                self._start()
            else:
                samples = np.concatenate([np.zeros(gap, np.float32), samples])
                start = self._next
                self.filled_s += gap / rate
        if len(samples) == 0:
            return []
        self._next = start + len(samples)
        pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16)[None, :]
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        encoded = [packet for resampled in self._resampler.resample(frame) for packet in self._encode(resampled)]
        own = round(len(chunk.samples) / rate / OPUS_FRAME_S)  # this frame's share; the rest fill a gap
        packets = []
        for k, packet in enumerate(encoded):
            packet.time_base = Fraction(1, OPUS_RATE)
            packets.append((max(0, k - (len(encoded) - own)) * OPUS_FRAME_S, packet))
        return packets

    def _encode(self, frame: av.AudioFrame) -> list[av.Packet]:
        """Opus packets for ``frame``. The resampler's filter delay leaves the first output a few samples short
        of a whole frame's audio; without the silence padded in front here, the encoder would hold the last 17.5
        ms of every frame's audio until the next frame (two packets sent at once every 40 ms: 20 ms of jitter,
        which the browser's jitter buffer, and the video synced to it, pay for)."""
        if not self._aligned:
            self._aligned = True
            pad = -frame.samples % round(OPUS_RATE * OPUS_FRAME_S)
            if pad:
                silence = av.AudioFrame.from_ndarray(np.zeros((1, pad), np.int16), format="s16", layout="mono")
                silence.sample_rate = OPUS_RATE
                silence.time_base = frame.time_base
                silence.pts = None if frame.pts is None else frame.pts - round(pad / OPUS_RATE / frame.time_base)
                first = list(self.codec.encode(silence))
                return first + list(self.codec.encode(frame))
        return list(self.codec.encode(frame))


def _vp8(width: int, height: int, fmt: StreamFormat, bitrate: int) -> av.VideoCodecContext:
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height = width - width % 2, height - height % 2
    codec.pix_fmt = "yuv420p"
    codec.time_base = VIDEO_TIME_BASE
    codec.framerate = Fraction(fmt.fps)
    codec.bit_rate = bitrate
    codec.gop_size = 3000  # keyframes are forced (joins, PLI, every KEYFRAME_INTERVAL_S), not scheduled by libvpx
    codec.qmin, codec.qmax = 2, 56
    codec.thread_count = 2 if width * height >= 640 * 360 else 1
    codec.options = {
        "bufsize": str(bitrate), "minrate": str(bitrate), "maxrate": str(bitrate),
        "cpu-used": "8", "deadline": "realtime", "lag-in-frames": "0", "static-thresh": "1",
        "undershoot-pct": "100", "overshoot-pct": "15", "partitions": "0", "error-resilient": "1",
    }  # fmt: skip
    return codec


def _opus() -> av.AudioCodecContext:
    codec = av.CodecContext.create("libopus", "w")
    codec.sample_rate = OPUS_RATE
    codec.layout = "mono"
    codec.format = "s16"
    codec.bit_rate = 64000
    codec.time_base = Fraction(1, OPUS_RATE)
    codec.options = {"application": "lowdelay", "frame_duration": str(round(OPUS_FRAME_S * 1000))}
    return codec
