"""Reading an MP4 back with PyAV, for tests that check real output files."""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np

AAC_FRAME = 1024
"""Samples per AAC frame. The file output's fragmented MP4 trims the encoder's priming but not the last frame's
padding, so its audio may run up to one AAC frame (silence) past the video."""


def audio_tail_s(sample_rate: int) -> float:
    """How far a file's audio may run past its video: one AAC frame."""
    return AAC_FRAME / sample_rate


@dataclass
class Decoded:
    frames: list[np.ndarray]  # RGB
    fps: float
    audio: np.ndarray  # mono float32
    sample_rate: int

    @property
    def video_seconds(self) -> float:
        return len(self.frames) / self.fps

    @property
    def audio_seconds(self) -> float:
        return len(self.audio) / self.sample_rate

    def frame_audio_rms(self) -> np.ndarray:
        """RMS of the audio under each video frame."""
        per_frame = self.sample_rate / self.fps
        return np.array([
            float(np.sqrt(np.mean(np.square(self.audio[int(i * per_frame):int((i + 1) * per_frame)]) + 1e-12)))
            for i in range(len(self.frames))
        ])


def decode(path: Path, keep_frames: bool = True, scale: int = 1) -> Decoded:
    frames: list[np.ndarray] = []
    chunks: list[np.ndarray] = []
    with av.open(str(path)) as container:
        video = container.streams.video[0]
        audio = container.streams.audio[0]
        fps = float(video.average_rate or video.base_rate)
        rate = audio.rate
        for frame in container.decode(video=0):
            if keep_frames:
                image = frame.to_ndarray(format="rgb24")
                frames.append(image[::scale, ::scale] if scale > 1 else image)
            else:
                frames.append(np.zeros((1, 1, 3), np.uint8))
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        declared = stream.duration * stream.time_base if stream.duration else None
        for frame in container.decode(audio=0):
            data = frame.to_ndarray()
            chunks.append(data.mean(axis=0) if data.ndim == 2 and data.shape[0] > 1 else data.reshape(-1))
    audio = np.concatenate(chunks).astype(np.float32)
    if declared is not None:  # AAC decodes whole 1024-sample frames: the container says where the audio ends
        audio = audio[: round(float(declared) * rate)]
    return Decoded(frames, fps, audio, rate)


def write_video(path: Path, frames: list[np.ndarray], fps: int, audio: np.ndarray | None,
                 audio_rate: int = 22050) -> None:
    """An H.264 video of RGB ``frames`` at ``fps`` with 16 kHz ``audio`` stored as PCM at ``audio_rate``."""
    import soxr

    with av.open(str(path), "w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = frames[0].shape[1], frames[0].shape[0]
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "18", "preset": "ultrafast"}
        sound = None
        if audio is not None:
            sound = container.add_stream("pcm_s16le", rate=audio_rate, layout="mono")
        for image in frames:
            for packet in video.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in video.encode():
            container.mux(packet)
        if sound is not None and audio is not None:
            resampled = soxr.resample(audio, 16000, audio_rate)
            pcm = (np.clip(resampled, -1, 1) * 32767).astype(np.int16)
            for start in range(0, len(pcm), 1024):
                frame = av.AudioFrame.from_ndarray(pcm[None, start : start + 1024], format="s16", layout="mono")
                frame.sample_rate = audio_rate
                frame.pts = start
                frame.time_base = Fraction(1, audio_rate)
                for packet in sound.encode(frame):
                    container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)


def lag_of_best_correlation(motion: np.ndarray, rms: np.ndarray, lags: range) -> tuple[int, float]:
    """The lag (in frames; positive: the picture late) at which per-frame mouth motion correlates best with the
    sound's level, and the correlation at lag 0."""
    scores = {}
    for lag in lags:
        a = motion[max(0, lag): len(motion) + min(0, lag)]
        b = rms[max(0, -lag): len(rms) - max(0, lag)]
        scores[lag] = float(np.corrcoef(a, b)[0, 1])
    best = max(scores, key=lambda k: scores[k])
    return best, scores[0]
