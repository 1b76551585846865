"""The ``audio-file`` source: decodes real WAV, FLAC, MP3 and AAC files made here with PyAV."""

from __future__ import annotations

import itertools
import wave
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from anchorcast.components import Setting
from anchorcast.errors import InputError
from anchorcast.media import AudioChunk, StreamFormat
from anchorcast_plugins.sources import audio_file
from anchorcast_plugins.sources.audio_file import AudioFileSource

SOURCE_RATE = 44100
TONE_HZ = 1000.0
SECONDS = 1.21  # not a whole number of chunks; AAC pads its last frame with 911 samples (21 ms)

CONTAINERS = {".wav": ("pcm_s16le", "wav"), ".flac": ("flac", "flac"), ".mp3": ("libmp3lame", "mp3"),
              ".m4a": ("aac", "ipod")}  # fmt: skip


def make_audio_file(
    path: Path,
    *,
    seconds: float = SECONDS,
    layout: str = "stereo",
    amplitude: float = 0.5,
    hz: float = TONE_HZ,
    codec: str | None = None,
) -> int:
    """Encode a tone (the same in every channel) at 44.1 kHz; returns the number of samples written."""
    default_codec, container_format = CONTAINERS[path.suffix]
    codec = codec or default_codec
    total = round(seconds * SOURCE_RATE)
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=SOURCE_RATE)
        stream.codec_context.layout = layout
        channels = stream.codec_context.channels
        for start in range(0, total, 1024):
            times = np.arange(start, min(start + 1024, total)) / SOURCE_RATE
            block = (amplitude * np.sin(2 * np.pi * hz * times)).astype(np.float32)
            frame = av.AudioFrame.from_ndarray(np.tile(block, (channels, 1)), format="fltp", layout=layout)
            frame.sample_rate, frame.pts = SOURCE_RATE, start
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    return total


def read_all(path: Path, sample_rate: int = 16000) -> list[AudioChunk]:
    source = AudioFileSource(path)
    source.open(StreamFormat(320, 240, Fraction(25), sample_rate))
    try:
        return list(source.items())
    finally:
        source.close()


def dominant_hz(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * sample_rate / len(samples))


