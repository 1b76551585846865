"""The ``audio-file`` source: speech from an audio file (WAV, MP3, FLAC, or any file ffmpeg reads that has an
audio stream) goes straight onto the timeline, skipping the voice.

The file is decoded with PyAV, downmixed to mono and resampled to the run's sample rate with soxr; chunks of about
half a second follow each other with no gap and no overlap.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import InputError
from anchorcast.media import AudioChunk, FloatAudio, StreamFormat

if TYPE_CHECKING:
    import av.container

    from anchorcast.host import Host

CHUNK_SECONDS = 0.5
"""How much audio each chunk carries (the last one may be shorter)."""

TRAILING_PADDING_LIMIT_SECONDS = 0.1
"""Decoded audio past the duration the container declares is decoder padding (AAC in MP4 decodes whole frames)
and is dropped, as long as it is shorter than this; more than this means the declared duration was wrong."""

FORMATS_HINT = "give a WAV, MP3, FLAC or any other file ffmpeg can read that has an audio track"


class AudioFileSource:
    """Reads one audio file and yields it as mono float32 :class:`AudioChunk` objects at the run's sample rate.

    ``open`` probes the file and decodes its first chunk, so that an unreadable file fails there with an
    :class:`InputError` naming it; ``items`` then yields the whole file with ``start`` counting samples from 0.
    """

    live = False

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._container: av.container.InputContainer | None = None
        self._chunks: Iterator[AudioChunk] | None = None
        self._first: AudioChunk | None = None
        # The host reads items() on a feeder thread and may close from another: closing must never free the
        # container while ffmpeg is decoding from it.
        self._lock = threading.Lock()

    def open(self, fmt: StreamFormat) -> None:
        import av

        self.close()
        self.sample_rate = fmt.sample_rate
        if not self.path.exists():
            raise InputError(f"audio file {self.path} does not exist", hint=FORMATS_HINT)
        if not self.path.is_file():
            raise InputError(f"audio file {self.path} is not a file", hint=FORMATS_HINT)
        try:
            container = av.open(str(self.path))
        except OSError as error:
            raise InputError(f"audio file {self.path} could not be read: {_reason(error)}") from error
        except av.FFmpegError as error:
            raise InputError(
                f"audio file {self.path} could not be decoded: {_reason(error)}", hint=FORMATS_HINT
            ) from error
        self._container = container
        if not container.streams.audio:
            self.close()
            raise InputError(f"audio file {self.path} has no audio stream", hint=FORMATS_HINT)
        self._chunks = self._decode(container)
        try:
            self._first = next(self._chunks)
        except StopIteration:
            self.close()
            raise InputError(f"audio file {self.path} contains no audio samples", hint=FORMATS_HINT) from None
        except InputError:
            self.close()
            raise

    def items(self) -> Iterator[AudioChunk]:
        chunks, first = self._chunks, self._first
        if chunks is None:
            raise RuntimeError("AudioFileSource.items() called before open()")
        if first is not None:
            self._first = None
            yield first
        yield from chunks

    def close(self) -> None:
        """Releases the file; a reader still inside :meth:`items` then sees the end of the audio."""
        with self._lock:
            self._chunks = None
            self._first = None
            if self._container is not None:
                self._container.close()
                self._container = None

    # --- decoding ----------------------------------------------------------------------------------------------

    def _decode(self, container: av.container.InputContainer) -> Iterator[AudioChunk]:
        """Decode, downmix, resample and cut into chunks of ``CHUNK_SECONDS``."""
        stream = container.streams.best("audio")
        assert stream is not None
        chunk_samples = max(1, round(self.sample_rate * CHUNK_SECONDS))
        padding_limit = round(self.sample_rate * TRAILING_PADDING_LIMIT_SECONDS)
        limit = _declared_samples(stream, self.sample_rate)  # None once it proves wrong
        buffer = _SampleBuffer()
        emitted = 0

        def chunk(count: int) -> AudioChunk:
            nonlocal emitted
            result = AudioChunk(np.clip(buffer.take(count), -1.0, 1.0), self.sample_rate, emitted)
            emitted += count
            return result

        for samples in self._mono_resampled(container, stream):
            buffer.append(samples)
            if limit is not None and emitted + buffer.size - limit > padding_limit:
                limit = None
            available = buffer.size if limit is None else min(buffer.size, limit - emitted)
            while available >= chunk_samples:
                yield chunk(chunk_samples)
                available -= chunk_samples
        if self._container is not container:
            return  # closed half-way: what is left in the buffer is not the end of the file
        available = buffer.size if limit is None else min(buffer.size, max(0, limit - emitted))
        while available > 0:
            count = min(chunk_samples, available)
            yield chunk(count)
            available -= count

    def _mono_resampled(self, container: av.container.InputContainer, stream: Any) -> Iterator[FloatAudio]:
        """The stream's samples as mono float32 at ``self.sample_rate``, in decoder-sized pieces."""
        import av
        import soxr

        downmixer: av.AudioResampler | None = None
        downmix_key: tuple[str, str, int] | None = None
        rate_converter: Any = None
        decoded_seconds = 0.0
        frames = container.decode(stream)
        try:
            while True:
                with self._lock:
                    if self._container is not container:
                        return  # closed
                    frame = next(frames, None)
                if frame is None:
                    break
                if frame.samples == 0:
                    continue
                key = (frame.format.name, frame.layout.name, frame.sample_rate)
                if key != downmix_key:
                    if rate_converter is not None and downmix_key is not None and key[2] != downmix_key[2]:
                        yield from _nonempty(rate_converter.resample_chunk(np.zeros(0, np.float32), last=True))
                        rate_converter = None
                    # rematrix_maxval=1 keeps the downmix from clipping (ffmpeg sums stereo at -3 dB each).
                    downmixer = av.AudioResampler(format="flt", layout="mono", options={"rematrix_maxval": "1.0"})
                    downmix_key = key
                    if rate_converter is None and frame.sample_rate != self.sample_rate:
                        rate_converter = soxr.ResampleStream(
                            frame.sample_rate, self.sample_rate, 1, dtype="float32", quality="HQ"
                        )
                decoded_seconds += frame.samples / frame.sample_rate
                assert downmixer is not None
                for mono in downmixer.resample(frame):
                    samples = mono.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    if rate_converter is not None:
                        samples = rate_converter.resample_chunk(samples)
                    yield from _nonempty(samples)
        except av.FFmpegError as error:
            raise InputError(
                f"audio file {self.path} could not be decoded at {decoded_seconds:.2f} s: {_reason(error)}",
                hint=FORMATS_HINT,
            ) from error
        if rate_converter is not None:
            yield from _nonempty(rate_converter.resample_chunk(np.zeros(0, np.float32), last=True))


