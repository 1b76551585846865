"""The master audio timeline: what the audience hears, sample by sample, with speech spans and timed events.

Voices and raw-audio sources append to it; the renderer reads audio windows from it ahead of air time; the
playout thread reads each frame's samples when the frame airs and releases what is no longer needed. Everything is
indexed in samples at the stream's sample rate. Thread-safe.
"""

from __future__ import annotations

import bisect
import threading
import time
from dataclasses import dataclass, field, replace

import numpy as np

from anchorcast.media import Caption, Event, FloatAudio, Speech, SpeechEnded, SpeechStarted, Timing

_MIN_CAPACITY = 1 << 16


@dataclass(slots=True)
class SpeechSpan:
    """An utterance on the timeline, ``[start, end)`` in samples."""

    start: int
    end: int
    text: str = ""
    fade_out: bool = True
    """False when an interrupt cut the utterance: the mouth stops at once instead of blending out."""


@dataclass(slots=True)
class _TimedEvent:
    sample: int
    event: Event = field(compare=False)


class EnergyVad:
    """Marks speech in raw audio (microphones, audio files) by short-term energy with a hangover.

    Works incrementally in hops of ``hop_s``; a span opens after ``min_speech_s`` above ``threshold_db`` and
    closes after ``hangover_s`` below it.
    """

    def __init__(
        self,
        sample_rate: int,
        origin: int = 0,
        threshold_db: float = -38.0,
        hop_s: float = 0.02,
        min_speech_s: float = 0.06,
        hangover_s: float = 0.25,
    ) -> None:
        self.hop = max(1, round(hop_s * sample_rate))
        self.threshold = 10 ** (threshold_db / 20)
        self.min_hops = max(1, round(min_speech_s / hop_s))
        self.hangover_hops = max(1, round(hangover_s / hop_s))
        self._pending = np.zeros(0, np.float32)
        self._position = origin
        self._loud_run = 0
        self._quiet_run = 0
        self._open_at: int | None = None
        self._last_loud_end = 0

    def feed(self, samples: FloatAudio) -> list[tuple[str, int]]:
        """Returns ("start" | "end", sample) transitions found in ``samples``."""
        data = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        usable = len(data) - len(data) % self.hop
        self._pending = data[usable:].astype(np.float32, copy=True)
        transitions: list[tuple[str, int]] = []
        if usable == 0:
            return transitions
        hops = data[:usable].reshape(-1, self.hop)
        rms = np.sqrt(np.mean(np.square(hops, dtype=np.float64), axis=1))
        for loud in rms > self.threshold:
            self._position += self.hop
            if loud:
                self._loud_run += 1
                self._quiet_run = 0
                self._last_loud_end = self._position
                if self._open_at is None and self._loud_run >= self.min_hops:
                    self._open_at = self._position - self._loud_run * self.hop
                    transitions.append(("start", self._open_at))
            else:
                self._loud_run = 0
                self._quiet_run += 1
                if self._open_at is not None and self._quiet_run >= self.hangover_hops:
                    transitions.append(("end", self._last_loud_end))
                    self._open_at = None
        return transitions

    def skip(self, samples: int) -> list[tuple[str, int]]:
        """Advances over audio that is not to be analysed (speech with known spans); closes an open span."""
        transitions = self.flush()
        self._position += len(self._pending) + samples
        self._pending = np.zeros(0, np.float32)
        self._loud_run = self._quiet_run = 0
        return transitions

    def flush(self) -> list[tuple[str, int]]:
        if self._open_at is not None:
            self._open_at = None
            return [("end", self._last_loud_end)]
        return []


