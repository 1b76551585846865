"""The ``file`` output: the anchor as an H.264 + AAC video file (MP4 unless the name ends in .mkv or .mov).

Video timestamps are the frame indices from the host's clock and audio timestamps its sample positions, so the
file keeps the timeline's A/V sync exactly. MP4 and MOV are written fragmented (a fragment a second, each flushed
to the file as it is complete), so the file plays at every moment: after a full disk, a kill -9 or a power cut it
plays up to its last complete second. :meth:`FileOutput.close` (which the host calls on every exit, Ctrl-C
included) flushes both encoders and the last fragment. A write that fails (a full disk, a folder removed or made
read-only) is reported as what it is, with how much of the file plays (measured by reading it back).
"""

from __future__ import annotations

import contextlib
import errno
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import AnchorcastError, InputError
from anchorcast.media import AudioChunk, FloatAudio, StreamFormat, VideoFrame

if TYPE_CHECKING:
    import av.container

    from anchorcast.host import Host

X264_PRESETS = (
    "ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow", "placebo",
)  # fmt: skip

CONTAINER_FORMATS = {".mkv": "matroska", ".mov": "mov"}
"""Container by file suffix; anything else is MP4."""

GOP_SECONDS = 2.0
FRAGMENT_S = 1.0
"""MP4/MOV fragment length: what a crash can lose at most (besides the frames not yet encoded)."""
FRAGMENTED = {
    "movflags": "+frag_keyframe+delay_moov+default_base_moof", "frag_duration": str(round(FRAGMENT_S * 1e6)),
    "flush_packets": "1",
}  # fmt: skip

WRITE_FAILURES = {
    errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "the disk became read-only",
    errno.ENOENT: "the folder was removed", errno.ESTALE: "the folder was removed",
    errno.EACCES: "permission to write was taken away", errno.EPERM: "permission to write was taken away",
    errno.EIO: "an input/output error (a failing disk or a lost network share)",
}  # fmt: skip

AAC_MAX_BITS_PER_SAMPLE = 6
"""The AAC encoder's ceiling per channel (6144 bits per 1024-sample frame); above it ffmpeg clamps and warns."""

# AVColorSpace / AVColorRange values: OpenCV's RGB -> I420 conversion is BT.601 with limited (TV) range, and
# players assume BT.709 for HD sizes unless the stream says otherwise.
AVCOL_SPC_SMPTE170M = 6
AVCOL_RANGE_MPEG = 1


