"""The small protocols the scheduler drives directly, and the settings schema components declare.

A registration hook hands the host a *factory* ``factory(host, settings) -> component``. ``settings`` is the
component's profile table, validated against the :class:`Setting` schema given at registration, with defaults
filled in and file paths resolved against the profile's folder. Factories import heavy libraries; plugin modules
must not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from anchorcast.media import (
    AudioChunk,
    Event,
    FloatAudio,
    Image,
    Speech,
    StreamFormat,
    TextSegment,
    Timing,
    VideoFrame,
)

if TYPE_CHECKING:
    from anchorcast.host import Host

ComponentKind = Literal["source", "voice", "engine", "output"]

_REQUIRED: Any = object()


@dataclass(frozen=True)
class Setting:
    """One key a component accepts in its profile table.

    ``type`` is the Python type (or tuple of types) the TOML value must have (``float`` also accepts ``int``).
    ``kind="file"``/``"dir"``/``"path"`` (either) means a path that must exist; relative paths are resolved
    against the profile's folder. ``choices`` restricts the value; ``required`` settings have no default.
    """

    type: type | tuple[type, ...]
    default: Any = _REQUIRED
    help: str = ""
    choices: tuple[Any, ...] | None = None
    kind: Literal["value", "file", "dir", "path"] = "value"
    minimum: float | None = None
    maximum: float | None = None
    secret_env: str | None = None
    """For secrets: the environment variable the value comes from (never the profile file)."""

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


Schema = Mapping[str, Setting]
Factory = Callable[["Host", dict[str, Any]], Any]


# --- what the scheduler hands a lip engine ---------------------------------------------------------------


@dataclass(frozen=True, slots=True, eq=False)
class FrameJob:
    """Everything a lip engine needs to draw frame ``index``.

    ``context`` holds the timeline audio from ``lookbehind`` samples before the frame's first sample to
    ``lookahead`` samples after its last (as the engine asked, zero-padded outside the timeline);
    the frame's own samples are ``context[offset:offset + frame_samples]``.
    ``speech`` is the blended speech presence in [0, 1]: 0 in silence, 1 in speech, ramping over the
    profile's blend time around each utterance. ``phonemes`` are the known phonemes overlapping the context
    window, with times in seconds on the host timeline (empty when the voice gave none or the input is raw audio).
    """

    index: int
    pts: float
    context: FloatAudio
    offset: int
    frame_samples: int
    speech: float
    phonemes: tuple[Timing, ...] = ()

    @property
    def audio(self) -> FloatAudio:
        """The frame's own samples."""
        return self.context[self.offset : self.offset + self.frame_samples]


# --- the protocols -------------------------------------------------------------------------------------------


@runtime_checkable
class Source(Protocol):
    """Produces script segments for a voice to read, or audio chunks that go straight onto the timeline.

    ``live`` sources (a microphone, the studio server's API) deliver in real time; others may be read ahead.
    A source may also yield an :class:`~anchorcast.media.Event` of its own (an utterance's start or end mark):
    it airs where the audio around it airs (a start with the first frame of the audio that follows it).
    """

    live: bool

    def open(self, fmt: StreamFormat) -> None: ...

    def items(self) -> Iterator[TextSegment | AudioChunk | Event]: ...

    def close(self) -> None: ...


@runtime_checkable
class Voice(Protocol):
    """Text to speech. ``synthesize`` yields one :class:`Speech` per sentence, as soon as each is ready."""

    def open(self, fmt: StreamFormat) -> None: ...

    def synthesize(self, segment: TextSegment) -> Iterator[Speech]: ...

    def close(self) -> None: ...


@runtime_checkable
class LipEngine(Protocol):
    """Draws the anchor for batches of frames.

    ``lookbehind`` and ``lookahead`` are audio context in seconds the engine needs around each frame;
    ``max_batch`` bounds the batches the scheduler forms (it picks the size from measured latency).
    ``idle`` must be cheap: it is the overrun fallback and the frame shown in silence.
    An engine may also have a ``matte`` attribute: once open, the anchor's silhouette as an (H, W) uint8 alpha
    in output pixels, which the browser overlay uses to cut the anchor out (absent or None: the whole frame).
    An engine may also have ``set_pacing(live: bool)``: the host calls it before ``open`` with whether the run is
    paced on the wall clock (latency matters) or renders as fast as it can (throughput matters, e.g. larger
    batches in ``max_batch`` and work overlapped across cores).
    """

    lookbehind: float
    lookahead: float
    max_batch: int

    def open(self, fmt: StreamFormat) -> None: ...

    def render(self, jobs: Sequence[FrameJob]) -> list[Image]: ...

    def idle(self, index: int) -> Image: ...

    def close(self) -> None: ...


@runtime_checkable
class Output(Protocol):
    """Consumes frames with their audio. ``live`` outputs are paced on the wall clock by the host."""

    live: bool

    def open(self, fmt: StreamFormat) -> None: ...

    def write(self, frame: VideoFrame, audio: AudioChunk) -> None: ...

    def close(self) -> None: ...


def component_name(component: object, names: Mapping[int, str]) -> str:
    """What events and logs call a component: the name its profile stage uses (``piper``, ``viseme``), from
    ``names`` (by ``id``, as the host opened them), else its own ``component_name``, else its class's name."""
    return names.get(id(component)) or getattr(component, "component_name", None) or type(component).__name__


def resolve_path(value: str, base: Path) -> Path:
    """A profile path: ``~`` expanded, relative paths taken from the profile's folder."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)
