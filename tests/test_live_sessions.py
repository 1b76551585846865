"""What a long-running session needs from the scheduler and the host: live audio that resumes after a gap keeps
its latency budget, a source's utterance marks air with their audio, an interrupt drops speech read far ahead,
events posted after a run still reach plugins, and a failed output is closed once, off the playout thread."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from fractions import Fraction
from typing import Any

import numpy as np
import pytest

from anchorcast.host import Host
from anchorcast.media import AudioChunk, Cue, Event, StreamFormat, UtteranceEnded, UtteranceStarted
from anchorcast.plugin_manager import PluginPolicy
from anchorcast.scheduler import Scheduler, SchedulerConfig
from tests.components import CollectOutput, LevelEngine, RecordingPlugin, tone
from tests.conftest import make_profile

FMT = StreamFormat(64, 48, Fraction(25), 16000)
RATE = FMT.sample_rate
LIVE = SchedulerConfig(live=True, latency_budget_ms=300, lead_in_ms=0, tail_ms=0)


class ScriptedLiveSource:
    """A live source that yields its steps in order; a number is a pause in seconds (nothing arrives)."""

    live = True

    def __init__(self, steps: list[Any]) -> None:
        self.steps = steps
        self.yielded_at: dict[int, float] = {}

    def open(self, fmt: StreamFormat) -> None:
        pass

    def items(self) -> Iterator[Any]:
        for number, step in enumerate(self.steps):
            if isinstance(step, (int, float)):
                time.sleep(step)
                continue
            self.yielded_at[number] = time.monotonic()
            yield step

    def close(self) -> None:
        pass


def run_live(steps: list[Any], engine: LevelEngine | None = None, stop_after: float = 0.0,
             during: Any = None) -> tuple[Scheduler, CollectOutput, list[Event], ScriptedLiveSource]:
    source, output, events = ScriptedLiveSource(steps), CollectOutput(live=True), []
    engine = engine or LevelEngine()
    engine.open(FMT)
    scheduler = Scheduler(FMT, LIVE, source, None, engine, [("out", output)], emit=events.append)
    total = sum(s for s in steps if isinstance(s, (int, float))) + stop_after
    threading.Timer(total, scheduler.stop).start()
    if during is not None:
        during(scheduler)
    scheduler.run()
    return scheduler, output, events, source


def first_loud_frame(output: CollectOutput, after: int = 0) -> int:
    levels = [float(np.abs(chunk.samples).max()) for chunk in output.audio]
    return next(i for i, level in enumerate(levels) if i >= after and level > 0.1)


def test_live_audio_after_a_gap_airs_one_latency_budget_later_without_overruns() -> None:
    silence = AudioChunk(np.zeros(640, np.float32), RATE)
    speech = AudioChunk(tone(1.0, RATE), RATE)
    scheduler, output, _, source = run_live([silence, 1.0, speech], LevelEngine(delay_per_frame=0.01),
                                            stop_after=2.0)
    report = scheduler.report()
    assert report["silence_underruns"] > 10  # the playout ran dry during the gap, as an idle session does
    assert report["overruns"] == 0
    frame = first_loud_frame(output)
    latency = output.times[frame] - source.yielded_at[2]
    assert latency == pytest.approx(0.3, abs=0.06)
    assert output.values[frame + 2] > 0  # drawn from its audio, not repeated or idle


def test_utterance_marks_air_with_the_first_and_last_frames_of_their_audio() -> None:
    silence = AudioChunk(np.zeros(640, np.float32), RATE)
    steps = [silence, 0.6, UtteranceStarted(0.0, "u1", "hi"), AudioChunk(tone(0.48, RATE), RATE),
             UtteranceEnded(0.0, "u1", "hi")]
    _, output, events, _ = run_live(steps, stop_after=1.5)
    started = next(e for e in events if isinstance(e, UtteranceStarted))
    ended = next(e for e in events if isinstance(e, UtteranceEnded))
    frame = first_loud_frame(output)
    assert started.pts == pytest.approx(output.audio[frame].pts, abs=1 / 25)
    assert ended.pts - started.pts == pytest.approx(0.48, abs=1e-3)
    # the mouth closes after the words: the frames blending out are drawn (from silence: level 1), not repeated
    after = round(ended.pts * 25) + 1
    assert output.values[after] == pytest.approx(1, abs=0.5)
    assert not [e for e in events if e.kind == "overrun"]


def test_an_interrupt_drops_live_speech_read_far_ahead() -> None:
    silence = AudioChunk(np.zeros(640, np.float32), RATE)
    steps = [silence, 0.2, AudioChunk(tone(10.0, RATE), RATE), 1.0, AudioChunk(tone(0.5, RATE, 600), RATE)]
    scheduler_box: list[Scheduler] = []
    threading.Timer(0.8, lambda: scheduler_box[0].interrupt("test")).start()
    _, output, events, source = run_live(steps, stop_after=1.5, during=scheduler_box.append)
    cut = round(next(e for e in events if e.kind == "interrupt").pts * 25)
    resumed = first_loud_frame(output, after=cut + 1)
    assert output.times[resumed] - source.yielded_at[4] == pytest.approx(0.3, abs=0.06)
    assert not np.concatenate([c.samples for c in output.audio[cut:resumed]]).any()


def test_events_posted_after_a_run_still_reach_plugins() -> None:
    plugin = RecordingPlugin()
    host = Host.create(PluginPolicy(), entry_points=False, extra_plugins=(plugin,))
    host.run(host.load_profile(None, raw=make_profile()))
    assert host.scheduler is None
    host.post_event(Cue(0.0, "After the show"))
    assert [e.name for kind, e in plugin.calls if kind == "event" and isinstance(e, Cue)] == ["After the show"]


class FailingOutput(CollectOutput):
    """Fails at frame 20; its close is slow, as a close on a dead network is."""

    def __init__(self) -> None:
        super().__init__(live=True)
        self.closes = 0

    def write(self, frame: Any, audio: AudioChunk) -> None:
        if frame.index == 20:
            raise OSError("broken pipe")
        super().write(frame, audio)

    def close(self) -> None:
        self.closes += 1
        time.sleep(1.0)
        super().close()


def test_a_failed_output_is_closed_once_and_never_stalls_the_frames_on_air() -> None:
    plugin = RecordingPlugin()
    host = Host.create(PluginPolicy(), entry_points=False, extra_plugins=(plugin,))
    profile = host.load_profile(None, raw=make_profile(
        [("a sentence long enough to stream for a while, on and on", "")],
        outputs={"collect": {"use": "test-collect", "live": True}}))
    failing = FailingOutput()
    report = host.run(profile, extra_outputs=[("side", failing)])
    main = plugin.outputs[0]
    assert failing.closes == 1 and failing.closed and failing.indices == list(range(20))
    assert report["failed_outputs"] == {"side": "OSError: broken pipe"}
    gaps = np.diff(main.times[15:30])
    assert gaps.max() < 0.2, gaps  # paced at 40 ms; a close on the playout thread would leave a 1 s hole
    states = [e for kind, e in plugin.calls if kind == "event" and e.kind == "output_state"]
    assert [(e.output, e.state) for e in states] == [("side", "failed")]


class SlowVoice:
    """A voice that takes its time over a sentence and records whether it was closed while speaking."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.speaking = False
        self.closed_while_speaking = False
        self.closed = False

    def open(self, fmt: StreamFormat) -> None:
        pass

    def synthesize(self, segment: Any) -> Iterator[Any]:
        from anchorcast.media import Speech

        self.speaking = True
        time.sleep(self.seconds)
        self.speaking = False
        yield Speech(tone(0.5, RATE), RATE, segment.text)

    def close(self) -> None:
        self.closed_while_speaking = self.speaking
        self.closed = True


def test_components_are_not_closed_under_a_stage_still_at_work(monkeypatch: pytest.MonkeyPatch) -> None:
    from anchorcast import scheduler as scheduler_module
    from anchorcast.media import TextSegment
    from tests.components import ListSource

    plugin = RecordingPlugin()
    host = Host.create(PluginPolicy(), entry_points=False, extra_plugins=(plugin,))
    profile = host.load_profile(None, raw=make_profile())
    voice = SlowVoice(6.0)  # longer than the 5 s the end of a run used to wait
    threading.Timer(0.5, host.stop).start()
    host.run(profile, source=ListSource([TextSegment("slow words", 0)]), voice=voice)
    assert voice.closed and not voice.closed_while_speaking
    # a stage that never finishes is left alone: the run still ends, and what it uses stays open
    monkeypatch.setattr(scheduler_module, "WORKER_JOIN_S", 1.0)
    stuck = SlowVoice(4.0)
    threading.Timer(0.3, host.stop).start()
    started = time.monotonic()
    host.run(profile, source=ListSource([TextSegment("stuck", 0)]), voice=stuck)
    assert time.monotonic() - started < 3.5 and not stuck.closed
