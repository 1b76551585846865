"""The ``espeak`` voice: eSpeak NG in-process, fast formant speech in over a hundred languages, Mandarin included.

libespeak-ng and its data come from the ``espeakng-loader`` wheel and are driven through ctypes, so nothing is
installed system-wide. The library is one global state per process: it is initialized once and every use holds
:attr:`EspeakLibrary.lock`. Word and phoneme events give each :class:`~anchorcast.media.Speech` its timings.
"""

from __future__ import annotations

import ctypes
import difflib
import threading
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import AnchorcastError, InputError
from anchorcast.media import Speech, StreamFormat, TextSegment, Timing

if TYPE_CHECKING:
    from anchorcast.host import Host

SETTINGS: dict[str, Setting] = {
    "voice": Setting(str, "en", "eSpeak NG voice: en, en-us, en-gb, cmn (Mandarin), de, fr, ... or a variant "
                                "such as en+f3; auto: cmn for Chinese sentences, en for the rest"),
    "rate": Setting(int, 170, "speaking rate in words per minute", minimum=80, maximum=450),
    "pitch": Setting(int, 50, "base pitch, 0-100 (50 is the voice's normal)", minimum=0, maximum=100),
}

VOICE_ALIASES = {"zh": "cmn", "zh-cn": "cmn", "zh-hans": "cmn", "mandarin": "cmn", "zh-hk": "yue"}
"""Language tags people write for which eSpeak NG's voice has another name."""


@hookimpl
def anchorcast_register_voices(host: Host, register: Any) -> None:
    register("espeak", create_voice, settings=SETTINGS, summary="eSpeak NG in-process (English, Mandarin, ...)")


def create_voice(host: Host, settings: dict[str, Any]) -> EspeakVoice:
    """The factory: checks that the voice exists (initializing eSpeak NG takes about a millisecond)."""
    return EspeakVoice(settings["voice"], rate=settings["rate"], pitch=settings["pitch"])


# --- the library -----------------------------------------------------------------------------------------

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_INITIALIZE_PHONEME_IPA = 0x0002
_INITIALIZE_DONT_EXIT = 0x8000
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_RATE, _PITCH = 1, 3
_EE_OK = 0

_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_SENTENCE = 2
_EVENT_END = 5
_EVENT_PHONEME = 7


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    """``espeak_EVENT`` of speak_lib.h (API revision 12, espeak-ng 1.52)."""

    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", _EventId),
    ]


class _VoiceEntry(ctypes.Structure):
    """``espeak_VOICE`` of speak_lib.h."""

    _fields_ = [
        ("name", ctypes.c_char_p),
        ("languages", ctypes.c_char_p),
        ("identifier", ctypes.c_char_p),
        ("gender", ctypes.c_ubyte),
        ("age", ctypes.c_ubyte),
        ("variant", ctypes.c_ubyte),
        ("xx1", ctypes.c_ubyte),
        ("score", ctypes.c_int),
        ("spare", ctypes.c_void_p),
    ]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int,
                                  ctypes.POINTER(_Event))


class RawEvent(NamedTuple):
    """One eSpeak NG event: ``text_position`` counts characters from 1; ``audio_ms`` is from the audio start."""

    type: int
    text_position: int
    length: int
    audio_ms: int
    name: str


@dataclass(frozen=True)
class VoiceInfo:
    name: str
    language: str
    identifier: str


