"""Small components for scheduler and host tests, registered in process as a plugin (``RecordingPlugin``).

They implement the real protocols; the scheduler under test drives them exactly as it drives built-in ones.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from anchorcast import hookimpl
from anchorcast.components import FrameJob, Setting
from anchorcast.media import AudioChunk, Event, Speech, StreamFormat, TextSegment, Timing, VideoFrame


def tone(seconds: float, rate: int, freq: float = 220.0, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(round(seconds * rate)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


class ToneVoice:
    """Speaks every segment as a tone whose length is proportional to the text, with one phoneme per letter."""

    def __init__(self, rate: int = 16000, seconds_per_char: float = 0.05, delay: float = 0.0) -> None:
        self.rate = rate
        self.seconds_per_char = seconds_per_char
        self.delay = delay

    def open(self, fmt: StreamFormat) -> None:
        pass

    def synthesize(self, segment: TextSegment) -> Iterator[Speech]:
        time.sleep(self.delay)
        duration = len(segment.text) * self.seconds_per_char
        letters = [ch for ch in segment.text if ch.isalpha()] or ["a"]
        step = duration / len(letters)
        phonemes = tuple(Timing(ch, i * step, (i + 1) * step) for i, ch in enumerate(letters))
        yield Speech(tone(duration, self.rate), self.rate, segment.text, phonemes)

    def close(self) -> None:
        pass


class ListSource:
    live = False

    def __init__(self, items: Sequence[TextSegment | AudioChunk]) -> None:
        self._items = list(items)

    def open(self, fmt: StreamFormat) -> None:
        pass

    def items(self) -> Iterator[TextSegment | AudioChunk]:
        return iter(self._items)

    def close(self) -> None:
        pass


class LevelEngine:
    """Draws a frame whose pixel value encodes the frame's audio level (0 in silence); optionally slow."""

    def __init__(self, fmt_size: tuple[int, int] = (64, 48), delay_per_frame: float = 0.0, max_batch: int = 4,
                 lookahead: float = 0.04) -> None:
        self.width, self.height = fmt_size
        self.delay_per_frame = delay_per_frame
        self.max_batch = max_batch
        self.lookbehind = 0.0
        self.lookahead = lookahead
        self.batches: list[int] = []
        self.rendered: list[int] = []
        self._idle: np.ndarray | None = None

    def open(self, fmt: StreamFormat) -> None:
        self.width, self.height = fmt.width, fmt.height
        self._idle = np.zeros((fmt.height, fmt.width, 3), np.uint8)

    def render(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        time.sleep(self.delay_per_frame * len(jobs))
        self.batches.append(len(jobs))
        frames = []
        for job in jobs:
            self.rendered.append(job.index)
            level = float(np.sqrt(np.mean(np.square(job.audio)))) if len(job.audio) else 0.0
            value = int(min(255, 1 + level * 400 * job.speech))
            frames.append(np.full((self.height, self.width, 3), value, np.uint8))
        return frames

    def idle(self, index: int) -> np.ndarray:
        assert self._idle is not None
        return self._idle

    def close(self) -> None:
        pass


class CollectOutput:
    """Keeps what it is given: frame indices, mean pixel values and the audio, with wall-clock write times."""

    def __init__(self, live: bool = False) -> None:
        self.live = live
        self.indices: list[int] = []
        self.values: list[float] = []
        self.audio: list[AudioChunk] = []
        self.times: list[float] = []
        self.closed = False
        self.lock = threading.Lock()

    def open(self, fmt: StreamFormat) -> None:
        self.fmt = fmt

    def write(self, frame: VideoFrame, audio: AudioChunk) -> None:
        with self.lock:
            self.indices.append(frame.index)
            self.values.append(float(frame.image.mean()))
            self.audio.append(audio)
            self.times.append(time.monotonic())

    def close(self) -> None:
        self.closed = True

    def joined_audio(self) -> np.ndarray:
        return np.concatenate([chunk.samples for chunk in self.audio]) if self.audio else np.zeros(0, np.float32)


class RecordingPlugin:
    """Registers the components above under ``test-*`` names and records every hook call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.outputs: list[CollectOutput] = []
        self.engines: list[LevelEngine] = []

    @hookimpl
    def anchorcast_register_sources(self, host: Any, register: Any) -> None:
        self.calls.append(("register_sources", host))
        register(
            "test-list",
            lambda host, s: ListSource([TextSegment(t, i, cue=c or None) for i, (t, c) in enumerate(s["lines"])]),
            settings={"lines": Setting(list, [], "[[text, cue], ...]")},
            summary="segments from the profile",
        )

    @hookimpl
    def anchorcast_register_voices(self, host: Any, register: Any) -> None:
        self.calls.append(("register_voices", host))
        register("test-tone", lambda host, s: ToneVoice(delay=s["delay"]),
                 settings={"delay": Setting(float, 0.0)}, summary="tones")

    @hookimpl
    def anchorcast_register_engines(self, host: Any, register: Any) -> None:
        self.calls.append(("register_engines", host))

        def make(host: Any, settings: dict[str, Any]) -> LevelEngine:
            engine = LevelEngine(delay_per_frame=settings["delay_ms"] / 1000, max_batch=settings["max_batch"])
            self.engines.append(engine)
            return engine

        register("test-level", make,
                 settings={"delay_ms": Setting(float, 0.0), "max_batch": Setting(int, 4, minimum=1)})

    @hookimpl
    def anchorcast_register_outputs(self, host: Any, register: Any) -> None:
        self.calls.append(("register_outputs", host))

        def make(host: Any, settings: dict[str, Any]) -> CollectOutput:
            output = CollectOutput(live=settings["live"])
            self.outputs.append(output)
            return output

        register("test-collect", make, settings={"live": Setting(bool, False)})

    @hookimpl
    def anchorcast_register_commands(self, host: Any, register: Any) -> None:
        self.calls.append(("register_commands", host))

        def configure(parser: Any) -> None:
            parser.add_argument("--shout", action="store_true")

        def run(host: Any, args: Any) -> int:
            self.calls.append(("command", args.shout))
            return 7

        register("test-hello", configure, run, summary="says hello")

    @hookimpl
    def anchorcast_startup(self, host: Any) -> None:
        self.calls.append(("startup", host))

    @hookimpl
    def anchorcast_shutdown(self, host: Any) -> None:
        self.calls.append(("shutdown", host))

    @hookimpl
    def anchorcast_event(self, host: Any, event: Event) -> None:
        self.calls.append(("event", event))

    @hookimpl
    def anchorcast_metrics(self, host: Any, report: dict[str, Any]) -> None:
        self.calls.append(("metrics", report))

    def events(self, kind: str | None = None) -> list[Event]:
        return [e for name, e in self.calls if name == "event" and (kind is None or e.kind == kind)]
