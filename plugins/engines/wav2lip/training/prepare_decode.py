"""Decoding for ``anchorcast train prepare``: a video's sound as 16 kHz mono aligned on its first frame, its
frames at 25 fps, and the video stream's bit rate per pixel per frame (see :mod:`.prepare_quality`)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from anchorcast.media import Image
from anchorcast_plugins.engines.wav2lip.training.dataset import FPS, SAMPLE_RATE


class Dropped(Exception):
    """A whole video is unusable, for the reason given."""


@dataclass(frozen=True)
class VideoSound:
    """A video's sound (16 kHz mono float32, sample 0 at the first video frame), frame size and the video
    stream's bits per pixel per frame (None when the stream has no packets with sizes)."""

    audio: npt.NDArray[np.float32]
    width: int
    height: int
    bits_per_pixel: float | None


def open_video(source: Path) -> Any:
    import av

    try:
        return av.open(str(source))
    except (OSError, av.FFmpegError, UnicodeDecodeError, ValueError) as error:
        raise Dropped(f"unreadable: not a video PyAV can open ({error})") from None


def read_sound(source: Path) -> VideoSound:
    """Demuxes the file once: decodes the audio stream and sums the video stream's packet sizes."""
    import av
    import soxr

    container = open_video(source)
    with container:
        if not container.streams.video:
            raise Dropped("no video stream")
        if not container.streams.audio:
            raise Dropped("no audio stream")
        video = container.streams.video[0]
        width, height = video.codec_context.width, video.codec_context.height
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate or stream.rate
        if not rate:
            raise Dropped("the audio stream has no sample rate")
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        chunks: list[npt.NDArray[np.float32]] = []
        first_time: float | None = None
        video_bytes = 0
        video_times: list[float] = []
        try:
            for packet in container.demux(video, stream):
                if packet.stream.type == "video":
                    video_bytes += packet.size
                    if packet.pts is not None:
                        video_times.append(float(packet.pts * packet.time_base))
                    continue
                for frame in packet.decode():
                    if first_time is None and frame.time is not None:
                        first_time = float(frame.time)
                    for converted in resampler.resample(frame):
                        chunks.append(converted.to_ndarray().reshape(-1))
            for converted in resampler.resample(None):
                chunks.append(converted.to_ndarray().reshape(-1))
        except av.FFmpegError as error:
            raise Dropped(f"unreadable audio: {error}") from None
        video_start = float(video.start_time * video.time_base) if video.start_time is not None else 0.0
        native = float(video.average_rate or video.guessed_rate or FPS)
    if not chunks:
        raise Dropped("the audio stream holds no sound")
    bits_per_pixel = None
    if video_bytes and video_times and width and height:
        seconds = max(video_times) - min(video_times) + 1 / native
        bits_per_pixel = video_bytes * 8 / (seconds * native * width * height)
    samples = np.concatenate(chunks).astype(np.float32)
    audio = soxr.resample(samples, rate, SAMPLE_RATE).astype(np.float32) if rate != SAMPLE_RATE else samples
    offset = round(((first_time or 0.0) - video_start) * SAMPLE_RATE)
    if offset > 0:
        audio = np.concatenate([np.zeros(offset, np.float32), audio])
    elif offset < 0:
        audio = audio[-offset:]
    return VideoSound(np.ascontiguousarray(audio), int(width), int(height), bits_per_pixel)


def frames_25fps(source: Path) -> Iterator[Image]:
    """The RGB frames at 25 fps: output frame ``k`` shows the latest source frame at or before ``k / 25`` s."""
    import av

    container = open_video(source)
    fps = Fraction(FPS)
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        native = stream.average_rate or stream.guessed_rate or Fraction(FPS)
        first: float | None = None
        held: tuple[float, Image] | None = None
        emitted = 0
        try:
            for number, frame in enumerate(container.decode(stream)):
                if first is None:
                    first = frame.time if frame.time is not None else 0.0
                at = frame.time - first if frame.time is not None else number / float(native)
                image = frame.to_ndarray(format="rgb24")
                while held is not None and emitted / fps < at - 1e-9:
                    yield held[1]
                    emitted += 1
                held = (at, image)
            if held is not None:  # the last frame lasts one source frame
                while emitted / fps < held[0] + 1 / float(native) - 1e-9:
                    yield held[1]
                    emitted += 1
        except av.FFmpegError as error:
            raise Dropped(f"unreadable video: {error}") from None
