"""The captions output: WebVTT from the voice's sentences (English, Chinese) and from recognition results, written
through the real host with the eSpeak NG voice and the viseme engine, and read back with a strict parser."""

from __future__ import annotations

import itertools
import re
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import InputError
from anchorcast.host import Host
from anchorcast.media import AudioChunk, Caption, SpeechEnded, SpeechStarted, StreamFormat, VideoFrame
from anchorcast.plugin_manager import PluginPolicy
from anchorcast_plugins.outputs import captions_file
from anchorcast_plugins.outputs.captions_file import CaptionsFile, Cue, layout_cues, render_webvtt
from tests.components import RecordingPlugin
from tests.conftest import make_profile

_TIME = r"(\d{2,}):([0-5]\d):([0-5]\d)\.(\d{3})"
_TIMING = re.compile(rf"{_TIME} --> {_TIME}")
_ENTITY = re.compile(r"&(amp|lt|gt);")


@dataclass(frozen=True)
class ParsedCue:
    start: float
    end: float
    lines: tuple[str, ...]


def _seconds(hours: str, minutes: str, seconds: str, millis: str) -> float:
    return int(hours) * 3600 + int(minutes) * 60 + int(seconds) + int(millis) / 1000


def parse_webvtt(text: str) -> list[ParsedCue]:
    """A strict reader of the subset we write: the header, blank-line separated cues (an optional identifier, a
    timing line, text lines), entities for & < >; cues in order and never overlapping."""
    assert text.startswith("WEBVTT\n\n") or text == "WEBVTT\n", text[:40]
    assert text.endswith("\n") and "\r" not in text
    cues: list[ParsedCue] = []
    for block in text.rstrip("\n").split("\n\n")[1:]:
        lines = block.split("\n")
        if "-->" not in lines[0]:
            lines = lines[1:]  # the identifier
        timing = _TIMING.fullmatch(lines[0])
        assert timing, f"bad timing line {lines[0]!r}"
        start, end = _seconds(*timing.groups()[:4]), _seconds(*timing.groups()[4:])
        payload = lines[1:]
        assert payload and all(line.strip() for line in payload), f"empty cue text in {block!r}"
        for line in payload:
            assert "-->" not in line and "<" not in line and ">" not in line
            assert "&" not in _ENTITY.sub("", line), f"unescaped & in {line!r}"
        unescaped = tuple(line.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&") for line in payload)
        assert start < end, block
        if cues:
            assert start >= cues[-1].end, f"cue at {start} overlaps the one before (ends {cues[-1].end})"
        cues.append(ParsedCue(start, end, unescaped))
    return cues


def width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def squeeze(text: str) -> str:
    return "".join(text.split())


# --- layout ----------------------------------------------------------------------------------------------------

ENGLISH = ("Here is the news from the studio, where the markets rose sharply today after a long week of losses, "
           "and the weather stays fine.")
CHINESE = "然后在湖边吃午饭，下午再去博物馆看一看新的展览，晚上回家做饭。“好的。”他说。"


def test_a_long_english_sentence_becomes_cues_of_whole_words_timed_by_characters() -> None:
    cues = layout_cues(ENGLISH, 10.0, 17.0, max_chars=32, max_lines=2, max_cue_s=6.0)
    assert len(cues) >= 3
    assert " ".join(" ".join(cue.lines) for cue in cues) == ENGLISH
    assert all(width(line) <= 32 for cue in cues for line in cue.lines)
    assert all(1 <= len(cue.lines) <= 2 for cue in cues)
    assert cues[0].start == 10.0 and cues[-1].end == 17.0
    assert all(a.end == b.start for a, b in itertools.pairwise(cues))
    for cue in cues:  # time in proportion to the letters shown
        letters = sum(c.isalnum() for c in cue.text)
        share = letters / sum(c.isalnum() for c in ENGLISH)
        assert abs((cue.end - cue.start) / 7.0 - share) < 0.05


def test_chinese_is_broken_between_characters_without_spaces() -> None:
    cues = layout_cues(CHINESE, 0.0, 9.0, max_chars=20, max_lines=1)
    lines = [line for cue in cues for line in cue.lines]
    assert "".join(lines) == CHINESE  # nothing added, nothing lost, no spaces
    assert all(width(line) <= 20 for line in lines)
    assert len(lines) >= 4
    for line in lines:
        assert line[0] not in "，。”！？、", f"a line starts with closing punctuation: {line}"
        assert line[-1] not in "“", f"a line ends with an opening quote: {line}"
    assert any(line.endswith("，") for line in lines[:-1])  # breaks fall after commas where they can


def test_mixed_text_keeps_its_spaces_and_a_long_cue_is_split_by_lines() -> None:
    text = "新闻播报：The market rose 2%. 然后下雨了。"
    [cue] = layout_cues(text, 0.0, 3.0, max_chars=80)
    assert cue.lines == (text,)
    long = layout_cues(ENGLISH, 0.0, 20.0, max_chars=32, max_lines=2, max_cue_s=4.0)
    assert all(len(cue.lines) == 1 for cue in long)


def test_webvtt_escapes_text_and_never_overlaps() -> None:
    cues = [
        Cue(3725.5, 3727.25, ("Q&A <live>",)),
        Cue(0.0, 2.0, ("first", "two lines")),
        Cue(1.5, 3.0, ("overlaps the first",)),
        Cue(1.5, 2.5, ("same start",)),
    ]
    text = render_webvtt(cues)
    parsed = parse_webvtt(text)
    assert "01:02:05.500 --> 01:02:07.250" in text and "Q&amp;A &lt;live&gt;" in text
    assert [cue.lines for cue in parsed] == [("first", "two lines"), ("same start",), ("overlaps the first",),
                                             ("Q&A <live>",)]
    assert parsed[0].end == 1.5
    assert render_webvtt([]) == "WEBVTT\n"


# --- through the host ------------------------------------------------------------------------------------------


class PostedCaptions:
    """An output standing in for a recognizer: after given frames it posts final captions through the host."""

    def __init__(self) -> None:
        self.plan: dict[int, list[Caption]] = {}

    @hookimpl
    def anchorcast_register_outputs(self, host: Any, register: Any) -> None:
        plan = self.plan

        class Poster:
            live = False

            def open(self, fmt: StreamFormat) -> None:
                pass

            def write(self, frame: VideoFrame, audio: AudioChunk) -> None:
                for caption in plan.get(frame.index, []):
                    host.post_event(caption)

            def close(self) -> None:
                pass

        register("test-post-captions", lambda host, settings: Poster(), settings={"on": Setting(bool, True)})


def run(tmp_path: Path, text: str, voice: str, captions: dict[str, Any], *, poster: PostedCaptions | None = None,
        on_progress: Any = None) -> tuple[RecordingPlugin, list[ParsedCue]]:
    recorder = RecordingPlugin()
    extra: tuple[object, ...] = (recorder, captions_file) + ((poster,) if poster else ())
    host = Host.create(PluginPolicy(), extra_plugins=extra)
    outputs: dict[str, Any] = {
        "collect": {"use": "test-collect"},
        "cc": {"use": "captions", "path": str(tmp_path / "out.vtt"), **captions},
    }
    if poster:
        outputs["asr"] = {"use": "test-post-captions"}
    raw = make_profile(
        stream={"width": 96, "height": 96, "fps": 25, "sample_rate": 16000},
        source={"use": "script", "text": text},
        voice={"use": "espeak", "voice": voice},
        engine={"use": "viseme"},
        outputs=outputs,
    )
    del raw["source"]["lines"]
    host.run(host.load_profile(None, raw=raw), on_progress=on_progress or (lambda aired, total: None))
    return recorder, parse_webvtt((tmp_path / "out.vtt").read_text(encoding="utf-8"))


def speech_spans(recorder: RecordingPlugin) -> list[tuple[float, float, str]]:
    started, ended = recorder.events("speech_started"), recorder.events("speech_ended")
    assert len(started) == len(ended)
    return [(s.pts, e.pts, s.text) for s, e in zip(started, ended, strict=True)]


def sentences_of(cues: list[ParsedCue], spans: list[tuple[float, float, str]]) -> list[list[ParsedCue]]:
    """The cues of each utterance: those that start inside its span (and must end inside it too)."""
    grouped = []
    for start, end, _ in spans:
        inside = [cue for cue in cues if start - 1e-3 <= cue.start < end]
        assert all(cue.end <= end + 1e-3 for cue in inside)
        grouped.append(inside)
    assert sum(map(len, grouped)) == len(cues), "a cue lies outside every utterance"
    return grouped


@pytest.mark.slow
def test_english_sentences_become_cues_within_their_speech(tmp_path: Path) -> None:
    text = f"Good evening. {ENGLISH} Q&A <at> ten."
    recorder, cues = run(tmp_path, text, "en", {"max_chars": 32})
    spans = speech_spans(recorder)
    assert [s for _, _, s in spans] == ["Good evening.", ENGLISH, "Q&A <at> ten."]
    for (start, end, sentence), group in zip(spans, sentences_of(cues, spans), strict=True):
        assert " ".join(" ".join(cue.lines) for cue in group) == sentence
        assert abs(group[0].start - start) < 1e-3 and abs(group[-1].end - end) < 1e-3
        assert all(width(line) <= 32 for cue in group for line in cue.lines)
    print(f"\n{len(cues)} cues for {len(spans)} sentences over {spans[-1][1]:.2f} s")


@pytest.mark.slow
def test_chinese_sentences_are_split_without_spaces(tmp_path: Path) -> None:
    recorder, cues = run(tmp_path, CHINESE, "cmn", {"max_chars": 16, "max_lines": 1})
    spans = speech_spans(recorder)
    groups = sentences_of(cues, spans)
    assert "".join(s for _, _, s in spans) == CHINESE
    for (_, _, sentence), group in zip(spans, groups, strict=True):
        assert "".join(line for cue in group for line in cue.lines) == sentence
    assert max(len(group) for group in groups) >= 2
    assert all(width(line) <= 16 for cue in cues for line in cue.lines)


@pytest.mark.slow
def test_asr_mode_writes_the_recognized_finals_and_not_the_voice(tmp_path: Path) -> None:
    poster = PostedCaptions()
    # As a recognizer would: each final after the speech it transcribes, with its own times; partials are ignored.
    poster.plan = {
        30: [Caption(0.25, "good", False)],
        40: [Caption(0.22, "good evening", True, 0.9)],
        80: [Caption(1.1, "here is the news & more", True, 2.6),
              Caption(2.7, "然后在湖边吃午饭下午再去博物馆看一看新的展览晚上回家做饭", True, 5.2)],
    }
    recorder, cues = run(tmp_path, "Good evening. Here is the news from the studio, in full.", "en",
                         {"source": "asr", "max_chars": 20}, poster=poster)
    assert len(recorder.events("speech_started")) == 2  # the voice spoke, but its captions are not written
    assert " ".join(" ".join(cue.lines) for cue in cues[:2]) == "good evening here is the news & more"
    assert (cues[0].start, cues[0].end, cues[1].start) == (0.22, 0.9, 1.1)
    chinese = [cue for cue in cues if cue.start >= 2.7]
    assert "".join(line for cue in chinese for line in cue.lines) == poster.plan[80][1].text
    assert len(chinese) >= 2 and chinese[-1].end == 5.2
    assert all(width(line) <= 20 for cue in cues for line in cue.lines)


@pytest.mark.slow
def test_an_interrupt_cuts_the_sentence_and_the_file_is_flushed_during_the_run(tmp_path: Path) -> None:
    path = tmp_path / "out.vtt"
    seen: list[list[ParsedCue]] = []
    host_ref: list[Host] = []

    def on_progress(aired: int, total: int | None) -> None:
        if aired % 5 == 0:
            seen.append(parse_webvtt(path.read_text(encoding="utf-8")))  # complete at any moment
        if aired == 40:
            time.sleep(0.3)  # longer than flush_s: the next frame rewrites the file (on a thread of its own)
        if aired == 41:
            time.sleep(0.2)  # time for that thread to write it
        if aired == 60 and host_ref:
            host_ref[0].interrupt("test")

    recorder = RecordingPlugin()
    host = Host.create(PluginPolicy(), extra_plugins=(recorder, captions_file))
    host_ref.append(host)
    raw = make_profile(
        stream={"width": 96, "height": 96, "fps": 25, "sample_rate": 16000},
        source={"use": "script", "text": f"Good evening. {ENGLISH} This sentence is never heard."},
        voice={"use": "espeak", "voice": "en"},
        engine={"use": "viseme"},
        outputs={"collect": {"use": "test-collect"}, "cc": {"use": "captions", "path": str(path), "flush_s": 0.2}},
    )
    del raw["source"]["lines"]
    host.run(host.load_profile(None, raw=raw), on_progress=on_progress)

    cues = parse_webvtt(path.read_text(encoding="utf-8"))
    [interrupt] = recorder.events("interrupt")
    assert cues[-1].end == pytest.approx(interrupt.pts, abs=1e-3)
    assert "heard" not in " ".join(line for cue in cues for line in cue.lines)
    assert seen[0] == []
    assert any(snapshot and snapshot[0].lines == ("Good evening.",) for snapshot in seen)


def test_bad_paths_are_clear_errors(tmp_path: Path) -> None:
    fmt = StreamFormat(96, 96, 25, 16000)
    with pytest.raises(InputError, match="is a folder"):
        CaptionsFile(tmp_path).open(fmt)
    (tmp_path / "file").write_text("")
    with pytest.raises(InputError, match="cannot be written"):
        CaptionsFile(tmp_path / "file" / "captions.vtt").open(fmt)


def test_events_alone_make_the_file(tmp_path: Path) -> None:
    """Driven directly: a voice's caption with its speech, a recognition result, a partial (ignored)."""
    fmt = StreamFormat(96, 96, 25, 16000)
    for source, expected in (("words", ["Hello there."]), ("asr", ["hello there"])):
        output = CaptionsFile(tmp_path / f"{source}.vtt", source=source)
        output.open(fmt)
        output.event(Caption(0.5, "Hello there.", True, 1.0))
        output.event(SpeechStarted(0.5, "Hello there."))
        output.event(Caption(0.45, "hello", False))
        output.event(SpeechEnded(1.5, "Hello there."))
        output.event(Caption(0.45, "hello there", True, 1.45))
        output.close()
        cues = parse_webvtt((tmp_path / f"{source}.vtt").read_text(encoding="utf-8"))
        assert [" ".join(cue.lines) for cue in cues] == expected
        assert (cues[0].start, cues[0].end) == ((0.5, 1.5) if source == "words" else (0.45, 1.45))
