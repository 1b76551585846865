"""Source ``script``: a bulletin in plain text or Markdown, read sentence by sentence (Chinese and English).

Markdown is reduced to what a presenter reads: headings, emphasis, links, lists and quotes become plain text;
code blocks, HTML comments and images are skipped. A cue line ``[cue: NAME]`` (for example an OBS scene) applies to
the sentence after it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import InputError, ProfileError
from anchorcast.media import StreamFormat, TextSegment

SETTINGS = {
    "path": Setting(str, None, "script file (.txt or .md)", kind="file"),
    "text": Setting(str, None, "the script itself, instead of a file"),
    "language": Setting(str, "auto", "language of the script: auto (per sentence), en, zh, ..."),
    "max_chars": Setting(int, 240, "longer sentences are split at commas", minimum=40),
}

MAX_SCRIPT_CHARS = 1_000_000
"""About 17 hours read aloud: a longer "script" is a wrong file, not a bulletin."""

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ufeff\ufffe\uffff]")
"""Characters no voice reads and no caption shows (NUL, C0/C1 controls, a stray byte-order mark)."""

_CUE = re.compile(r"^\s*\[cue:\s*(?P<name>[^\]]+?)\s*\]\s*(?P<rest>.*)$", re.IGNORECASE)
_CJK = re.compile(r"[\u3400-\u9fff\uf900-\ufaff\u3040-\u30ff]")
_CLOSERS = "\"'”’」』）)】》"
# Sentence ends: Chinese punctuation anywhere; Western punctuation before whitespace or the end.
_SENTENCE_END = re.compile(
    rf"(?:[。！？!?；;…]+|\.(?!\d))[{re.escape(_CLOSERS)}]*(?=\s|$|[^\x00-\x7f])"
)
_ABBREVIATIONS = {
    "mr", "mrs", "ms", "dr", "prof", "st", "jr", "sr", "vs", "etc", "e.g", "i.e", "u.s", "u.k", "no", "inc",
    "ltd", "co", "corp", "gen", "gov", "sen", "rep", "mt", "ft", "jan", "feb", "mar", "apr", "jun", "jul", "aug",
    "sep", "sept", "oct", "nov", "dec", "a.m", "p.m",
}
_SOFT_BREAK = re.compile(r"(?<=[,，、:：])\s*")


@hookimpl
def anchorcast_register_sources(host: Any, register: Any) -> None:
    register("script", ScriptSource.from_settings, settings=SETTINGS, summary="a text or Markdown script")


class ScriptSource:
    """Reads a script and yields one :class:`TextSegment` per sentence."""

    live = False

    def __init__(self, text: str, origin: str, language: str = "auto", max_chars: int = 240) -> None:
        if len(text) > MAX_SCRIPT_CHARS:
            raise InputError(
                f"{origin}: the script is {len(text) / 1e6:.1f} million characters; at most "
                f"{MAX_SCRIPT_CHARS / 1e6:.0f} million (about 17 hours read aloud)",
                hint="is it the right file? split a long programme into bulletins",
            )
        self.text = _CONTROL.sub(" ", text)
        self.origin = origin
        self.language = language
        self.max_chars = max_chars
        self._segments: list[TextSegment] = []

    @classmethod
    def from_settings(cls, host: Any, settings: dict[str, Any]) -> ScriptSource:
        path: Path | None = settings.get("path")
        text: str | None = settings.get("text")
        if path is None and text is None:
            raise ProfileError(
                "[source] the script source needs source.path (a .txt or .md file) or source.text",
                hint='anchorcast run --script bulletin.md  or  anchorcast run --text "Good evening."',
            )
        if text is None:
            assert path is not None
            try:
                text = path.read_text(encoding="utf-8-sig")
            except UnicodeDecodeError:
                raise InputError(f"{path}: the script is not UTF-8 text") from None
            except OSError as error:
                raise InputError(f"{path}: cannot read the script: {error.strerror or error}") from None
        return cls(text, str(path) if path else "source.text", settings["language"], settings["max_chars"])

    def open(self, fmt: StreamFormat) -> None:
        self._segments = list(self.segments())
        if not self._segments:
            raise InputError(f"{self.origin}: the script is empty (nothing to read aloud)")

    def items(self) -> Iterator[TextSegment]:
        return iter(self._segments)

    def close(self) -> None:
        self._segments = []

    def segments(self) -> Iterator[TextSegment]:
        """Sentences with their cues and languages."""
        index = 0
        pending_cue: str | None = None
        for paragraph in markdown_paragraphs(self.text):
            match = _CUE.match(paragraph)
            if match:
                pending_cue = match["name"]
                paragraph = match["rest"]
            for sentence in split_sentences(paragraph, self.max_chars):
                language = self.language if self.language != "auto" else detect_language(sentence)
                yield TextSegment(sentence, index, language, pending_cue)
                pending_cue = None
                index += 1


def markdown_paragraphs(text: str) -> Iterator[str]:
    """Paragraphs of readable text (headings and list items are paragraphs of their own)."""
    text = re.sub(r"<!--.*?-->", " ", text, flags=re.DOTALL)
    in_code = False
    paragraph: list[str] = []

    def flush() -> Iterator[str]:
        if paragraph:
            joined = _join_lines(paragraph)
            paragraph.clear()
            if joined:
                yield joined

    for raw_line in text.splitlines():
        line = raw_line.strip()
        if line.startswith(("```", "~~~")):
            in_code = not in_code
            yield from flush()
            continue
        if in_code:
            continue
        if not line or re.fullmatch(r"[-*_=]{3,}", line):
            yield from flush()
            continue
        heading = re.match(r"^#{1,6}\s+(.*)$", line)
        item = re.match(r"^(?:[-*+]|\d+[.)])\s+(.*)$", line)
        cue = _CUE.match(line)
        if heading or item or cue:
            yield from flush()
            if cue:  # the cue's name is an identifier (an OBS scene): only the text after it is Markdown
                paragraph.append(f"[cue: {cue['name']}] {_inline(cue['rest'])}".strip())
            else:
                paragraph.append(_inline((heading or item)[1]))
            if heading or item:
                yield from flush()
            continue
        paragraph.append(_inline(line.lstrip("> ").strip()))
    yield from flush()


def _inline(line: str) -> str:
    line = re.sub(r"!\[[^\]]*\]\([^)]*\)", " ", line)  # images
    line = re.sub(r"\[([^\]]+)\]\([^)]*\)", r"\1", line)  # links keep their text
    line = re.sub(r"`([^`]*)`", r"\1", line)
    line = re.sub(r"(\*\*|__|\*|_|~~)(\S(?:.*?\S)?)\1", r"\2", line)
    return line.strip()


def _join_lines(lines: list[str]) -> str:
    joined = ""
    for line in lines:
        if not line:
            continue
        cjk_boundary = joined and _CJK.search(joined[-1]) and _CJK.search(line[0])
        joined = joined + line if (not joined or cjk_boundary) else f"{joined} {line}"
    return re.sub(r"\s+", " ", joined).strip()


def split_sentences(text: str, max_chars: int = 240) -> list[str]:
    """Splits a paragraph into sentences (Chinese and Western punctuation; common abbreviations kept)."""
    sentences: list[str] = []
    start = 0
    for match in _SENTENCE_END.finditer(text):
        end = match.end()
        if match.group().startswith(".") and _is_abbreviation(text[start:match.start()]):
            continue
        sentences.append(text[start:end].strip())
        start = end
    sentences.append(text[start:].strip())
    result: list[str] = []
    for sentence in sentences:
        if _speakable(sentence):
            result.extend(_split_long(sentence, max_chars))
    return result


def _is_abbreviation(before: str) -> bool:
    word = re.split(r"\s", before.rstrip())[-1].lower() if before.strip() else ""
    return word.rstrip(".") in _ABBREVIATIONS or bool(re.fullmatch(r"[a-z]", word))


def _split_long(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    pieces: list[str] = []
    current = ""
    for part in _SOFT_BREAK.split(sentence):
        if current and len(current) + len(part) > max_chars:
            pieces.append(current.strip())
            current = ""
        current += part if not current or _CJK.search(part[:1] or " ") else f" {part}"
    if current.strip():
        pieces.append(current.strip())
    return pieces


def _speakable(text: str) -> bool:
    return any(ch.isalnum() for ch in text)


def detect_language(sentence: str) -> str:
    """``zh`` when the sentence is mostly CJK characters, else ``en``."""
    letters = [ch for ch in sentence if ch.isalpha()]
    if not letters:
        return "en"
    cjk = sum(1 for ch in letters if _CJK.match(ch))
    return "zh" if cjk * 2 >= len(letters) else "en"