class Timeline:
    """A growing audio buffer with speech spans, phoneme timings and events, indexed in samples."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._buffer = np.zeros(_MIN_CAPACITY, np.float32)
        self._base = 0  # timeline sample held at _buffer[0]
        self._total = 0
        self._finished = False
        self._cond = threading.Condition()
        self._spans: list[SpeechSpan] = []
        self._phonemes: list[Timing] = []  # seconds on the timeline, sorted by start
        self._events: list[_TimedEvent] = []
        self._arrivals: list[tuple[int, float]] = []  # (end sample, monotonic time it arrived)
        self._vad: EnergyVad | None = None

    # --- writing ------------------------------------------------------------------------------------------

    def append_speech(self, speech: Speech, events: list[Event] | None = None) -> SpeechSpan:
        """Appends a voice's utterance (already at the timeline's rate) and records its span and timings.

        ``events`` (cues, captions) are placed at the utterance's start with their pts rewritten.
        """
        if speech.sample_rate != self.sample_rate:
            raise ValueError(f"speech at {speech.sample_rate} Hz on a {self.sample_rate} Hz timeline")
        with self._cond:
            start = self._total
            offset = start / self.sample_rate
            span = SpeechSpan(start, start + len(speech.audio), speech.text)
            self._spans.append(span)
            self._phonemes.extend(p.shifted(offset) for p in speech.phonemes)
            for event in events or []:
                self._events.append(_TimedEvent(start, _at(event, offset)))
            self._write(speech.audio, detect=False)
            return span

    def append_audio(self, samples: FloatAudio) -> None:
        """Appends raw audio (a microphone, a file); speech spans come from an energy VAD."""
        with self._cond:
            if self._vad is None:
                self._vad = EnergyVad(self.sample_rate, origin=self._total)
            self._write(samples, detect=True)

    def append_silence(self, samples: int) -> None:
        if samples > 0:
            with self._cond:
                self._write(np.zeros(samples, np.float32), detect=True)

    def pad_to(self, end: int) -> int:
        """Appends silence up to sample ``end`` unless the audio is already there or the timeline is finished;
        returns how many samples were added. Atomic: a writer can never slip audio in between the check and the
        padding."""
        with self._cond:
            missing = end - self._total
            if self._finished or missing <= 0:
                return 0
            self._write(np.zeros(missing, np.float32), detect=True)
            return missing

    def add_event(self, event: Event, sample: int | None = None) -> None:
        """Places ``event`` at ``sample`` (default: the current end of the timeline)."""
        with self._cond:
            at = self._total if sample is None else sample
            self._events.append(_TimedEvent(at, _at(event, at / self.sample_rate, absolute=True)))
            self._events.sort(key=lambda e: e.sample)

    def finish(self) -> None:
        """No more audio will come; readers past the end get silence."""
        with self._cond:
            if self._vad is not None:
                for kind, sample in self._vad.flush():
                    self._mark_vad(kind, sample)
            self._finished = True
            self._cond.notify_all()

    def _mark_vad(self, kind: str, sample: int) -> None:
        if kind == "start":
            self._spans.append(SpeechSpan(sample, 1 << 62))
        elif self._spans:
            self._spans[-1].end = sample

    def _write(self, samples: FloatAudio, detect: bool = True) -> None:
        if self._vad is not None:
            transitions = self._vad.feed(samples) if detect else self._vad.skip(len(samples))
            for kind, sample in transitions:
                self._mark_vad(kind, sample)
        n = len(samples)
        used = self._total - self._base
        if used + n > len(self._buffer):
            grown = np.zeros(max(2 * len(self._buffer), used + n), np.float32)
            grown[:used] = self._buffer[:used]
            self._buffer = grown
        self._buffer[used : used + n] = samples
        self._total += n
        self._arrivals.append((self._total, time.monotonic()))
        self._cond.notify_all()

    # --- reading ------------------------------------------------------------------------------------------

    @property
    def total(self) -> int:
        return self._total

    @property
    def finished(self) -> bool:
        return self._finished

    def wait_for(self, end: int, timeout: float | None = None) -> bool:
        """Blocks until the timeline holds samples up to ``end`` or is finished; False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._total >= end or self._finished, timeout)

    def wait_for_any(self, timeout: float | None = None) -> bool:
        return self.wait_for(1, timeout)

    def read(self, start: int, end: int) -> FloatAudio:
        """Samples ``[start, end)``, zero where the timeline has none (before 0, past the end, released)."""
        out = np.zeros(max(0, end - start), np.float32)
        with self._cond:
            lo, hi = max(start, self._base), min(end, self._total)
            if hi > lo:
                out[lo - start : hi - start] = self._buffer[lo - self._base : hi - self._base]
        return out

    def arrival_time(self, sample: int) -> float | None:
        """Monotonic time at which ``sample`` entered the host, if it has."""
        with self._cond:
            i = bisect.bisect_right(self._arrivals, (sample, float("inf")))
            return self._arrivals[i][1] if i < len(self._arrivals) else None

    def speech_weight(self, seconds: float, blend: float) -> float:
        """Speech presence at ``seconds``: 1 inside an utterance, ramping linearly over ``blend`` seconds
        before its start and after its end, 0 elsewhere."""
        t = seconds * self.sample_rate
        ramp = max(blend * self.sample_rate, 1.0)
        weight = 0.0
        with self._cond:
            for span in reversed(self._spans):
                tail = ramp if span.fade_out else 0.0
                if span.end + tail < t:
                    break
                rise = (t - (span.start - ramp)) / ramp
                fall = ((span.end + tail) - t) / ramp if span.fade_out else float(t < span.end)
                weight = max(weight, min(1.0, rise, fall))
        return max(0.0, weight)

    def phonemes_between(self, start: float, end: float) -> tuple[Timing, ...]:
        """Phonemes overlapping ``[start, end)`` seconds."""
        with self._cond:
            i = bisect.bisect_left(self._phonemes, start, key=lambda p: p.end)
            found = []
            for p in self._phonemes[i:]:
                if p.start >= end:
                    break
                if p.end > start:
                    found.append(p)
            return tuple(found)

    def events_between(self, start: int, end: int) -> list[Event]:
        """Timed events and speech starts/ends whose sample lies in ``[start, end)``."""
        found: list[tuple[int, int, Event]] = []
        with self._cond:
            for span in self._spans:
                if start <= span.start < end:
                    found.append((span.start, 1, SpeechStarted(span.start / self.sample_rate, span.text)))
                if start <= span.end < end:
                    found.append((span.end, 2, SpeechEnded(span.end / self.sample_rate, span.text)))
            for timed in self._events:
                if start <= timed.sample < end:
                    found.append((timed.sample, 0, timed.event))
        return [event for _, _, event in sorted(found, key=lambda f: (f[0], f[1]))]

    def speech_spans(self) -> list[SpeechSpan]:
        with self._cond:
            return [SpeechSpan(s.start, s.end, s.text, s.fade_out) for s in self._spans]

    def truncate(self, sample: int) -> None:
        """Drops everything from ``sample`` on (an interrupt of read-ahead speech): audio, utterances (cut
        short), timings, events. Audio appended afterwards starts at ``sample``."""
        with self._cond:
            sample = max(sample, self._base)
            if sample >= self._total:
                return
            self._total = sample
            self._forget_from(sample)
            kept = [(end, t) for end, t in self._arrivals if end <= sample]
            straddling = next(((sample, t) for end, t in self._arrivals if end > sample), None)
            if straddling is not None and (not kept or kept[-1][0] < sample):
                kept.append(straddling)
            self._arrivals = kept
            if self._vad is not None:
                self._vad = EnergyVad(self.sample_rate, origin=sample)

    def mute_from(self, sample: int) -> None:
        """Silences the audio from ``sample`` on and forgets its utterances, timings and events, keeping the
        timeline's length (an interrupt of live audio: the latency buffer stays as it was)."""
        with self._cond:
            sample = max(sample, self._base)
            if sample >= self._total:
                return
            self._buffer[sample - self._base : self._total - self._base] = 0.0
            self._forget_from(sample)
            if self._vad is not None:
                self._vad = EnergyVad(self.sample_rate, origin=self._total)

    def _forget_from(self, sample: int) -> None:
        with self._cond:
            self._spans = [s for s in self._spans if s.start < sample]
            for span in self._spans:
                if span.end > sample:
                    span.end = sample
                    span.fade_out = False
            self._phonemes = [
                p if p.end * self.sample_rate <= sample else Timing(p.label, p.start, sample / self.sample_rate)
                for p in self._phonemes
                if p.start * self.sample_rate < sample
            ]
            self._events = [e for e in self._events if e.sample < sample]
            self._cond.notify_all()

    def release_before(self, sample: int) -> None:
        """Frees audio, spans, timings and events wholly before ``sample`` (already aired)."""
        with self._cond:
            sample = min(sample, self._total)
            drop = sample - self._base
            if drop > len(self._buffer) // 2:
                used = self._total - sample
                self._buffer[:used] = self._buffer[drop : drop + used]
                self._base = sample
            seconds = sample / self.sample_rate
            self._spans = [s for s in self._spans if s.end >= sample]
            keep = bisect.bisect_left(self._phonemes, seconds, key=lambda p: p.end)
            del self._phonemes[:keep]
            self._events = [e for e in self._events if e.sample >= sample]
            keep_arrivals = bisect.bisect_left(self._arrivals, (sample, 0.0))
            del self._arrivals[: max(0, keep_arrivals - 1)]


def _at(event: Event, seconds: float, absolute: bool = False) -> Event:
    """``event`` with its times moved onto the timeline (relative to ``seconds`` unless ``absolute``)."""
    shift = seconds - event.pts if absolute else seconds
    if isinstance(event, Caption):
        end = None if event.end is None else event.end + shift
        return replace(event, pts=event.pts + shift, end=end, words=tuple(w.shifted(shift) for w in event.words))
    return replace(event, pts=event.pts + shift)
