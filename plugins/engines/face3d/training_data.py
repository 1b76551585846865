"""Training data for the coefficient model: a teacher data set spoken by the project's voices, cached on disk.

``anchorcast train coeffs-data --out DIR`` has each voice of :data:`VOICES` read the sentences of
``teacher_corpus.txt`` (newsroom English and Chinese) through the project's own Voice plugins, so the phoneme
timings are the ones the engines see; the audio is resampled to 16 kHz (soxr) and the teacher
(:mod:`.teacher`) turns the timings into 25 fps coefficients. Splits: every :data:`HELDOUT_EVERY`-th sentence is
held out for all voices (``heldout-sentence``), and the voice :data:`HELDOUT_VOICE` reads only those sentences
(``heldout-voice``), so the figures are on sentences and a voice training never saw.

A data set folder holds ``dataset.json`` (format, fps, expression names, voices, one entry per utterance with its
id, sentence, language, voice and split) and ``items/<id>.npz`` (``audio``: int16 at 16 kHz; ``coefficients``:
(frames, 53) float16; ``phoneme_labels``, ``phoneme_times``: the voice's timings, seconds).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from anchorcast.errors import InputError
from anchorcast.media import TextSegment, Timing

from .coeff_model import SAMPLE_RATE, frame_count, shipped_expression_names
from .teacher import teacher_coefficients

DATASET_FORMAT = "anchorcast-coeffs-data/1"
DATASET_FILE = "dataset.json"
FPS = 25
HELDOUT_EVERY = 10
"""Sentences ``0, 10, 20, ...`` of each language are held out."""
SPLITS = ("train", "heldout-sentence", "heldout-voice")


@dataclass(frozen=True)
class VoiceSpec:
    """A voice of the teacher set: a Voice plugin and its settings for each language it reads."""

    name: str
    plugin: str
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)


VOICES: tuple[VoiceSpec, ...] = (
    VoiceSpec("piper", "piper", {"en": {}}),
    VoiceSpec("piper-slow", "piper", {"en": {"length_scale": 1.2}}),
    VoiceSpec("espeak-en", "espeak", {"en": {"voice": "en", "rate": 170, "pitch": 50}}),
    VoiceSpec("espeak-us-f3", "espeak", {"en": {"voice": "en-us+f3", "rate": 150, "pitch": 65}}),
    VoiceSpec("espeak-m3-fast", "espeak", {"en": {"voice": "en+m3", "rate": 210, "pitch": 40}}),
    VoiceSpec("espeak-cmn", "espeak", {"zh": {"voice": "cmn", "rate": 170, "pitch": 50}}),
    VoiceSpec("espeak-cmn-f2", "espeak", {"zh": {"voice": "cmn+f2", "rate": 150, "pitch": 65}}),
    VoiceSpec("espeak-cmn-m3-fast", "espeak", {"zh": {"voice": "cmn+m3", "rate": 200, "pitch": 40}}),
    VoiceSpec("espeak-rp-f4", "espeak", {"en": {"voice": "en-gb-x-rp+f4", "rate": 185, "pitch": 58},
                                         "zh": {"voice": "cmn+f4", "rate": 185, "pitch": 58}}),
)
HELDOUT_VOICE = "espeak-rp-f4"


def corpus() -> list[tuple[str, str]]:
    """The bundled sentences as ``(language, text)``, in file order."""
    text = (resources.files("anchorcast_plugins.engines.face3d") / "teacher_corpus.txt").read_text("utf-8")
    rows = []
    for line in text.splitlines():
        if line.strip() and not line.startswith("#"):
            language, sentence = line.split("\t", 1)
            rows.append((language, sentence.strip()))
    return rows


def make_voice(spec: VoiceSpec, language: str) -> Any:
    """The Voice plugin object of ``spec`` for ``language`` (its factory with the plugin's defaults)."""
    settings = spec.settings[language]
    if spec.plugin == "piper":
        from anchorcast_plugins.voices.piper_voice import create_voice as create_piper

        defaults = {"model": None, "config": None, "volume": 1.0}
        voice = create_piper(None, {**defaults, **settings})  # type: ignore[arg-type]
    elif spec.plugin == "espeak":
        from anchorcast_plugins.voices.espeak_voice import EspeakVoice

        voice = EspeakVoice(settings.get("voice", "en"), rate=settings.get("rate", 170),
                            pitch=settings.get("pitch", 50))
    else:
        raise InputError(f"teacher voice {spec.name}: unknown plugin {spec.plugin!r}")
    voice.open(None)
    return voice


def speak(voice: Any, text: str, language: str) -> tuple[npt.NDArray[np.float32], int, list[Timing]]:
    """``text`` read by ``voice``: its audio, rate and phoneme timings (sentences the voice splits joined)."""
    pieces, phonemes, offset, rate = [], [], 0.0, 0
    for speech in voice.synthesize(TextSegment(text, language=language)):
        rate = speech.sample_rate
        pieces.append(np.asarray(speech.audio, np.float32))
        phonemes += [p.shifted(offset) for p in speech.phonemes]
        offset += speech.duration
    if not pieces:
        raise InputError(f"the voice said nothing for {text!r}")
    return np.concatenate(pieces), rate, phonemes


def to_16k(audio: npt.NDArray[np.float32], rate: int) -> npt.NDArray[np.float32]:
    import soxr

    if rate == SAMPLE_RATE:
        return audio
    return soxr.resample(audio, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


@dataclass
class Item:
    """One utterance: 16 kHz audio and its per-frame target coefficients (teacher or a face capture)."""

    id: str
    audio: npt.NDArray[np.float32]
    target: npt.NDArray[np.float32]
    voice: str
    split: str
    language: str = ""
    text: str = ""


def plan(sentences: int | None, languages: Sequence[str], voices: Sequence[VoiceSpec] = VOICES
         ) -> list[tuple[int, str, str, VoiceSpec, str]]:
    """``(sentence index, language, text, voice, split)`` of every utterance to make: the first ``sentences`` of
    each language (all when None) by every voice that reads it, the held-out voice only on held-out sentences."""
    rows, seen = [], dict.fromkeys(languages, 0)
    for index, (language, text) in enumerate(corpus()):
        if language not in seen or (sentences is not None and seen[language] >= sentences):
            continue
        heldout = seen[language] % HELDOUT_EVERY == 0
        seen[language] += 1
        for spec in voices:
            if language not in spec.settings:
                continue
            if spec.name == HELDOUT_VOICE:
                if heldout:
                    rows.append((index, language, text, spec, "heldout-voice"))
            else:
                rows.append((index, language, text, spec, "heldout-sentence" if heldout else "train"))
    return rows


def build_dataset(out: Path, sentences: int | None = None, languages: Sequence[str] = ("en", "zh"),
                  voices: Sequence[VoiceSpec] = VOICES, progress: Any = None) -> dict[str, Any]:
    """Writes the teacher data set to ``out`` (see the module doc); returns its manifest. Utterances already in
    the folder (a build that stopped) are kept, not spoken again. ``progress(done, total)`` is called per item."""
    names = shipped_expression_names()
    rows = plan(sentences, languages, voices)
    if not rows:
        raise InputError(f"no sentences to speak for languages {', '.join(languages)}",
                         hint="use --languages en,zh and --sentences of at least 1")
    (out / "items").mkdir(parents=True, exist_ok=True)
    loaded: dict[tuple[str, str], Any] = {}
    entries = []
    for done, (index, language, text, spec, split) in enumerate(rows, 1):
        item_id = f"{language}{index:04d}-{spec.name}"
        path = out / "items" / f"{item_id}.npz"
        if not path.is_file():
            key = (spec.name, language)
            if key not in loaded:
                loaded[key] = make_voice(spec, language)
            audio, rate, phonemes = speak(loaded[key], text, language)
            frames = frame_count(round(len(audio) * SAMPLE_RATE / rate), FPS)
            target = teacher_coefficients(phonemes, audio, rate, frames, FPS, names)
            audio16 = to_16k(audio, rate)
            pcm = np.clip(np.round(audio16 * 32767), -32768, 32767).astype(np.int16)
            partial = path.with_name(path.name + ".partial.npz")
            np.savez(partial, audio=pcm, coefficients=target.astype(np.float16),
                     phoneme_labels=np.array([p.label for p in phonemes], dtype=str),
                     phoneme_times=np.array([(p.start, p.end) for p in phonemes], np.float64).reshape(-1, 2))
            partial.replace(path)
        entries.append({"id": item_id, "sentence": index, "language": language, "text": text,
                        "voice": spec.name, "split": split})
        if progress is not None:
            progress(done, len(rows))
    manifest = {"format": DATASET_FORMAT, "fps": FPS, "sample_rate": SAMPLE_RATE, "expression_names": list(names),
                "heldout_every": HELDOUT_EVERY, "heldout_voice": HELDOUT_VOICE,
                "voices": [{"name": v.name, "plugin": v.plugin, "settings": v.settings} for v in voices],
                "items": entries}
    (out / DATASET_FILE).write_text(json.dumps(manifest, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return manifest


def load_dataset(folder: Path, splits: Sequence[str] = SPLITS) -> list[Item]:
    """The items of a teacher data set folder in ``splits``; InputError naming the folder or file when it is not
    one."""
    manifest_path = folder / DATASET_FILE
    if not folder.is_dir():
        raise InputError(f"teacher data set {folder} not found",
                         hint="make one with `anchorcast train coeffs-data --out FOLDER`")
    if not manifest_path.is_file():
        raise InputError(f"{folder} is not a teacher data set: it has no {DATASET_FILE}",
                         hint="make one with `anchorcast train coeffs-data --out FOLDER`")
    try:
        manifest = json.loads(manifest_path.read_text("utf-8"))
    except ValueError as error:
        raise InputError(f"{manifest_path}: not JSON ({error})") from None
    if manifest.get("format") != DATASET_FORMAT or manifest.get("fps") != FPS:
        raise InputError(f"{manifest_path}: not a {DATASET_FORMAT} data set at {FPS} fps")
    if list(manifest.get("expression_names", [])) != list(shipped_expression_names()):
        raise InputError(f"{manifest_path}: made for other expressions than the shipped face model's 53")
    items = []
    for entry in manifest["items"]:
        if entry["split"] not in splits:
            continue
        path = folder / "items" / f"{entry['id']}.npz"
        try:
            with np.load(path, allow_pickle=False) as archive:
                audio = archive["audio"].astype(np.float32) / 32768.0
                target = archive["coefficients"].astype(np.float32)
        except (OSError, KeyError, ValueError) as error:
            raise InputError(f"{path}: unreadable data set item ({error})",
                             hint="delete the file and run `anchorcast train coeffs-data` again") from None
        items.append(Item(entry["id"], audio, target, entry["voice"], entry["split"], entry["language"],
                          entry["text"]))
    return items


@contextmanager
def progress_bar(label: str) -> Iterator[Any]:
    """A rich progress bar; yields ``update(done, total)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task(label, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


def run_coeffs_data(host: Any, args: argparse.Namespace) -> int:
    """Runs ``anchorcast train coeffs-data``."""
    del host
    from rich.console import Console

    console = Console(stderr=True)
    languages = [part.strip() for part in args.languages.split(",") if part.strip()]
    unknown = sorted(set(languages) - {"en", "zh"})
    if unknown:
        raise InputError(f"--languages: the corpus has en and zh, not {', '.join(unknown)}")
    started = time.perf_counter()
    with progress_bar("speaking") as progress:
        manifest = build_dataset(args.out, args.sentences, languages, progress=progress)
    counts = {split: sum(1 for e in manifest["items"] if e["split"] == split) for split in SPLITS}
    splits = ", ".join(f"{count} {split}" for split, count in counts.items())
    console.print(f"{args.out}: {len(manifest['items'])} utterances ({splits}) by {len(manifest['voices'])} "
                  f"voices in {time.perf_counter() - started:.0f} s", highlight=False)
    return 0
