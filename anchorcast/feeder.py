"""The scheduler's feeder: source -> voice -> timeline, on a thread of its own (part of
:class:`~anchorcast.scheduler.Scheduler`, which holds the state both share).

Text is read by the voice sentence by sentence and laid on the timeline with pauses; audio chunks go on as they
come. A live source's own delay (a denoising microphone) is already out of the latency budget (the scheduler
took it), so the budget counts from the sound reaching the source; the feeder records it as ``source_delay``.
Live audio that arrives after the playout ran dry airs one latency budget later; a source's own events
(utterance marks) air with the audio around them; an interrupt discards what was begun before it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

from anchorcast.components import component_name
from anchorcast.errors import AnchorcastError
from anchorcast.media import (
    AudioChunk,
    Caption,
    Cue,
    Event,
    Speech,
    TextSegment,
    UtteranceEnded,
    UtteranceStarted,
    VoiceFailed,
)
from anchorcast.pacing import POLL_S

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from anchorcast.clock import MediaClock
    from anchorcast.components import LipEngine, Source, Voice
    from anchorcast.media import StreamFormat
    from anchorcast.metrics import RunMetrics
    from anchorcast.pacing import SchedulerConfig
    from anchorcast.resampling import Resampler
    from anchorcast.timeline import Timeline


class Feeding:
    """The feeder's half of the scheduler."""

    fmt: StreamFormat
    config: SchedulerConfig
    clock: MediaClock
    timeline: Timeline
    metrics: RunMetrics
    source: Source
    voice: Voice | None
    voice_fallback: Voice | None
    _failed_voice: Voice | None
    _names: Mapping[int, str]
    engine: LipEngine
    _resample: Resampler
    _stop: threading.Event
    _feed_lock: threading.Lock
    _generation: int
    _lead_in_done: bool
    _starts: list[Event]
    _underran: bool
    _air_start: float | None
    _next_to_air: int

    def post_event(self, event: Event) -> None:  # the scheduler's
        raise NotImplementedError

    def _feed(self) -> None:
        config = self.config
        if (added := getattr(self.source, "added_latency_s", 0.0)) and config.live:
            self.metrics.observe("source_delay", added * 1000)
        pause = self.clock.seconds_to_samples(config.pause_ms / 1000)
        spoken_before = False
        for item in self._items():
            if self._stop.is_set():
                return
            self._wait_for_room()
            generation = self._generation  # an interrupt from here on discards this item's speech
            if generation and not self.source.live:
                break  # an interrupt drops everything a script or a file had still to say
            if isinstance(item, Event):
                self._place_mark(item, generation)
                continue
            if isinstance(item, AudioChunk):
                samples = self._resample.chunk(item.samples, item.sample_rate)
                with self._feed_lock:
                    if generation != self._generation and not self.source.live:
                        break
                    self._lead_in()
                    gap = self._resume_live()
                    self._place_starts()
                    self.timeline.append_audio(samples)
                    spoken_before = spoken_before and not gap
                continue
            for number, speech in enumerate(self._speak(item)):
                if self._stop.is_set():
                    return
                events: list[Event] = []
                if item.cue and number == 0:
                    events.append(Cue(0.0, item.cue))
                if speech.text:
                    events.append(Caption(0.0, speech.text, True, speech.duration, "voice", speech.words))
                speech = self._at_timeline_rate(speech)
                with self._feed_lock:
                    if generation != self._generation:
                        break  # interrupted while this segment was being synthesized
                    self._lead_in()
                    if not self._resume_live() and spoken_before:
                        self.timeline.append_silence(pause)
                    self._place_starts()
                    self.timeline.append_speech(speech, events)
                    spoken_before = True
        with self._feed_lock:  # an interrupt in between would cut the tail and not add it back
            self._lead_in()
            if len(tail := self._resample.flush()) and not (self._generation and not self.source.live):
                self.timeline.append_audio(tail)
            self.timeline.append_silence(self.clock.seconds_to_samples(config.tail_ms / 1000))
            self.timeline.finish()

    def _place_mark(self, mark: Event, generation: int) -> None:
        """A source's own event (an utterance's start or end). A start airs with the first frame of the audio
        that follows it; anything else where the audio so far ends."""
        with self._feed_lock:
            if generation != self._generation:
                return
            if isinstance(mark, UtteranceStarted):
                self._restore_voice()
                self._starts.append(mark)
                return
            if isinstance(mark, UtteranceEnded):
                self._place_starts()  # an utterance that gave no audio still starts before it ends
            self.timeline.add_event(mark)
            if isinstance(mark, UtteranceEnded) and self.source.live:
                # room for the mouth to close: the frames blending out of speech need audio after it
                closing = self.config.blend_ms / 1000 + self.engine.lookahead + 2 * self.fmt.frame_duration
                self.timeline.append_silence(self.clock.seconds_to_samples(closing))

    def _place_starts(self) -> None:
        for mark in self._starts:
            self.timeline.add_event(mark)
        self._starts.clear()

    def _resume_live(self) -> bool:
        """Live audio that arrives after the playout ran dry airs one latency budget from now, as the first
        audio did: without this it would be due at once and every frame of it would be late. True when a gap
        was inserted."""
        if not (self.config.live and self.source.live and self._underran and self._air_start is not None):
            return False
        self._underran = False
        due = time.monotonic() + self.config.latency_budget_ms / 1000 - self._air_start
        return self.timeline.pad_to(self.clock.seconds_to_samples(due)) > 0

    def _lead_in(self) -> None:
        """The silence before the first words, appended with the first audio: the live clock starts when real
        audio is ready, not when the feeder started waiting for a slow voice. A live source (a microphone) gets
        none: it would only add to the latency."""
        if not self._lead_in_done:
            self._lead_in_done = True
            if not self.source.live:
                self.timeline.append_silence(self.clock.seconds_to_samples(self.config.lead_in_ms / 1000))

    def _items(self) -> Iterator[TextSegment | AudioChunk | Event]:
        return iter(self.source.items())

    def _speak(self, segment: TextSegment) -> Iterator[Speech]:
        if self.voice is None:
            raise AnchorcastError(
                f"the source gave text ({segment.text[:40]!r}) but the profile names no voice",
                hint='add a [voice] table, e.g. use = "piper"',
            )
        spoken_to = 0  # how much of the segment's text the voice has read so far
        try:
            for speech in self._timed(self.voice, segment):
                spoken_to = _end_of(speech.text, segment.text, spoken_to)
                yield speech
        except Exception as error:  # any voice fault: the fallback voice reads on
            if self.voice_fallback is None or self.voice is self.voice_fallback or self._stop.is_set():
                raise
            rest = segment.text[spoken_to:].strip()
            self._voice_failed(error)
            if rest:
                yield from self._timed(self.voice, replace(segment, text=rest))

    def _voice_failed(self, error: BaseException) -> None:
        """The fallback voice reads the rest of the utterance (of a script: the rest of the run); reported once,
        with the reason."""
        assert self.voice is not None and self.voice_fallback is not None
        failed, fallback = component_name(self.voice, self._names), component_name(self.voice_fallback, self._names)
        detail = str(error) or type(error).__name__
        log.error("the voice %s failed (%s); %s reads the rest of the utterance", failed, detail, fallback)
        self.metrics.count("voice_failures")
        self._failed_voice, self.voice = self.voice, self.voice_fallback
        self.post_event(VoiceFailed(self.clock.frame_pts(self._next_to_air), failed, fallback, detail))

    def _restore_voice(self) -> None:
        """A new utterance (a served session's next ``say``) is read by the voice that failed before: its
        fault may have been that utterance's own (another voice it asked for, a sentence it could not read)."""
        if self._failed_voice is not None:
            self.voice, self._failed_voice = self._failed_voice, None

    def _timed(self, voice: Voice, segment: TextSegment) -> Iterator[Speech]:
        started = time.perf_counter()
        first = True
        for speech in voice.synthesize(segment):
            elapsed = (time.perf_counter() - started) * 1000
            self.metrics.observe("voice_first_audio" if first else "voice_sentence", elapsed)
            first = False
            if speech.duration > 0:
                self.metrics.observe("voice_rtf_x1000", elapsed / speech.duration)
            if speech.segment is None:
                speech = Speech(speech.audio, speech.sample_rate, speech.text, speech.phonemes, speech.words, segment)
            yield speech
            started = time.perf_counter()

    def _at_timeline_rate(self, speech: Speech) -> Speech:
        if speech.sample_rate == self.fmt.sample_rate:
            return speech
        audio = self._resample(speech.audio, speech.sample_rate)
        return Speech(audio, self.fmt.sample_rate, speech.text, speech.phonemes, speech.words, speech.segment)

    def _wait_for_room(self) -> None:
        ahead_limit = self.clock.seconds_to_samples(self.config.audio_ahead_s)
        while not self._stop.is_set():
            aired_sample = self.clock.frame_start(self._next_to_air)
            if self.timeline.total - aired_sample < ahead_limit:
                return
            self._stop.wait(POLL_S)


def _end_of(spoken: str, text: str, start: int) -> int:
    """Where ``spoken`` (a sentence the voice read) ends in ``text``, searching from ``start``; ``start`` when the
    voice reworded it beyond recognition (the fallback then rereads from the last sentence found)."""
    found = text.find(spoken.strip(), start) if spoken.strip() else -1
    return found + len(spoken.strip()) if found >= 0 else start
