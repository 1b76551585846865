"""Media types that flow between stages: audio chunks, speech with timings, text segments, video frames, events.

Time on the media timeline is counted in samples at the stream's sample rate (exact integers, no drift);
``pts`` in seconds is derived from it. Video frame ``i`` is shown at ``i / fps``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import numpy.typing as npt

FloatAudio = npt.NDArray[np.float32]
"""Mono float32 samples in [-1, 1]."""

Image = npt.NDArray[np.uint8]
"""An (H, W, 3) RGB or (H, W, 4) RGBA uint8 image."""


class TaggedImage(np.ndarray):  # type: ignore[type-arg]
    """An engine's picture carrying per-frame side data, as FFmpeg's frames carry ``AVFrameSideData``.

    The face3d engine tags each picture with the expression coefficients it drew (``side_data["coefficients"]``,
    a (53,) float32 array): the data then travels with that very picture through batching, shared engines,
    repeats on overrun and the idle frame, and reaches the outputs as :attr:`VideoFrame.side_data` with the
    frame's pts, so a viewer that renders the head itself gets exactly what aired. A slice or ``copy()`` keeps
    the tag; functions that make new plain arrays (OpenCV's, ``np.array``) drop it, as they should.
    """

    side_data: dict[str, Any]

    def __array_finalize__(self, source: Any) -> None:
        self.side_data = getattr(source, "side_data", {})


def tag_image(image: Image, **side_data: Any) -> Image:
    """``image`` (not copied) as a :class:`TaggedImage` carrying ``side_data``."""
    tagged = image.view(TaggedImage)
    tagged.side_data = dict(side_data)
    return tagged


@dataclass(frozen=True, slots=True)
class StreamFormat:
    """The format every stage agrees on for one run."""

    width: int
    height: int
    fps: Fraction
    sample_rate: int

    @property
    def frame_duration(self) -> float:
        return float(1 / self.fps)


@dataclass(frozen=True, slots=True)
class AudioChunk:
    """Mono float32 audio starting at sample ``start`` of its timeline (the source's or the host's)."""

    samples: FloatAudio
    sample_rate: int
    start: int = 0

    @property
    def pts(self) -> float:
        """Presentation time of the first sample, in seconds."""
        return self.start / self.sample_rate

    @property
    def duration(self) -> float:
        return len(self.samples) / self.sample_rate

    @property
    def end(self) -> int:
        return self.start + len(self.samples)


@dataclass(frozen=True, slots=True)
class Timing:
    """A unit of speech (a phoneme or a word) from ``start`` to ``end`` seconds, relative to its speech."""

    label: str
    start: float
    end: float

    def shifted(self, seconds: float) -> Timing:
        return Timing(self.label, self.start + seconds, self.end + seconds)


@dataclass(frozen=True, slots=True)
class TextSegment:
    """A piece of script for a voice to read: usually one sentence.

    ``cue`` carries a script cue (for example an OBS scene name) that takes effect when this segment starts.
    ``language`` is a BCP-47-ish tag such as ``"en"`` or ``"zh"`` when the source knows it.
    """

    text: str
    index: int = 0
    language: str | None = None
    cue: str | None = None


@dataclass(frozen=True, slots=True)
class Speech:
    """Synthesized speech for one segment, with phoneme and word timings when the voice provides them.

    Phoneme labels are IPA where the voice speaks IPA (piper, eSpeak); times are seconds from the start of
    ``audio``.
    """

    audio: FloatAudio
    sample_rate: int
    text: str = ""
    phonemes: tuple[Timing, ...] = ()
    words: tuple[Timing, ...] = ()
    segment: TextSegment | None = None

    @property
    def duration(self) -> float:
        return len(self.audio) / self.sample_rate


@dataclass(frozen=True, slots=True)
class VideoFrame:
    """A frame of the output stream: ``image`` is shown at ``index / fps``."""

    image: Image
    index: int
    fps: Fraction

    @property
    def pts(self) -> float:
        return float(self.index / self.fps)

    @property
    def side_data(self) -> dict[str, Any]:
        """What the engine attached to this picture (:class:`TaggedImage`), e.g. ``coefficients``; else empty."""
        return getattr(self.image, "side_data", {})


# --- events -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Event:
    """Something that happened at media time ``pts`` (seconds on the host timeline)."""

    pts: float

    @property
    def kind(self) -> str:
        return _EVENT_KINDS[type(self)]


@dataclass(frozen=True, slots=True)
class SpeechStarted(Event):
    text: str = ""


@dataclass(frozen=True, slots=True)
class SpeechEnded(Event):
    text: str = ""


@dataclass(frozen=True, slots=True)
class Caption(Event):
    """A caption line from ``pts`` to ``end`` (seconds on the host timeline).

    ``final`` is False for partial ASR results that a later caption replaces. ``source`` says where it came
    from: ``"voice"`` (the text a voice read, with its ``words`` timed on the host timeline when the voice gave
    them) or ``"asr"`` (speech recognition).
    """

    text: str = ""
    final: bool = True
    end: float | None = None
    source: str = "voice"
    words: tuple[Timing, ...] = ()


@dataclass(frozen=True, slots=True)
class Cue(Event):
    """A script cue such as a scene name for the segment that starts at ``pts``."""

    name: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Overrun(Event):
    """Frame ``frame`` missed its deadline and ``policy`` ("repeat", "idle" or "fallback") replaced it."""

    frame: int = 0
    policy: str = ""
    late_ms: float = 0.0


@dataclass(frozen=True, slots=True)
class Interrupt(Event):
    """Queued speech and frames were dropped; the anchor returns to idle."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class UtteranceStarted(Event):
    """The first sample of utterance ``utterance`` (an id its source gave) is on air.

    A source yields it just before the utterance's text or audio; the scheduler places it where that audio
    starts on the timeline, so it airs with its first frame.
    """

    utterance: str = ""
    text: str = ""


@dataclass(frozen=True, slots=True)
class UtteranceEnded(Event):
    """The last sample of utterance ``utterance`` has aired (yielded by a source after its text or audio)."""

    utterance: str = ""
    text: str = ""


@dataclass(frozen=True, slots=True)
class OutputState(Event):
    """An output changed state: ``"failed"`` (taken off the stream), ``"reconnecting"`` or ``"restored"``."""

    output: str = ""
    state: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class SourceState(Event):
    """A live source lost its input (``"lost"``: a microphone unplugged or its sound server's source removed;
    the anchor is idle meanwhile) or has it again (``"live"``)."""

    source: str = ""
    state: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class EngineFailed(Event):
    """The lip engine raised: ``fallback`` (an engine's name) draws the rest of the run, or ``""`` when there is
    none (the run then ends with the error)."""

    engine: str = ""
    fallback: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class VoiceFailed(Event):
    """The voice raised mid-utterance (or its model would not load): ``fallback`` (a voice's name) reads the
    rest of the utterance (of a script: the rest of the run); a served session's next utterance tries its own
    voice again."""

    voice: str = ""
    fallback: str = ""
    detail: str = ""


_EVENT_KINDS: dict[type, str] = {
    Event: "event",
    SpeechStarted: "speech_started",
    SpeechEnded: "speech_ended",
    Caption: "caption",
    Cue: "cue",
    Overrun: "overrun",
    Interrupt: "interrupt",
    UtteranceStarted: "utterance_started",
    UtteranceEnded: "utterance_ended",
    OutputState: "output_state",
    SourceState: "source_state",
    EngineFailed: "engine_failed",
    VoiceFailed: "voice_failed",
}
