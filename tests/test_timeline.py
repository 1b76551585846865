"""The master timeline: exact audio, speech spans, blend weights, events, release."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from anchorcast.media import Caption, Cue, Speech, Timing
from anchorcast.timeline import EnergyVad, Timeline
from tests.components import tone

RATE = 16000


def test_reads_are_exact_and_zero_padded() -> None:
    timeline = Timeline(RATE)
    audio = np.arange(1000, dtype=np.float32) / 1000
    timeline.append_audio(audio)
    assert np.array_equal(timeline.read(100, 200), audio[100:200])
    window = timeline.read(-10, 10)
    assert not window[:10].any() and np.array_equal(window[10:], audio[:10])
    assert not timeline.read(990, 1010)[10:].any()


def test_buffer_growth_and_release_keep_the_timeline_intact() -> None:
    timeline = Timeline(RATE)
    pieces = [np.full(30_000, i, np.float32) for i in range(10)]
    for piece in pieces:
        timeline.append_audio(piece)
        timeline.release_before(timeline.total - 40_000)
    assert timeline.total == 300_000
    assert np.array_equal(timeline.read(270_000, 300_000), pieces[9])
    assert not timeline.read(0, 100).any()  # released audio reads as silence, never as garbage


def test_speech_spans_timings_and_events_are_placed_on_the_timeline() -> None:
    timeline = Timeline(RATE)
    timeline.append_silence(RATE // 2)
    speech = Speech(tone(1.0, RATE), RATE, "hello", phonemes=(Timing("h", 0.0, 0.1), Timing("ə", 0.1, 0.3)))
    span = timeline.append_speech(speech, [Cue(0.0, "Studio"), Caption(0.0, "hello", True, 1.0)])
    assert (span.start, span.end) == (RATE // 2, RATE // 2 + RATE)
    assert timeline.phonemes_between(0.55, 0.65) == (Timing("h", 0.5, 0.6), Timing("ə", 0.6, 0.8))
    assert timeline.phonemes_between(0.0, 0.5) == ()
    kinds = [(e.kind, e.pts) for e in timeline.events_between(0, 2 * RATE)]
    assert kinds == [("cue", 0.5), ("caption", 0.5), ("speech_started", 0.5), ("speech_ended", 1.5)]
    with pytest.raises(ValueError):
        timeline.append_speech(Speech(tone(0.1, 22050), 22050))


def test_speech_weight_ramps_around_utterances() -> None:
    timeline = Timeline(RATE)
    timeline.append_silence(RATE)
    timeline.append_speech(Speech(tone(1.0, RATE), RATE))
    timeline.append_silence(RATE)
    blend = 0.1
    assert timeline.speech_weight(0.5, blend) == 0
    assert timeline.speech_weight(0.95, blend) == pytest.approx(0.5)
    assert timeline.speech_weight(1.5, blend) == 1
    assert timeline.speech_weight(2.05, blend) == pytest.approx(0.5)
    assert timeline.speech_weight(2.5, blend) == 0


def test_vad_finds_speech_in_raw_audio_incrementally() -> None:
    signal = np.concatenate([np.zeros(RATE, np.float32), tone(0.5, RATE, 200, 0.3), np.zeros(RATE, np.float32)])
    vad = EnergyVad(RATE)
    transitions = []
    for i in range(0, len(signal), 333):  # odd chunk sizes on purpose
        transitions += vad.feed(signal[i:i + 333])
    transitions += vad.flush()
    assert [kind for kind, _ in transitions] == ["start", "end"]
    assert transitions[0][1] == pytest.approx(RATE, abs=320)
    assert transitions[1][1] == pytest.approx(1.5 * RATE, abs=320)


def test_wait_for_wakes_when_audio_arrives() -> None:
    timeline = Timeline(RATE)
    assert not timeline.wait_for(100, timeout=0.01)
    threading.Timer(0.05, lambda: timeline.append_silence(200)).start()
    assert timeline.wait_for(100, timeout=2)
    assert timeline.arrival_time(150) is not None and timeline.arrival_time(500) is None
    timeline.finish()
    assert timeline.wait_for(10_000, timeout=0.01)  # finished: nothing more will come


def test_truncate_and_mute_cut_speech_without_a_fade() -> None:
    timeline = Timeline(RATE)
    timeline.append_silence(RATE)
    speech = Speech(tone(2.0, RATE), RATE, "cut me", phonemes=(Timing("a", 0.0, 1.0), Timing("b", 1.0, 2.0)))
    timeline.append_speech(speech, [Caption(0.0, "cut me")])
    muted = Timeline(RATE)
    muted.append_silence(RATE)
    muted.append_speech(speech)

    timeline.truncate(2 * RATE)  # one second into the utterance
    assert timeline.total == 2 * RATE
    assert timeline.phonemes_between(0, 10) == (Timing("a", 1.0, 2.0),)
    assert timeline.speech_weight(1.99, 0.1) == 1 and timeline.speech_weight(2.01, 0.1) == 0  # no blend out
    timeline.append_silence(RATE // 2)
    assert not timeline.read(2 * RATE, timeline.total).any()

    muted.mute_from(2 * RATE)
    assert muted.total == 3 * RATE  # the length (a live latency buffer) is kept
    assert not muted.read(2 * RATE, 3 * RATE).any() and muted.read(RATE, 2 * RATE).any()
    assert [e.kind for e in muted.events_between(0, 4 * RATE)] == ["speech_started", "speech_ended"]
    assert muted.events_between(0, 4 * RATE)[1].pts == 2.0


def test_vad_positions_stay_on_the_timeline_across_silence_and_speech() -> None:
    timeline = Timeline(RATE)
    timeline.append_silence(RATE // 2)  # a lead-in before the first raw audio
    timeline.append_audio(np.zeros(RATE // 2, np.float32))
    timeline.append_speech(Speech(np.zeros(RATE // 4, np.float32), RATE))  # known speech: not analysed
    timeline.append_audio(np.concatenate([tone(0.5, RATE, 200, 0.3), np.zeros(RATE, np.float32)]))
    timeline.finish()
    spans = timeline.speech_spans()
    detected = spans[-1]
    assert detected.start == pytest.approx(1.25 * RATE, abs=320)
    assert detected.end == pytest.approx(1.75 * RATE, abs=320)
