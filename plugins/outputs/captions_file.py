"""The ``captions`` output: a WebVTT file of what the anchor said.

Two sources of text, chosen by ``source``:

- ``words``: the voice's sentences. Each :class:`~anchorcast.media.Caption` a voice gives airs together with
  the :class:`~anchorcast.media.SpeechStarted` of the same utterance (same time, same text), and the utterance ends
  with its :class:`~anchorcast.media.SpeechEnded`, so a sentence's cues span exactly its speech (an interrupt
  cuts it).
- ``asr``: final captions from speech recognition (the ``vosk`` output), with their own times; the voice's
  captions, recognized by their matching ``SpeechStarted``, are left out.

Long sentences become several cues of at most ``max_lines`` lines of ``max_chars`` (full-width CJK characters count
as two; Chinese and Japanese break between characters), timed in proportion to their characters. Cues never
overlap. The file is rewritten atomically (a temporary file renamed over it) every ``flush_s`` seconds during a run
and when the run ends, so a crash loses little and a reader never sees half a file.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import AnchorcastError, InputError
from anchorcast.media import (
    AudioChunk,
    Caption,
    Event,
    Interrupt,
    SpeechEnded,
    SpeechStarted,
    StreamFormat,
    VideoFrame,
)

if TYPE_CHECKING:
    from anchorcast.host import Host

log = logging.getLogger(__name__)

SETTINGS: dict[str, Setting] = {
    "path": Setting(str, "captions.vtt", "the WebVTT file to write (relative to the current folder)"),
    "source": Setting(str, "words", "words: the voice's sentences, timed by their speech; asr: final captions "
                      "from speech recognition (the vosk output)", choices=("words", "asr")),
    "max_chars": Setting(int, 42, "longest line, in characters (full-width CJK characters count as two)",
                         minimum=8, maximum=200),
    "max_lines": Setting(int, 2, "most lines in one cue", minimum=1, maximum=4),
    "max_cue_s": Setting(float, 6.0, "longest time one cue stays on screen (a longer one is split by lines)",
                         minimum=0.5, maximum=60.0),
    "flush_s": Setting(float, 5.0, "rewrite the file this often during a run (seconds of wall-clock time)",
                       minimum=0.2, maximum=3600.0),
}


@hookimpl
def anchorcast_register_outputs(host: Host, register: Any) -> None:
    register("captions", create_output, settings=SETTINGS,
             summary="writes a WebVTT captions file from the voice's sentences or from speech recognition")


def create_output(host: Host, settings: dict[str, Any]) -> CaptionsFile:
    path = Path(settings["path"]).expanduser()
    return CaptionsFile(
        path if path.is_absolute() else Path.cwd() / path,
        source=settings["source"], max_chars=settings["max_chars"], max_lines=settings["max_lines"],
        max_cue_s=settings["max_cue_s"], flush_s=settings["flush_s"],
    )


# --- cues ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cue:
    """One WebVTT cue: ``lines`` shown from ``start`` to ``end`` seconds."""

    start: float
    end: float
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@dataclass(slots=True)
class _Unit:
    """An unbreakable piece of text: a word, or one CJK character, with the punctuation that clings to it."""

    text: str
    space_before: bool
    weight: float = field(default=0.0)
    width: int = field(default=0)


def _is_cjk(char: str) -> bool:
    """Scripts written without spaces, broken between any two characters (Han, kana)."""
    code = ord(char)
    return (0x3040 <= code <= 0x30FF or 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF
            or 0xF900 <= code <= 0xFAFF or 0x20000 <= code <= 0x3FFFF)


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _weight(text: str) -> float:
    """Rough speaking time of ``text``: a syllable block (Han, kana, Hangul) weighs as much as three letters."""
    weight = 0.0
    for char in text:
        if _is_cjk(char) or 0xAC00 <= ord(char) <= 0xD7A3:
            weight += 3.0
        elif char.isalnum():
            weight += 1.0
    return weight


def split_units(text: str) -> list[_Unit]:
    """Words (split at spaces) and single CJK characters; closing punctuation clings to what it follows and
    opening punctuation to what it precedes, so that no line starts with "，" or ends with "「"."""
    units: list[_Unit] = []
    word = ""
    space = False
    opening = ""

    def push(piece: str, space_before: bool) -> None:
        nonlocal opening
        units.append(_Unit(opening + piece, space_before))
        opening = ""

    for char in text:
        if char.isspace():
            if word:
                push(word, space)
                word = ""
            space = bool(units) or bool(opening)
            continue
        category = unicodedata.category(char)
        if category in ("Ps", "Pi"):
            if word:
                push(word, space)
                word, space = "", False
            opening += char
        elif category.startswith("P") and not word and units and not opening and not space:
            units[-1].text += char  # closing punctuation right after a CJK character
        elif _is_cjk(char):
            if word:
                push(word, space)
                word, space = "", False
            push(char, space)
            space = False
        else:
            word += char
    if word or opening:
        push(word, space)
    for unit in units:
        unit.weight = _weight(unit.text)
        unit.width = _width(unit.text)
    return units


def _join(units: list[_Unit]) -> str:
    return "".join((" " if k and unit.space_before else "") + unit.text for k, unit in enumerate(units))


def _break_lines(units: list[_Unit], max_chars: int) -> list[list[_Unit]]:
    """Greedy lines of at most ``max_chars`` columns, breaking after punctuation when that keeps the line at
    least 40 % full (a unit longer than a line gets a line of its own)."""
    lines: list[list[_Unit]] = []
    line: list[_Unit] = []
    width = 0
    for unit in units:
        extra = unit.width + (1 if line and unit.space_before else 0)
        if line and width + extra > max_chars:
            cut = len(line)
            for k in range(len(line) - 1, 0, -1):
                if _width(_join(line[: k + 1])) < 0.4 * max_chars:
                    break
                if unicodedata.category(line[k].text[-1]).startswith("P"):
                    cut = k + 1
                    break
            lines.append(line[:cut])
            line = line[cut:]
            width = _width(_join(line))
            extra = unit.width + (1 if line and unit.space_before else 0)
        line.append(unit)
        width += extra
    if line:
        lines.append(line)
    return lines


def _balanced_lines(units: list[_Unit], max_chars: int) -> list[list[_Unit]]:
    """As few lines as greedy breaking gives, but of even length (no lone last word on a line)."""
    lines = _break_lines(units, max_chars)
    if len(lines) < 2:
        return lines
    narrowest = max(max(u.width for u in units), -(-_width(_join(units)) // len(lines)))
    for width in range(narrowest, max_chars):
        even = _break_lines(units, width)
        if len(even) == len(lines):
            return even
    return lines


def layout_cues(text: str, start: float, end: float, *, max_chars: int = 42, max_lines: int = 2,
                max_cue_s: float = 6.0) -> list[Cue]:
    """``text`` spoken from ``start`` to ``end`` seconds as cues, each timed by its share of the characters."""
    units = split_units(text)
    if not units or end <= start:
        return []
    lines = _balanced_lines(units, max_chars)
    total = sum(max(u.weight, 0.5) for u in units)
    duration = end - start

    def seconds(group: list[list[_Unit]]) -> float:
        return duration * sum(max(u.weight, 0.5) for line in group for u in line) / total

    groups: list[list[list[_Unit]]] = []
    count = -(-len(lines) // max_lines)
    sizes = [len(lines) // count + (k < len(lines) % count) for k in range(count)]  # 5 lines by 2: 2, 2, 1
    for k in range(count):
        first = sum(sizes[:k])
        group = lines[first : first + sizes[k]]
        if len(group) > 1 and seconds(group) > max_cue_s:
            groups.extend([line] for line in group)
        else:
            groups.append(group)
    cues = []
    at = start
    for n, group in enumerate(groups):
        until = end if n == len(groups) - 1 else at + seconds(group)
        cues.append(Cue(at, until, tuple(_join(line) for line in group)))
        at = until
    return cues


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _timestamp(ms: int) -> str:
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}.{millis:03d}"


def render_webvtt(cues: list[Cue]) -> str:
    """A WebVTT document: cues sorted by start, timed to the millisecond, never overlapping, text escaped."""
    timed: list[tuple[int, int, Cue]] = []
    for cue in sorted(cues, key=lambda c: (c.start, c.end)):
        start, end = max(0, round(cue.start * 1000)), max(0, round(cue.end * 1000))
        if timed and start < timed[-1][1]:
            previous_start, _, previous = timed[-1]
            if start > previous_start:
                timed[-1] = (previous_start, start, previous)  # the earlier cue gives way
            else:
                start = timed[-1][1]
        timed.append((start, max(end, start + 1), cue))
    blocks = ["WEBVTT"]
    for number, (start, end, cue) in enumerate(timed, 1):
        lines = [_escape(line) for line in cue.lines if line.strip()]
        blocks.append(f"{number}\n{_timestamp(start)} --> {_timestamp(end)}\n" + "\n".join(lines))
    return "\n\n".join(blocks) + "\n"


# --- the output ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Sentence:
    text: str
    start: float


_SAME_TIME = 1e-6


class CaptionsFile:
    """Collects captions from events and writes them to a WebVTT file (frames only tell it the time).

    During a run the file is rewritten on a background thread, so the playout thread only lays out each sentence
    once and never waits for the disk; :meth:`close` writes the final file itself.
    """

    live = False

    def __init__(self, path: Path, *, source: str = "words", max_chars: int = 42, max_lines: int = 2,
                 max_cue_s: float = 6.0, flush_s: float = 5.0) -> None:
        if source not in ("words", "asr"):
            raise ValueError(f"source must be 'words' or 'asr', got {source!r}")
        self.path = Path(path)
        self.source = source
        self.max_chars = max_chars
        self.max_lines = max_lines
        self.max_cue_s = max_cue_s
        self.flush_s = flush_s
        self.flushes = 0
        self._cues: list[Cue] = []  # of the sentences already ended
        self._open: _Sentence | None = None
        self._unmatched: list[Caption] = []  # final captions not (yet) known to be a voice's
        self._position = 0.0
        self._dirty = False
        self._last_flush = 0.0
        self._writer: threading.Thread | None = None
        self._opened = False

    def open(self, fmt: StreamFormat) -> None:
        if self.path.is_dir():
            raise InputError(f"captions output: {self.path} is a folder (setting `path`)",
                             hint="give a file name such as captions.vtt")
        self._cues, self._open, self._unmatched = [], None, []
        self._position, self._dirty = 0.0, False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._save([])  # a header-only file now: an unwritable path shows at open, not at the end
        except OSError as error:
            raise InputError(f"captions output: {self.path} cannot be written: {error.strerror or error} "
                             "(setting `path`)") from error
        self._opened = True

    def write(self, frame: VideoFrame, audio: AudioChunk) -> None:
        self._position = audio.end / audio.sample_rate
        self._settle()
        if self._dirty and time.monotonic() - self._last_flush >= self.flush_s:
            self._flush_in_background()

    def event(self, event: Event) -> None:
        if isinstance(event, Caption):
            if event.final and event.text.strip():
                self._unmatched.append(event)
        elif isinstance(event, SpeechStarted):
            voice = self._take_voice_caption(event)
            if voice is not None and self.source == "words":
                self._close_sentence(event.pts)
                self._open = _Sentence(voice.text, event.pts)
                self._dirty = True
        elif isinstance(event, SpeechEnded):
            if self._open is not None and event.text == self._open.text:
                self._close_sentence(event.pts)
        elif isinstance(event, Interrupt):
            self._close_sentence(event.pts)

    def close(self) -> None:
        if not self._opened:
            return
        self._opened = False
        self._settle()
        self._close_sentence(self._position)
        if self._writer is not None:
            self._writer.join()
            self._writer = None
        try:
            self._save(self.cues())
        except OSError as error:
            raise AnchorcastError(f"captions output: writing {self.path} failed: {error.strerror or error}") \
                from error

    # --- the captions ------------------------------------------------------------------------------------

    def cues(self) -> list[Cue]:
        """The cues so far (the sentence being spoken ends at the current position)."""
        cues = list(self._cues)
        if self._open is not None:
            cues += self._layout(self._open.text, self._open.start, self._position)
        return cues

    def _layout(self, text: str, start: float, end: float) -> list[Cue]:
        return layout_cues(text, start, end, max_chars=self.max_chars, max_lines=self.max_lines,
                           max_cue_s=self.max_cue_s)

    def _take_voice_caption(self, started: SpeechStarted) -> Caption | None:
        """The caption a voice gave with this utterance: it airs with the utterance's start, with its text."""
        for k, caption in enumerate(self._unmatched):
            if abs(caption.pts - started.pts) < _SAME_TIME and caption.text == started.text:
                return self._unmatched.pop(k)
        return None

    def _settle(self) -> None:
        """Final captions still unmatched once their frame has aired are not a voice's: recognition results."""
        unmatched, self._unmatched = self._unmatched, []
        if self.source != "asr":
            return
        for caption in unmatched:
            end = caption.end if caption.end is not None and caption.end > caption.pts else None
            if end is None:  # a recognizer that gives no end: about as long as it takes to say
                end = caption.pts + max(1.0, 0.08 * _weight(caption.text))
            self._cues += self._layout(caption.text, caption.pts, end)
            self._dirty = True

    def _close_sentence(self, at: float) -> None:
        sentence, self._open = self._open, None
        if sentence is not None and at > sentence.start:
            self._cues += self._layout(sentence.text, sentence.start, at)
            self._dirty = True

    def _flush_in_background(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            return
        cues = self.cues()
        self._dirty = False
        self._last_flush = time.monotonic()

        def save() -> None:
            try:
                self._save(cues)
            except OSError as error:  # the final write at close reports it; the stream goes on
                log.warning("captions output: rewriting %s failed: %s", self.path, error)

        self._writer = threading.Thread(target=save, name="anchorcast-captions", daemon=True)
        self._writer.start()

    def _save(self, cues: list[Cue]) -> None:
        """Writes the whole file to a temporary name and renames it over the old one (atomic)."""
        text = render_webvtt(cues)
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        try:
            temporary.write_text(text, encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError:
            temporary.unlink(missing_ok=True)
            raise
        self.flushes += 1