class EspeakLibrary:
    """libespeak-ng, initialized once per process; use :meth:`get`."""

    _instance: EspeakLibrary | None = None
    _instance_lock = threading.Lock()

    def __init__(self) -> None:
        try:
            import espeakng_loader

            path, data = espeakng_loader.get_library_path(), espeakng_loader.get_data_path()
            lib = ctypes.CDLL(path)
        except (ImportError, OSError, RuntimeError) as error:
            raise AnchorcastError(f"eSpeak NG is not available: {error}",
                                  hint="pip install espeakng-loader") from error
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetSynthCallback.restype = None
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_SetParameter.restype = ctypes.c_int
        lib.espeak_ListVoices.argtypes = [ctypes.c_void_p]
        lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_VoiceEntry))
        lib.espeak_Synth.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                     ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        lib.espeak_Synth.restype = ctypes.c_int

        options = _INITIALIZE_PHONEME_EVENTS | _INITIALIZE_PHONEME_IPA | _INITIALIZE_DONT_EXIT
        sample_rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data.encode(), options)
        if sample_rate <= 0:
            raise AnchorcastError(f"eSpeak NG failed to initialize with its data at {data}",
                                  hint="reinstall espeakng-loader: pip install --force-reinstall espeakng-loader")
        self.lock = threading.RLock()
        """Held for every call: the library keeps one voice, one set of parameters and one callback."""
        self.sample_rate: int = sample_rate
        self._lib = lib
        self._samples: list[np.ndarray] = []
        self._events: list[RawEvent] = []
        self._callback = _SynthCallback(self._on_synth)  # kept referenced: the library calls it later
        lib.espeak_SetSynthCallback(self._callback)
        self._voices: list[VoiceInfo] | None = None

    @classmethod
    def get(cls) -> EspeakLibrary:
        with cls._instance_lock:
            if cls._instance is None:
                cls._instance = cls()
            return cls._instance

    def voices(self) -> list[VoiceInfo]:
        """The voices eSpeak NG's data holds."""
        with self.lock:
            if self._voices is None:
                entries = self._lib.espeak_ListVoices(None)
                voices = []
                i = 0
                while entries[i]:
                    entry = entries[i].contents
                    # ``languages`` is a priority byte, then the language name.
                    language = _text(entry.languages)[1:]
                    voices.append(VoiceInfo(_text(entry.name), language, _text(entry.identifier)))
                    i += 1
                self._voices = voices
            return self._voices

    def select(self, voice: str) -> bool:
        """Makes ``voice`` the current voice; False when eSpeak NG has no voice of that name."""
        with self.lock:
            return self._lib.espeak_SetVoiceByName(voice.encode()) == _EE_OK

    def synthesize(self, text: str, voice: str, rate: int, pitch: int) -> tuple[np.ndarray, list[RawEvent]]:
        """The int16 samples and the events of ``text`` spoken by ``voice``."""
        data = text.encode() + b"\0"
        with self.lock:
            if not self.select(voice):
                raise InputError(f"unknown eSpeak NG voice {voice!r}")
            self._lib.espeak_SetParameter(_RATE, rate, 0)
            self._lib.espeak_SetParameter(_PITCH, pitch, 0)
            self._samples, self._events = [], []
            try:
                status = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
                samples, events = self._samples, self._events
            finally:
                self._samples, self._events = [], []
        if status != _EE_OK:
            raise AnchorcastError(f"eSpeak NG could not speak {text[:40]!r} (error {status})")
        audio = np.concatenate(samples) if samples else np.zeros(0, np.int16)
        return audio, events

    def _on_synth(self, wav: Any, count: int, events: Any) -> int:
        if wav and count > 0:
            self._samples.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        i = 0
        while events[i].type != _EVENT_LIST_TERMINATED:
            event = events[i]
            name = event.id.string.decode("utf-8", "ignore") if event.type == _EVENT_PHONEME else ""
            self._events.append(
                RawEvent(event.type, event.text_position, event.length, event.audio_position, name)
            )
            i += 1
        return 0


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value else ""


# --- the voice -----------------------------------------------------------------------------------------------


class EspeakVoice:
    """Speaks each segment with eSpeak NG, one :class:`Speech` per sentence, with phoneme and word timings."""

    def __init__(self, voice: str = "en", *, rate: int = 170, pitch: int = 50) -> None:
        self.library = EspeakLibrary.get()
        self.voice = VOICE_ALIASES.get(voice.strip().lower(), voice.strip())
        self.rate = rate
        self.pitch = pitch
        if self.voice == "auto":
            return
        if not self.voice or not self.library.select(self.voice):
            raise InputError(f"unknown eSpeak NG voice {voice!r} (setting 'voice')", hint=self._voice_hint(voice))

    @property
    def sample_rate(self) -> int:
        return self.library.sample_rate

    def open(self, fmt: StreamFormat) -> None:
        """Nothing to load: the library is ready."""

    def close(self) -> None:
        """Nothing to release: the library stays initialized for the process."""

    def synthesize(self, segment: TextSegment) -> Iterator[Speech]:
        text = segment.text
        if not text.strip():
            return
        voice = self.voice
        if voice == "auto":  # a bilingual bulletin: the script source tags each sentence's language
            voice = "cmn" if (segment.language or "").startswith("zh") else "en"
        samples, events = self.library.synthesize(text, voice, self.rate, self.pitch)
        audio = samples.astype(np.float32) / 32768.0
        yield from speeches_from_events(text, audio, self.sample_rate, events, segment)

    def _voice_hint(self, wanted: str) -> str:
        # SetVoiceByName knows a voice by the last part of its identifier ("gmw/en-US" -> en-us).
        names = sorted({v.identifier.rsplit("/", 1)[-1].lower() for v in self.library.voices()})
        close = difflib.get_close_matches(wanted.strip().lower(), names, n=3, cutoff=0.6)
        examples = ("en", "en-us", "en-gb-x-rp", "cmn", "yue", "de", "fr", "es", "ja")
        common = [name for name in examples if name in names]
        hint = f"eSpeak NG has {len(names)} voices, for example {', '.join(common)}"
        return (f"did you mean {' or '.join(close)}? " if close else "") + hint


