"""What a session says: the queue of utterances the API fills, read by the scheduler as a live source.

Each :class:`Utterance` is text for a voice, a whole piece of audio, or an open stream of audio chunks (a remote
microphone, a streaming TTS). The :class:`ControlSource` yields them in order, each wrapped in
:class:`~anchorcast.media.UtteranceStarted` and :class:`~anchorcast.media.UtteranceEnded` marks, which the
scheduler airs with the utterance's first and last frames. While the queue is empty the source yields nothing
and the scheduler airs the idle anchor on its own clock.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from anchorcast.media import (
    AudioChunk,
    Event,
    FloatAudio,
    StreamFormat,
    TextSegment,
    UtteranceEnded,
    UtteranceStarted,
)

UtteranceKind = Literal["text", "audio", "stream"]
UtteranceState = Literal["queued", "speaking", "done", "interrupted"]

_STREAM_POLL_S = 0.05


class QueueFull(Exception):
    """The session already holds as many utterances waiting to air as it may."""


@dataclass(eq=False)
class Utterance:
    """One thing to say, from the moment it is queued until it has aired (or was dropped)."""

    id: str
    kind: UtteranceKind
    text: str = ""
    voice: str | None = None
    samples: FloatAudio | None = None
    state: UtteranceState = "queued"
    queued_at: float = field(default_factory=time.time)
    started_at: float | None = None
    """Wall-clock time (Unix seconds) its first frame aired."""
    ended_at: float | None = None
    start_pts: float | None = None
    end_pts: float | None = None
    _chunks: queue.SimpleQueue[FloatAudio | None] = field(default_factory=queue.SimpleQueue, repr=False)
    _cancelled: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def duration(self) -> float | None:
        if self.start_pts is None or self.end_pts is None:
            return None
        return self.end_pts - self.start_pts

    def push(self, samples: FloatAudio) -> None:
        """More audio for a streamed utterance (at the session's sample rate)."""
        self._chunks.put(samples)

    def end_stream(self) -> None:
        """A streamed utterance has no more audio: it ends once what was pushed has aired."""
        self._chunks.put(None)

    def cancel(self) -> None:
        self._cancelled.set()
        self._chunks.put(None)

    def summary(self) -> dict[str, object]:
        return {
            "id": self.id, "kind": self.kind, "text": self.text, "voice": self.voice, "state": self.state,
            "queued_at": self.queued_at, "started_at": self.started_at, "ended_at": self.ended_at,
            "start_pts": self.start_pts, "end_pts": self.end_pts,
        }


class ControlSource:
    """A live source fed by the API: utterances play in order; :meth:`interrupt` drops them all."""

    live = True

    def __init__(self) -> None:
        self._queue: deque[Utterance] = deque()
        self._current: Utterance | None = None
        self._cond = threading.Condition()
        self._closed = False
        self._ids = itertools.count(1)
        self._segments = itertools.count(0)
        self._voices: dict[int, str] = {}
        self.sample_rate = 16000
        self._frame_samples = 640

    def open(self, fmt: StreamFormat) -> None:
        self.sample_rate = fmt.sample_rate
        self._frame_samples = round(fmt.sample_rate / fmt.fps)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            current = self._current
            self._cond.notify_all()
        if current is not None:
            current.cancel()

    # --- the API's side ----------------------------------------------------------------------------------

    def new_id(self) -> str:
        return f"u{next(self._ids)}"

    def enqueue(self, utterance: Utterance) -> None:
        """Queues ``utterance`` behind the others."""
        with self._cond:
            self._queue.append(utterance)
            self._cond.notify_all()

    def interrupt(self) -> list[Utterance]:
        """Drops every queued utterance and ends the one being read; returns them (current first)."""
        with self._cond:
            dropped = [u for u in (self._current, *self._queue) if u is not None]
            self._queue.clear()
            self._current = None
        for utterance in dropped:
            utterance.cancel()
        return dropped

    def voice_for(self, segment: TextSegment) -> str | None:
        """The voice an utterance asked for (None: the profile's), looked up once by the voice."""
        return self._voices.pop(segment.index, None)

    # --- the scheduler's side -------------------------------------------------------------------------

    def items(self) -> Iterator[TextSegment | AudioChunk | Event]:
        # One frame of silence starts the clock: the idle anchor is on air before anything is said.
        yield AudioChunk(np.zeros(self._frame_samples, np.float32), self.sample_rate)
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                utterance = self._current = self._queue.popleft()
            if utterance._cancelled.is_set():
                continue
            yield UtteranceStarted(0.0, utterance.id, utterance.text)
            yield from self._parts(utterance)
            with self._cond:
                if self._current is utterance:
                    self._current = None
            if not utterance._cancelled.is_set():
                yield UtteranceEnded(0.0, utterance.id, utterance.text)

    def _parts(self, utterance: Utterance) -> Iterator[TextSegment | AudioChunk]:
        if utterance.kind == "text":
            segment = TextSegment(utterance.text, next(self._segments))
            if utterance.voice:
                self._voices[segment.index] = utterance.voice
            yield segment
        elif utterance.kind == "audio":
            assert utterance.samples is not None
            yield AudioChunk(utterance.samples, self.sample_rate)
        else:
            while not utterance._cancelled.is_set():
                try:
                    samples = utterance._chunks.get(timeout=_STREAM_POLL_S)
                except queue.Empty:
                    if self._closed:
                        return
                    continue
                if samples is None or utterance._cancelled.is_set():
                    return
                yield AudioChunk(samples, self.sample_rate)