@pytest.mark.parametrize("suffix", list(CONTAINERS))
@pytest.mark.parametrize("sample_rate", [16000, 44100])
def test_decodes_to_contiguous_mono_chunks_at_the_run_rate(tmp_path: Path, suffix: str, sample_rate: int) -> None:
    path = tmp_path / f"tone{suffix}"
    written = make_audio_file(path)
    chunks = read_all(path, sample_rate)

    assert chunks[0].start == 0
    assert all(before.end == after.start for before, after in itertools.pairwise(chunks))
    for chunk in chunks:
        assert chunk.sample_rate == sample_rate
        assert chunk.samples.dtype == np.float32 and chunk.samples.ndim == 1
        assert 0 < len(chunk.samples) <= sample_rate // 2
        assert np.abs(chunk.samples).max() <= 1.0

    samples = np.concatenate([chunk.samples for chunk in chunks])
    # Encoder priming and padding (MP3, AAC) must not lengthen or shift the audio.
    assert abs(len(samples) / sample_rate - written / SOURCE_RATE) < 0.001
    assert abs(dominant_hz(samples, sample_rate) - TONE_HZ) < 2 * sample_rate / len(samples)
    steady = samples[sample_rate // 10 : -sample_rate // 10]
    assert np.sqrt(np.mean(steady**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)  # the downmix averages
    expected = (0.5 * np.sin(2 * np.pi * TONE_HZ * np.arange(len(samples)) / sample_rate))[
        sample_rate // 10 : -sample_rate // 10
    ]
    assert np.corrcoef(steady, expected)[0, 1] > 0.95  # in phase: nothing was dropped or added at the start


def test_a_loud_surround_file_downmixes_without_clipping(tmp_path: Path) -> None:
    path = tmp_path / "loud.wav"
    make_audio_file(path, layout="5.1", amplitude=0.95, seconds=0.4)
    samples = np.concatenate([chunk.samples for chunk in read_all(path)])
    assert 0.5 < np.abs(samples).max() <= 1.0
    assert np.mean(np.abs(samples) > 0.999) < 0.01


def test_float_samples_beyond_full_scale_are_limited_to_it(tmp_path: Path) -> None:
    path = tmp_path / "hot.wav"
    make_audio_file(path, layout="mono", amplitude=1.5, seconds=0.3, codec="pcm_f32le")
    samples = np.concatenate([chunk.samples for chunk in read_all(path)])
    assert np.abs(samples).max() == 1.0


def test_open_reads_ahead_and_items_can_be_read_again_after_reopening(tmp_path: Path) -> None:
    path = tmp_path / "tone.flac"
    make_audio_file(path, seconds=1.0)
    fmt = StreamFormat(320, 240, Fraction(25), 16000)
    source = AudioFileSource(path)
    assert source.live is False
    with pytest.raises(RuntimeError):
        next(iter(source.items()))
    source.open(fmt)
    first = [chunk.end for chunk in source.items()]
    source.close()
    source.close()
    source.open(fmt)
    again = [chunk.end for chunk in source.items()]
    source.close()
    assert first == again == [8000, 16000]

    source.open(fmt)
    reading = iter(source.items())
    assert next(reading).end == 8000
    source.close()  # closed half-way (the host closes on Ctrl-C while the feeder may still be reading)
    assert list(reading) == []


def test_a_text_file_named_wav_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("these are my notes, not audio\n" * 20)
    source = AudioFileSource(path)
    with pytest.raises(InputError, match=r"notes\.wav could not be decoded") as raised:
        source.open(StreamFormat(320, 240, Fraction(25), 16000))
    assert raised.value.hint
    source.close()


def test_a_video_without_audio_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "silent.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25, options={"preset": "ultrafast"})
        stream.width, stream.height = 64, 48
        for index in range(3):
            frame = av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    with pytest.raises(InputError, match=r"silent\.mp4 has no audio stream"):
        AudioFileSource(path).open(StreamFormat(320, 240, Fraction(25), 16000))


def test_a_wav_with_no_samples_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    with wave.open(str(path), "wb") as empty:
        empty.setnchannels(1)
        empty.setsampwidth(2)
        empty.setframerate(16000)
    with pytest.raises(InputError, match=r"empty\.wav"):
        AudioFileSource(path).open(StreamFormat(320, 240, Fraction(25), 16000))


def test_a_missing_file_is_an_input_error(tmp_path: Path) -> None:
    factory, _ = registered_source()
    with pytest.raises(InputError, match=r"gone\.wav does not exist"):
        factory(None, {"path": tmp_path / "gone.wav"})
    with pytest.raises(InputError, match=r"gone\.wav does not exist"):
        AudioFileSource(tmp_path / "gone.wav").open(StreamFormat(320, 240, Fraction(25), 16000))


def registered_source() -> tuple[Any, dict[str, Setting]]:
    found: dict[str, tuple[Any, dict[str, Setting]]] = {}

    def register(name: str, factory: Any, *, settings: Any = None, summary: str = "") -> None:
        assert summary
        found[name] = (factory, dict(settings or {}))

    audio_file.anchorcast_register_sources(host=None, register=register)
    return found["audio-file"]


def test_registration(tmp_path: Path) -> None:
    factory, schema = registered_source()
    assert set(schema) == {"path"}
    assert schema["path"].kind == "file" and schema["path"].required
    path = tmp_path / "tone.wav"
    make_audio_file(path, seconds=0.2)
    source = factory(None, {"path": path})
    source.open(StreamFormat(320, 240, Fraction(25), 22050))
    assert sum(len(chunk.samples) for chunk in source.items()) == pytest.approx(0.2 * 22050, abs=2)
    source.close()
