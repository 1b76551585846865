"""The ``file`` output: writes real H.264 + AAC files with PyAV and reads them back with PyAV."""

from __future__ import annotations

import wave
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from anchorcast.components import Setting
from anchorcast.errors import InputError
from anchorcast.host import Host
from anchorcast.media import AudioChunk, StreamFormat, VideoFrame
from anchorcast_plugins.outputs import file_output
from anchorcast_plugins.outputs.file_health import playable_seconds
from anchorcast_plugins.outputs.file_output import FileOutput
from tests.components import RecordingPlugin
from tests.conftest import make_profile
from tests.mp4 import audio_tail_s

RED = (200, 30, 60)


def first_sample(index: int, fmt: StreamFormat) -> int:
    """Frame ``index`` carries samples [first_sample(index), first_sample(index + 1)) of the timeline."""
    return index * fmt.sample_rate * fmt.fps.denominator // fmt.fps.numerator


def tone(start: int, end: int, sample_rate: int, hz: float, amplitude: float = 0.5) -> np.ndarray:
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(start, end) / sample_rate)).astype(np.float32)


def solid(fmt: StreamFormat, colour: tuple[int, ...]) -> np.ndarray:
    return np.full((fmt.height, fmt.width, len(colour)), colour, np.uint8)


def write_frames(output: FileOutput, fmt: StreamFormat, frames: range, colour=RED, hz: float = 440.0) -> None:
    for index in frames:
        start, end = first_sample(index, fmt), first_sample(index + 1, fmt)
        output.write(
            VideoFrame(solid(fmt, colour), index, fmt.fps),
            AudioChunk(tone(start, end, fmt.sample_rate, hz), fmt.sample_rate, start),
        )


@dataclass
class ReadBack:
    frame_count: int
    video_seconds: float
    audio_seconds: float
    frames: list[tuple[float, np.ndarray]]
    """(pts in seconds, RGB image) of every decoded frame."""
    audio: np.ndarray
    audio_rate: int
    first_audio_pts: float


def read_back(path: Path) -> ReadBack:
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        assert video.codec_context.name == "h264" and audio.codec_context.name == "aac"
        assert audio.codec_context.channels == 1
        video_seconds = float(video.duration * video.time_base)
        frames = [(float(frame.time), frame.to_ndarray(format="rgb24")) for frame in container.decode(video)]
    with av.open(str(path)) as container:
        decoded = list(container.decode(audio=0))
        samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in decoded])
        audio_rate = decoded[0].sample_rate
        first_audio_pts = float(decoded[0].time)
    # what plays: the decoded samples (a fragmented MP4's declared audio duration includes the last AAC frame's
    # padding, which its edit list trims)
    audio_seconds = len(samples) / audio_rate
    return ReadBack(len(frames), video_seconds, audio_seconds, frames, samples, audio_rate, first_audio_pts)


def dominant_hz(samples: np.ndarray, sample_rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum) * sample_rate / len(samples))