def speeches_from_events(
    text: str, audio: np.ndarray, sample_rate: int, events: Sequence[RawEvent], segment: TextSegment | None
) -> list[Speech]:
    """Cuts one synthesis into a :class:`Speech` per sentence (eSpeak NG's SENTENCE events) with its timings."""
    duration = len(audio) / sample_rate
    phonemes = _phoneme_timings(events, duration)
    words = _word_timings(text, events, phonemes, duration)

    starts = [e for e in events if e.type == _EVENT_SENTENCE]
    cuts = [0.0] + [min(e.audio_ms / 1000, duration) for e in starts[1:]] + [duration]
    positions = [0] + [max(0, e.text_position - 1) for e in starts[1:]] + [len(text)]
    speeches = []
    for k in range(len(cuts) - 1):
        begin, end = cuts[k], cuts[k + 1]
        first, last = round(begin * sample_rate), round(end * sample_rate)
        if last <= first:
            continue
        speeches.append(Speech(
            audio=np.ascontiguousarray(audio[first:last]),
            sample_rate=sample_rate,
            text=text[positions[k] : positions[k + 1]].strip(),
            phonemes=_within(phonemes, begin, end, first / sample_rate),
            words=_within(words, begin, end, first / sample_rate),
            segment=segment,
        ))
    return speeches


def _within(timings: Sequence[Timing], begin: float, end: float, origin: float) -> tuple[Timing, ...]:
    """The timings that start in [begin, end), relative to ``origin`` and cut at ``end``."""
    return tuple(
        Timing(t.label, t.start - origin, min(t.end, end) - origin) for t in timings if begin <= t.start < end
    )


def _phoneme_timings(events: Sequence[RawEvent], duration: float) -> list[Timing]:
    """Each phoneme lasts until the next phoneme event (pauses included) or the end of the audio."""
    marks = [e for e in events if e.type in (_EVENT_PHONEME, _EVENT_END)]
    timings = []
    for i, event in enumerate(marks):
        label = event.name.replace("ˈ", "").replace("ˌ", "")
        # Empty names are pauses; "(en)" marks a switch of language for a foreign word.
        if event.type != _EVENT_PHONEME or not label or label.startswith("("):
            continue
        start = event.audio_ms / 1000
        end = marks[i + 1].audio_ms / 1000 if i + 1 < len(marks) else duration
        start, end = min(start, duration), min(end, duration)
        if end > start:
            timings.append(Timing(label, start, end))
    return timings


def _word_timings(text: str, events: Sequence[RawEvent], phonemes: Sequence[Timing], duration: float
                  ) -> list[Timing]:
    """A word runs from its first phoneme to its last; its label is the text up to the next word, since eSpeak
    NG reads some groups of characters (as 很好) as one word."""
    words = [e for e in events if e.type == _EVENT_WORD]
    boundaries = sorted({e.text_position - 1 for e in events if e.type in (_EVENT_WORD, _EVENT_END)})
    timings = []
    for i, word in enumerate(words):
        start = min(word.audio_ms / 1000, duration)
        next_start = min(words[i + 1].audio_ms / 1000, duration) if i + 1 < len(words) else duration
        sounds = [p for p in phonemes if start <= p.start < next_start] if next_start > start else []
        begin = word.text_position - 1
        later = [b for b in boundaries if b > begin]
        label = _trim(text[begin : later[0] if later else len(text)]) or _trim(text[begin : begin + word.length])
        if sounds and label:
            timings.append(Timing(label, sounds[0].start, sounds[-1].end))
    return timings


def _trim(text: str) -> str:
    """Without the punctuation and spaces around it."""
    edges = "".join(c for c in text if unicodedata.category(c)[0] in "PZ") + " \t\n"
    return text.strip(edges)
