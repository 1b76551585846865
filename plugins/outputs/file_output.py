"""The ``file`` output: the anchor as an H.264 + AAC video file (MP4 unless the name ends in .mkv or .mov).

Video timestamps are the frame indices from the host's clock and audio timestamps its sample positions, so the
file keeps the timeline's A/V sync exactly. MP4 and MOV are written fragmented (a fragment a second, each flushed
to the file as it is complete), so the file plays at every moment: after a full disk, a kill -9 or a power cut it
plays up to its last complete second. :meth:`FileOutput.close` (which the host calls on every exit, Ctrl-C
included) flushes both encoders and the last fragment. A write that fails (a full disk, a folder removed or made
read-only) is reported as what it is, with how much of the file plays (measured by reading it back); once the
disk has room again the recording goes on in a new part (``NAME-part2.mp4``, timed from its own start), so a
long-running session loses only the frames of the outage.
"""

from __future__ import annotations

import contextlib
import shutil
import time
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import AnchorcastError, InputError
from anchorcast.media import AudioChunk, FloatAudio, StreamFormat, VideoFrame
from anchorcast_plugins.outputs.file_health import describe_write_failure, playable_seconds, reason

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

RESUME_FREE_BYTES = 16 << 20
"""Room a disk must have again before a recording that filled it goes on: less would fill again at once."""

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
        self, path: Path, *, preset: str = "veryfast", crf: int = 20, audio_bitrate: int = 128000,
        resume: bool = True,
    ) -> None:
        self.path = Path(path)
        """The file being written (``NAME-partN`` after a resume)."""
        self.first_path = self.path
        self.resume_after_failure = resume
        self.part = 1
        self.frames_lost = 0
        """Frames in no part: those of a failed part that do not play, and those until the next part began."""
        self._index_offset = 0  # a resumed part's timestamps start at 0 from its first frame and sample
        self._sample_offset = 0
        self._resumed_from: int | None = None  # a new part's first frame counts the frames lost since this one
        self._kept_until = 0  # after a failure: the first frame index the failed part does not play
        self._fmt: StreamFormat | None = None
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
            raise InputError(f"output file {self.path} cannot be written: {reason(error)}") from error
        try:
            self._add_streams(container, fmt)
            container.start_encoding()  # opens the encoders and the file now, so that problems show at open
        except (OSError, av.FFmpegError) as error:
            container.close()
            raise InputError(f"output file {self.path} cannot be written: {reason(error)}") from error
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
        if self._resumed_from is not None:
            self.frames_lost += frame.index - self._resumed_from
            self._resumed_from = None
            self._index_offset, self._sample_offset = frame.index, audio.start
        picture.pts = frame.index - self._index_offset
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

    def resume(self) -> str | None:
        """After a failed write (the scheduler asks every few seconds): once the folder is there and its disk has
        :data:`RESUME_FREE_BYTES` free, opens the next part, which starts with the next frame. ``None`` while
        it cannot (a folder that was removed is not made again: it may have been a share that went away)."""
        if not self.resume_after_failure or self.failure is None or self._fmt is None:
            return None
        try:
            if shutil.disk_usage(self.first_path.parent).free < RESUME_FREE_BYTES:
                return None
        except OSError:
            return None
        failed_path = self.path
        self.path = self.first_path.with_name(f"{self.first_path.stem}-part{self.part + 1}{self.first_path.suffix}")
        try:
            self.open(self._fmt)
        except InputError:
            self.path = failed_path
            return None
        self.part += 1
        self._resumed_from = self._kept_until  # lost: every frame the failed part lacks
        return f"recording continues in {self.path}"

    def metrics(self) -> dict[str, Any]:
        return {"parts": self.part, "frames_lost": self.frames_lost, "path": str(self.path)}

    def _describe_failure(self, error: BaseException) -> str:
        """What stopped the writing, when, and how much of the file plays (read back from the disk now)."""
        seconds = self.frames_written / float(self._fmt.fps)
        what = describe_write_failure(error)
        self._kept_until = self._index_offset
        if not self.path.exists():
            return f"{what} writing {self.path} after {seconds:.1f} s; the file is gone with its folder"
        plays = playable_seconds(self.path)
        self._kept_until = self._index_offset + round(plays * self._fmt.fps)
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
                f"output file {self.path}: finishing the file failed: {reason(error)}"
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
            frame.pts = position + offset - self._sample_offset
            frame.time_base = self._audio_time_base
            self._container.mux(self._audio.encode(frame))
        rest = queued[whole:]
        self._pending_audio = [rest] if len(rest) else []
        self._pending_samples = len(rest)


def _make_output(host: Host, settings: dict[str, Any]) -> FileOutput:
    path = Path(settings["path"]).expanduser()
    return FileOutput(
        path if path.is_absolute() else Path.cwd() / path,
        preset=settings["preset"],
        crf=settings["crf"],
        audio_bitrate=settings["audio_bitrate"],
        resume=settings["resume"],
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
            "resume": Setting(
                bool, True, help="after a full disk, go on in NAME-part2.mp4 (and so on) once the disk has room "
                "again (with other outputs on the stream; a run whose only output fails ends)"
            ),
        },
        summary="writes the anchor to an H.264 + AAC video file (MP4)",
    )