@pytest.mark.parametrize(("sample_rate", "fps"), [(16000, Fraction(25)), (22050, Fraction(30))])
def test_written_file_has_every_frame_and_continuous_audio(
    tmp_path: Path, sample_rate: int, fps: Fraction
) -> None:
    fmt = StreamFormat(320, 240, fps, sample_rate)
    count = 45
    output = FileOutput(tmp_path / "out.mp4", preset="ultrafast")
    output.open(fmt)
    write_frames(output, fmt, range(count), hz=440.0)
    assert output.last_write_ms > 0
    output.close()

    result = read_back(tmp_path / "out.mp4")
    expected_seconds = count / fps
    one_frame = float(1 / fps)
    assert result.frame_count == count
    assert abs(result.video_seconds - expected_seconds) < one_frame
    assert -one_frame < result.audio_seconds - expected_seconds <= audio_tail_s(sample_rate)
    assert result.audio_rate == sample_rate
    assert [pts for pts, _ in result.frames] == pytest.approx([i / fps for i in range(count)])

    middle = result.frames[count // 2][1].reshape(-1, 3).mean(axis=0)
    assert np.abs(middle - RED).max() < 6, middle

    # Exactly the samples written, AAC frames being whole: no gap, nothing lost at the end, tone intact.
    written = first_sample(count, fmt)
    assert written <= len(result.audio) < written + 2 * 1024
    steady = result.audio[1024 : written - 1024]
    assert abs(dominant_hz(steady, sample_rate) - 440.0) < 2 * sample_rate / len(steady)
    assert np.sqrt(np.mean(steady**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)
    assert result.first_audio_pts == 0.0


def test_audio_and_video_stay_in_sync(tmp_path: Path) -> None:
    """A flash and a beep on the same frame come out of the file at the same time."""
    fmt = StreamFormat(320, 240, Fraction(25), 16000)
    flash = 30
    output = FileOutput(tmp_path / "sync.mp4", preset="ultrafast")
    output.open(fmt)
    for index in range(50):
        start, end = first_sample(index, fmt), first_sample(index + 1, fmt)
        beep = (
            tone(start, end, fmt.sample_rate, 1000.0, 0.8) if index == flash else np.zeros(end - start, np.float32)
        )
        colour = (255, 255, 255) if index == flash else (0, 0, 0)
        output.write(VideoFrame(solid(fmt, colour), index, fmt.fps), AudioChunk(beep, fmt.sample_rate, start))
    output.close()

    result = read_back(tmp_path / "sync.mp4")
    flash_seconds = max(result.frames, key=lambda frame: frame[1].mean())[0]
    loud = np.flatnonzero(np.abs(result.audio) > 0.4)
    beep_seconds = result.first_audio_pts + loud[0] / result.audio_rate
    assert flash_seconds == pytest.approx(flash / 25)
    assert abs(beep_seconds - flash_seconds) < 0.005


def test_gaps_in_the_audio_become_silence_and_overlaps_are_dropped(tmp_path: Path) -> None:
    fmt = StreamFormat(160, 120, Fraction(25), 16000)
    output = FileOutput(tmp_path / "gaps.mp4", preset="ultrafast")
    output.open(fmt)
    for index in range(40):
        start, end = first_sample(index, fmt), first_sample(index + 1, fmt)
        samples = tone(start, end, fmt.sample_rate, 440.0)
        if 10 <= index < 20:
            samples = samples[:0]  # nothing for these frames: the file must still keep time
        elif index == 25:
            start -= 100  # overlaps frame 24 by 100 samples
            samples = tone(start, end, fmt.sample_rate, 440.0)
        output.write(VideoFrame(solid(fmt, RED), index, fmt.fps), AudioChunk(samples, fmt.sample_rate, start))
    output.close()

    result = read_back(tmp_path / "gaps.mp4")
    assert -1 / 25 < result.audio_seconds - 40 / 25 <= audio_tail_s(16000)
    rms = [np.sqrt(np.mean(result.audio[first_sample(i, fmt) : first_sample(i + 1, fmt)] ** 2)) for i in range(40)]
    assert max(rms[12:18]) < 0.02  # silence where the audio was missing
    assert min(rms[2:9] + rms[22:38]) > 0.3  # tone before and after, at the right place
    continuing = result.audio[first_sample(22, fmt) : first_sample(38, fmt)]
    expected = tone(first_sample(22, fmt), first_sample(38, fmt), fmt.sample_rate, 440.0)
    assert np.corrcoef(continuing, expected)[0, 1] > 0.95  # the overlap did not shift the tone


def test_frames_are_timed_by_their_index_not_by_their_count(tmp_path: Path) -> None:
    fmt = StreamFormat(160, 120, Fraction(25), 16000)
    indices = [*range(10), *range(15, 25)]  # frames 10-14 never came: the picture holds, the clock does not slip
    output = FileOutput(tmp_path / "skips.mp4", preset="ultrafast")
    output.open(fmt)
    for index in indices:
        write_frames(output, fmt, range(index, index + 1))
    output.close()

    result = read_back(tmp_path / "skips.mp4")
    assert [pts for pts, _ in result.frames] == pytest.approx([index / 25 for index in indices])
    assert abs(result.video_seconds - 25 / 25) < 1 / 25
    assert -1 / 25 < result.audio_seconds - 25 / 25 <= audio_tail_s(16000)


def test_rgba_frames_lose_their_alpha(tmp_path: Path) -> None:
    fmt = StreamFormat(160, 120, Fraction(25), 16000)
    output = FileOutput(tmp_path / "rgba.mp4", preset="ultrafast")
    output.open(fmt)
    write_frames(output, fmt, range(5), colour=(*RED, 0))
    output.close()
    image = read_back(tmp_path / "rgba.mp4").frames[2][1]
    assert np.abs(image.reshape(-1, 3).mean(axis=0) - RED).max() < 6


def test_a_file_closed_early_is_playable_and_close_is_idempotent(tmp_path: Path) -> None:
    fmt = StreamFormat(320, 240, Fraction(25), 16000)
    output = FileOutput(tmp_path / "early.mp4")
    output.open(fmt)
    with pytest.raises(KeyboardInterrupt):
        try:
            write_frames(output, fmt, range(4))
            raise KeyboardInterrupt  # Ctrl-C upstream, with frames still inside the encoder
        finally:
            output.close()
    output.close()

    result = read_back(tmp_path / "early.mp4")
    assert result.frame_count == 4
    assert -1 / 25 < result.audio_seconds - 4 / 25 <= audio_tail_s(16000)
    with pytest.raises(RuntimeError):
        write_frames(output, fmt, range(4, 5))


def test_closing_without_frames_leaves_no_broken_file(tmp_path: Path) -> None:
    output = FileOutput(tmp_path / "nothing.mp4")
    output.open(StreamFormat(160, 120, Fraction(25), 16000))
    output.close()
    output.close()
    assert not (tmp_path / "nothing.mp4").exists()


def test_odd_frame_size_is_refused_at_open(tmp_path: Path) -> None:
    output = FileOutput(tmp_path / "odd.mp4")
    with pytest.raises(InputError, match=r"321x240.*even"):
        output.open(StreamFormat(321, 240, Fraction(25), 16000))
    assert not (tmp_path / "odd.mp4").exists()
    output.close()


def test_unwritable_path_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "taken").write_text("a file where a folder should be")
    with pytest.raises(InputError, match="taken"):
        FileOutput(tmp_path / "taken" / "out.mp4").open(StreamFormat(160, 120, Fraction(25), 16000))
    with pytest.raises(InputError, match="folder"):
        FileOutput(tmp_path).open(StreamFormat(160, 120, Fraction(25), 16000))


def test_frames_that_do_not_match_the_format_are_refused(tmp_path: Path) -> None:
    fmt = StreamFormat(160, 120, Fraction(25), 16000)
    output = FileOutput(tmp_path / "out.mp4", preset="ultrafast")
    output.open(fmt)
    silence = AudioChunk(np.zeros(640, np.float32), 16000, 0)
    with pytest.raises(ValueError, match="expected"):
        output.write(VideoFrame(np.zeros((120, 162, 3), np.uint8), 0, fmt.fps), silence)
    write_frames(output, fmt, range(3))
    with pytest.raises(ValueError, match="must increase"):
        write_frames(output, fmt, range(2, 3))
    output.close()
    assert read_back(tmp_path / "out.mp4").frame_count == 3


def registered_output() -> tuple[Any, dict[str, Setting]]:
    found: dict[str, tuple[Any, dict[str, Setting]]] = {}

    def register(name: str, factory: Any, *, settings: Any = None, summary: str = "") -> None:
        assert summary
        found[name] = (factory, dict(settings or {}))

    file_output.anchorcast_register_outputs(host=None, register=register)
    return found["file"]


def test_registration_and_relative_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    factory, schema = registered_output()
    assert schema["path"].kind == "value" and schema["path"].default == "anchorcast.mp4"
    assert "ultrafast" in schema["preset"].choices and schema["preset"].default == "veryfast"
    assert (schema["crf"].minimum, schema["crf"].maximum, schema["crf"].default) == (0, 51, 20)
    assert schema["audio_bitrate"].default == 128000
    assert all(not setting.required for setting in schema.values())

    monkeypatch.chdir(tmp_path)
    settings = {name: setting.default for name, setting in schema.items()}
    settings |= {"path": "shows/today/anchor.mp4", "preset": "ultrafast"}
    output = factory(None, settings)
    assert output.path == tmp_path / "shows" / "today" / "anchor.mp4" and output.live is False
    fmt = StreamFormat(160, 120, Fraction(25), 24000)
    output.open(fmt)  # creates the folders
    write_frames(output, fmt, range(10))
    output.close()
    result = read_back(tmp_path / "shows" / "today" / "anchor.mp4")
    assert result.frame_count == 10 and result.audio_rate == 24000


@pytest.mark.parametrize("suffix", [".mkv", ".mov"])
def test_other_containers_by_suffix(tmp_path: Path, suffix: str) -> None:
    fmt = StreamFormat(160, 120, Fraction(25), 48000)
    output = FileOutput(tmp_path / f"out{suffix}", preset="ultrafast")
    output.open(fmt)
    write_frames(output, fmt, range(10))
    output.close()
    with av.open(str(tmp_path / f"out{suffix}")) as container:
        assert ("matroska" if suffix == ".mkv" else "mov") in container.format.name
        assert sum(1 for _ in container.decode(video=0)) == 10


def test_a_run_through_the_host_puts_the_timeline_into_the_file(
    tmp_path: Path, host: Host, plugin: RecordingPlugin
) -> None:
    """An audio file in, through the scheduler, out to an MP4 and to a collecting output side by side."""
    speech = tmp_path / "speech.wav"
    with wave.open(str(speech), "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(22050)
        file.writeframes((tone(0, 22050, 22050, 300.0) * 32767).astype("<i2").tobytes())
    raw = make_profile()
    del raw["voice"]
    raw["source"] = {"use": "audio-file", "path": str(speech)}
    raw["outputs"] = {
        "file": {"path": str(tmp_path / "run.mp4"), "preset": "ultrafast"},
        "collect": {"use": "test-collect"},
    }
    host.run(host.load_profile(None, raw=raw))

    collected = plugin.outputs[0]
    result = read_back(tmp_path / "run.mp4")
    assert result.frame_count == len(collected.indices) >= 25
    timeline = collected.joined_audio()
    assert -1 / 25 < result.audio_seconds - len(timeline) / 16000 <= audio_tail_s(16000)
    decoded = result.audio[: len(timeline)]
    assert np.corrcoef(decoded, timeline)[0, 1] > 0.99


def test_a_file_cut_off_anywhere_plays_without_a_hole_up_to_what_playable_seconds_says(tmp_path: Path) -> None:
    """kill -9 can stop the writer inside a fragment, after a P-frame and before the B-frames shown before it:
    the reported length must end at the first frame that does not decode, not at the last one that does."""
    fmt = StreamFormat(width=96, height=64, fps=Fraction(25), sample_rate=16000)
    full = tmp_path / "full.mp4"
    output = FileOutput(full)
    output.open(fmt)
    for index in range(100):
        image = np.full((fmt.height, fmt.width, 3), 40, np.uint8)
        image[20:44, index * 2 % 80 : index * 2 % 80 + 16] = (220, 180, 40)  # smooth motion: x264 uses B-frames
        audio = tone(first_sample(index, fmt), first_sample(index + 1, fmt), fmt.sample_rate, 440.0)
        output.write(VideoFrame(image, index, fmt.fps), AudioChunk(audio, fmt.sample_rate, first_sample(index, fmt)))
    output.close()
    data = full.read_bytes()
    cut = tmp_path / "cut.mp4"
    holes_seen = cuts_that_play = 0
    with av.open(str(full)) as container:  # cut just after each video packet: the points a kill can leave
        packets = [packet for packet in container.demux(video=0) if packet.pos is not None]
    ends = [packet.pos + packet.size for packet in packets]  # and inside each, cut off while it was written
    ends += [packet.pos + packet.size // 2 for packet in packets]
    for size in ends:
        cut.write_bytes(data[:size])
        plays = playable_seconds(cut)
        shown: set[int] = set()
        try:
            with av.open(str(cut)) as container:
                for frame in container.decode(video=0):
                    shown.add(round(float(frame.time) * 25))
        except (av.FFmpegError, OSError):
            pass  # a cut-off fragment ends the reading
        expected = set(range(round(plays * 25)))
        assert expected <= shown, (size, plays, sorted(expected - shown))
        without_a_hole = next(index for index in range(len(shown) + 1) if index not in shown)
        assert round(plays * 25) == without_a_hole, (size, plays)  # and it plays no less than that
        cuts_that_play += plays > 0
        holes_seen += bool(shown) and len(shown) <= max(shown)
    assert cuts_that_play > 160
    assert holes_seen > 0  # some cuts did leave frames after a hole: the case this guards against happened