class FileOutput:
    """Encodes frames and their audio into a video file.

    ``last_write_ms`` is the time the last :meth:`write` took (colour conversion and encoding).
    """

    live = False

    def __init__(
        self, path: Path, *, preset: str = "veryfast", crf: int = 20, audio_bitrate: int = 128000
    ) -> None:
        self.path = Path(path)
        self.preset = preset
        self.crf = crf
        self.audio_bitrate = audio_bitrate
        self.last_write_ms = 0.0
        self.frames_written = 0
        self._container: av.container.OutputContainer | None = None
        self._video: Any = None
        self._audio: Any = None
        self._last_index: int | None = None
        self._pending_audio: list[FloatAudio] = []
        self._pending_samples = 0
        self._audio_end: int | None = None
        """Timeline position just past the last sample received (buffered or encoded)."""
        self.failure: str | None = None
        """Why writing stopped (a full disk, ...), once it has: the file is then closed as it is."""

    # --- lifecycle ---------------------------------------------------------------------------------------------

    def open(self, fmt: StreamFormat) -> None:
        import av

        self.close()
        if fmt.width % 2 or fmt.height % 2:
            raise InputError(
                f"output file {self.path}: the video size {fmt.width}x{fmt.height} is odd, and H.264 in yuv420p "
                "needs an even width and height",
                hint="make the width and height even",
            )
        if fmt.sample_rate not in (av.codec.Codec("aac", "w").audio_rates or ()):
            raise InputError(f"output file {self.path}: AAC cannot encode audio at {fmt.sample_rate} Hz")
        if self.path.is_dir():
            raise InputError(f"output file {self.path} is a folder", hint="give a file name such as anchor.mp4")
        container_format = CONTAINER_FORMATS.get(self.path.suffix.lower(), "mp4")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            container = av.open(str(self.path), "w", format=container_format,
                                options=FRAGMENTED if container_format in ("mp4", "mov") else {"flush_packets": "1"})
        except (OSError, av.FFmpegError) as error:
            raise InputError(f"output file {self.path} cannot be written: {_reason(error)}") from error
        try:
            self._add_streams(container, fmt)
            container.start_encoding()  # opens the encoders and the file now, so that problems show at open
        except (OSError, av.FFmpegError) as error:
            container.close()
            raise InputError(f"output file {self.path} cannot be written: {_reason(error)}") from error
        self._container = container
        self._fmt = fmt
        self._video_time_base = 1 / Fraction(fmt.fps)
        self._audio_time_base = Fraction(1, fmt.sample_rate)
        self._last_index = None
        self._pending_audio, self._pending_samples, self._audio_end = [], 0, None
        self.frames_written = 0
        self.failure = None

    def _add_streams(self, container: av.container.OutputContainer, fmt: StreamFormat) -> None:
        video = container.add_stream(
            "libx264",
            rate=fmt.fps,
            time_base=1 / Fraction(fmt.fps),
            options={"preset": self.preset, "crf": str(self.crf)},
        )
        video.width, video.height, video.pix_fmt = fmt.width, fmt.height, "yuv420p"
        video.codec_context.gop_size = max(1, round(GOP_SECONDS * fmt.fps))
        video.codec_context.colorspace = AVCOL_SPC_SMPTE170M
        video.codec_context.color_range = AVCOL_RANGE_MPEG

        audio = container.add_stream("aac", rate=fmt.sample_rate)
        audio.codec_context.layout = "mono"
        audio.codec_context.time_base = Fraction(1, fmt.sample_rate)
        audio.codec_context.bit_rate = min(self.audio_bitrate, AAC_MAX_BITS_PER_SAMPLE * fmt.sample_rate)

        self._video, self._audio = video, audio

    def write(self, frame: VideoFrame, audio: AudioChunk) -> None:
        import av
        import cv2

        if self.failure is not None:
            raise AnchorcastError(self.failure)
        if self._container is None:
            raise RuntimeError("FileOutput.write() called while the output is not open")
        started = time.perf_counter()
        image = frame.image
        if (
            image.shape[:2] != (self._fmt.height, self._fmt.width)
            or image.ndim != 3
            or image.shape[2] not in (3, 4)
        ):
            raise ValueError(
                f"frame {frame.index} is {image.shape}, expected ({self._fmt.height}, {self._fmt.width}, 3 or 4)"
            )
        if self._last_index is not None and frame.index <= self._last_index:
            raise ValueError(f"frame {frame.index} arrived after frame {self._last_index}: indices must increase")
        if audio.sample_rate != self._fmt.sample_rate:
            raise ValueError(
                f"audio at {audio.sample_rate} Hz given to an output opened at {self._fmt.sample_rate} Hz"
            )

        conversion = cv2.COLOR_RGB2YUV_I420 if image.shape[2] == 3 else cv2.COLOR_RGBA2YUV_I420
        picture = av.VideoFrame.from_ndarray(cv2.cvtColor(image, conversion), format="yuv420p")
        picture.pts = frame.index
        picture.time_base = self._video_time_base
        try:
            self._container.mux(self._video.encode(picture))
            self._last_index = frame.index
            self.frames_written += 1
            self._add_audio(audio)
        except (OSError, av.FFmpegError) as error:
            self.failure = self._describe_failure(error)
            raise AnchorcastError(self.failure) from None
        self.last_write_ms = (time.perf_counter() - started) * 1000

    def _describe_failure(self, error: BaseException) -> str:
        """What stopped the writing, when, and how much of the file plays (read back from the disk now)."""
        seconds = self.frames_written / float(self._fmt.fps)
        what = WRITE_FAILURES.get(getattr(error, "errno", None) or 0, f"writing failed ({_reason(error)})")
        if not self.path.exists():
            return f"{what} writing {self.path} after {seconds:.1f} s; the file is gone with its folder"
        plays = playable_seconds(self.path)
        return (f"{what} writing {self.path} after {seconds:.1f} s; the file plays up to {plays:.1f} s"
                if plays > 0 else f"{what} writing {self.path} after {seconds:.1f} s; nothing in the file plays")

    def close(self) -> None:
        """Flush the encoders and finish the file. Safe to call more than once, and after a failed write."""
        import av

        container = self._container
        if container is None:
            return
        if self.failure is not None:  # reported once already; the fragments on disk are what there is
            self._container = self._video = self._audio = None
            with contextlib.suppress(OSError, av.FFmpegError):
                container.close()
            return
        try:
            try:
                if self.frames_written:
                    self._encode_audio(final=True)
                    container.mux(self._audio.encode(None))
                    container.mux(self._video.encode(None))
            finally:
                self._container = self._video = self._audio = None
                container.close()  # writes the index even when flushing failed
        except (OSError, av.FFmpegError) as error:
            raise AnchorcastError(
                f"output file {self.path}: finishing the file failed: {_reason(error)}"
            ) from error
        finally:
            if not self.frames_written:
                self.path.unlink(missing_ok=True)  # an empty, unplayable file would only mislead

    # --- audio -------------------------------------------------------------------------------------------------

    def _add_audio(self, chunk: AudioChunk) -> None:
        """Queue a chunk so that the audio track stays continuous: a gap becomes silence, an overlap is dropped."""
        samples = chunk.samples
        if self._audio_end is None:
            self._audio_end = chunk.start
        if chunk.start > self._audio_end:
            self._queue_audio(np.zeros(chunk.start - self._audio_end, np.float32))
        elif chunk.start < self._audio_end:
            samples = samples[self._audio_end - chunk.start :]
        self._queue_audio(np.asarray(samples, np.float32))
        self._encode_audio(final=False)

    def _queue_audio(self, samples: FloatAudio) -> None:
        if len(samples):
            self._pending_audio.append(samples)
            self._pending_samples += len(samples)
            assert self._audio_end is not None
            self._audio_end += len(samples)

    def _encode_audio(self, *, final: bool) -> None:
        """Encode the queued audio in whole encoder frames (and, when ``final``, the partial last one)."""
        import av

        if not self._pending_samples:
            return
        assert self._container is not None and self._audio_end is not None
        frame_size = self._audio.codec_context.frame_size or 1024
        queued = np.concatenate(self._pending_audio)
        position = self._audio_end - len(queued)
        # The last piece is padded to a whole AAC frame, and a fragmented MP4's edit list trims the encoder's
        # priming but not that padding: the audio may end up to one AAC frame (64 ms at 16 kHz) of silence after
        # the video; nothing written is left out.
        whole = len(queued) if final else len(queued) - len(queued) % frame_size
        for offset in range(0, whole, frame_size):
            block = queued[offset : offset + frame_size]
            frame = av.AudioFrame.from_ndarray(block.reshape(1, -1), format="fltp", layout="mono")
            frame.sample_rate = self._fmt.sample_rate
            frame.pts = position + offset
            frame.time_base = self._audio_time_base
            self._container.mux(self._audio.encode(frame))
        rest = queued[whole:]
        self._pending_audio = [rest] if len(rest) else []
        self._pending_samples = len(rest)