class _SampleBuffer:
    """A queue of samples that hands them out in pieces of any size."""

    def __init__(self) -> None:
        self._parts: list[FloatAudio] = []
        self.size = 0

    def append(self, samples: FloatAudio) -> None:
        self._parts.append(samples)
        self.size += len(samples)

    def take(self, count: int) -> FloatAudio:
        joined = self._parts[0] if len(self._parts) == 1 else np.concatenate(self._parts)
        self._parts = [joined[count:]] if count < len(joined) else []
        self.size -= count
        return joined[:count]


def _nonempty(samples: FloatAudio) -> Iterator[FloatAudio]:
    if len(samples):
        yield samples


def _declared_samples(stream: Any, sample_rate: int) -> int | None:
    """The stream's duration as the container declares it, in samples at ``sample_rate`` (None when unknown)."""
    if stream.duration is None or stream.time_base is None or stream.duration <= 0:
        return None
    return round(stream.duration * stream.time_base * sample_rate)


def _reason(error: BaseException) -> str:
    reason = getattr(error, "strerror", None) or str(error)
    return reason[:1].lower() + reason[1:]


def _make_source(host: Host, settings: dict[str, Any]) -> AudioFileSource:
    path = Path(settings["path"])
    if not path.is_file():
        raise InputError(f"audio file {path} does not exist", hint=FORMATS_HINT)
    return AudioFileSource(path)


@hookimpl
def anchorcast_register_sources(host: Host, register: Any) -> None:
    register(
        "audio-file",
        _make_source,
        settings={
            "path": Setting(
                str, kind="file", help="the audio file to speak (WAV, MP3, FLAC, or any file ffmpeg reads)"
            ),
        },
        summary="speech from an audio file (WAV, MP3, FLAC, ...), straight onto the timeline",
    )
