"""The script source: Markdown to readable sentences, Chinese and English splitting, cues, bad scripts."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import pytest

from anchorcast.errors import InputError, ProfileError
from anchorcast.media import StreamFormat
from anchorcast_plugins.sources.script import ScriptSource, detect_language, split_sentences

FMT = StreamFormat(64, 48, Fraction(25), 16000)


def test_english_sentences_keep_abbreviations_and_decimals() -> None:
    text = "Good evening. Mr. Smith met Dr. Jones at 3.5 p.m. in the U.S. capital! Is it true? Yes."
    assert split_sentences(text) == [
        "Good evening.", "Mr. Smith met Dr. Jones at 3.5 p.m. in the U.S. capital!", "Is it true?", "Yes.",
    ]


def test_chinese_sentences_split_on_full_width_punctuation() -> None:
    assert split_sentences("今天天气很好。我们去公园吧！你好吗？“好的。”最后") == [
        "今天天气很好。", "我们去公园吧！", "你好吗？", "“好的。”", "最后",
    ]
    assert split_sentences("新闻播报：The market rose 2%. 然后下雨了。") == [
        "新闻播报：The market rose 2%.", "然后下雨了。",
    ]


def test_long_sentences_are_split_at_commas() -> None:
    sentence = ", ".join(f"clause number {i}" for i in range(30)) + "."
    pieces = split_sentences(sentence, max_chars=80)
    assert len(pieces) > 3 and all(len(p) <= 80 for p in pieces)
    assert " ".join(pieces).replace(" ,", ",") == sentence


def test_markdown_is_read_as_a_presenter_would_and_cues_attach() -> None:
    markdown = """# Evening News

[cue: Studio]
Good evening, and **welcome**. Here is [the news](https://example.invalid).

- First item.
- 第二条新闻。很好。

```
print("code is not read")
```
<!-- producer's note: skip this -->
![logo](logo.png)
[cue: Weather] The weather is fine.
"""
    segments = list(ScriptSource(markdown, "x.md").segments())
    assert [s.text for s in segments] == [
        "Evening News", "Good evening, and welcome.", "Here is the news.", "First item.", "第二条新闻。", "很好。",
        "The weather is fine.",
    ]
    assert [s.cue for s in segments] == [None, "Studio", None, None, None, None, "Weather"]
    assert [s.language for s in segments] == ["en", "en", "en", "en", "zh", "zh", "en"]
    assert [s.index for s in segments] == list(range(7))


def test_chinese_lines_join_without_spaces() -> None:
    segments = list(ScriptSource("今天天气\n很好。", "x").segments())
    assert [s.text for s in segments] == ["今天天气很好。"]


def test_language_detection_and_override() -> None:
    assert detect_language("晚上好，欢迎收看。") == "zh"
    assert detect_language("Good evening") == "en"
    assert [s.language for s in ScriptSource("Hi. 你好。", "x", language="zh").segments()] == ["zh", "zh"]


def test_bad_scripts_are_clear_errors(tmp_path: Path) -> None:
    empty = tmp_path / "empty.md"
    empty.write_text("# \n\n---\n<!-- nothing -->\n")
    source = ScriptSource.from_settings(None, {"path": empty, "text": None, "language": "auto", "max_chars": 240})
    with pytest.raises(InputError, match="empty.md: the script is empty"):
        source.open(FMT)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00\x81bad")
    with pytest.raises(InputError, match="binary.txt: the script is not UTF-8"):
        ScriptSource.from_settings(None, {"path": binary, "text": None, "language": "auto", "max_chars": 240})
    with pytest.raises(ProfileError, match="source.path"):
        ScriptSource.from_settings(None, {"path": None, "text": None, "language": "auto", "max_chars": 240})


def test_cue_names_are_kept_verbatim() -> None:
    segments = list(ScriptSource("[cue: news_desk_wide] Good *evening*.\n\n[cue: 2_shot]\nNext.", "x").segments())
    assert [(s.cue, s.text) for s in segments] == [("news_desk_wide", "Good evening."), ("2_shot", "Next.")]