def playable_seconds(path: Path) -> float:
    """How far a (possibly cut-off) video file plays without a hole: the end of the last frame before the first
    one that does not decode. Only the packets are read up to the last keyframe, and decoded from there (frames
    cut off from a reference they need, the B-frames of a fragment whose next one is missing, do not play)."""
    import av

    keyframe: int | None = None
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                return 0.0
            for packet in container.demux(container.streams.video[0]):
                if packet.is_keyframe and packet.pts is not None:
                    keyframe = packet.pts
    except (OSError, av.FFmpegError, ValueError):
        pass  # a cut-off fragment ends the reading: what came before it is there
    if keyframe is None:
        return 0.0
    spans: list[tuple[int, int]] = []
    time_base = None
    try:
        with av.open(str(path)) as container:
            video = container.streams.video[0]
            time_base = video.time_base
            container.seek(keyframe, stream=video, backward=True, any_frame=False)
            for frame in container.decode(video):
                if frame.pts is not None:
                    duration = frame.duration or (round(1 / video.average_rate / video.time_base)
                                                  if video.average_rate else 1)
                    spans.append((frame.pts, duration))
    except (OSError, av.FFmpegError, ValueError):
        pass
    if not spans or time_base is None:
        return 0.0
    # A fragment cut off mid-write can hold a P-frame without the B-frames shown before it: the file plays
    # without a hole only up to the first missing frame.
    spans.sort()
    end = spans[0][0] + spans[0][1]
    for pts, duration in spans[1:]:
        if pts > end + duration // 2:
            break
        end = max(end, pts + duration)
    return float(end * time_base)


def _reason(error: BaseException) -> str:
    reason = getattr(error, "strerror", None) or str(error)
    return reason[:1].lower() + reason[1:]


def _make_output(host: Host, settings: dict[str, Any]) -> FileOutput:
    path = Path(settings["path"]).expanduser()
    return FileOutput(
        path if path.is_absolute() else Path.cwd() / path,
        preset=settings["preset"],
        crf=settings["crf"],
        audio_bitrate=settings["audio_bitrate"],
    )


@hookimpl
def anchorcast_register_outputs(host: Host, register: Any) -> None:
    register(
        "file",
        _make_output,
        settings={
            "path": Setting(
                str,
                "anchorcast.mp4",
                help="the video file to write (relative to the current folder); .mkv and .mov "
                "choose those containers, anything else is MP4",
            ),
            "preset": Setting(
                str, "veryfast", help="x264 speed preset: faster presets make larger files", choices=X264_PRESETS
            ),
            "crf": Setting(
                int, 20, help="x264 quality: 0 is lossless, 51 the worst; 18-23 looks good", minimum=0, maximum=51
            ),
            "audio_bitrate": Setting(
                int, 128000, help="AAC bit rate in bits per second", minimum=8000, maximum=512000
            ),
        },
        summary="writes the anchor to an H.264 + AAC video file (MP4)",
    )
