"""The on-disk talking-face data set every training stage reads.

A data set folder holds:

- ``dataset.json``: ``format``, ``version``, ``fps`` (25), ``sample_rate`` (16000), ``crop_size`` (96) and the list
  of ``clips``, each ``{"id", "speaker", "frames", "source", "truth"?}`` (``truth`` only for synthetic clips: the
  text, voice and per-frame mouth shapes they were rendered from);
- ``clips/<id>/faces.npy``: (N, 96, 96, 3) uint8 BGR face crops, as the Wav2Lip models take them;
- ``clips/<id>/audio.npy``: float32 mono 16 kHz, exactly ``N * 640`` samples (the clip's frames' own audio);
- ``clips/<id>/mel.npy``: the (80, T) reference mel spectrogram of that audio (see
  :func:`anchorcast_plugins.engines.wav2lip.audio.melspectrogram`);
- ``clips/<id>/audio_original.npy`` (optional, ``anchorcast train prepare`` writes it when it denoised the sound):
  the clip's sound before denoising, same length as ``audio.npy``, for reference; ``audio.npy`` and the mel are
  the denoised sound.

Prepared data sets also carry, in ``dataset.json``, the ``prepared`` options and a ``people`` map: one entry per
speaker (``{"clips": [ids], "sources": [videos]}``), a speaker being ``--speaker``'s name or one person found by
face-embedding clustering. A clip's folder stays ``clips/<id>``: a person's clips are grouped by the ``speaker``
field (and their ids start with it), not by folder, so every reader keeps its paths.

SyncNet pairs follow the reference's training indexing: the five frames starting at frame ``t`` go with the mel
window ``mel[:, int(80 * t / 25) : + 16]``; a negative takes the window of another start ``u`` in the same clip
with ``|u - t| >= shift_min``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from anchorcast.errors import InputError

DATASET_FORMAT = "anchorcast-talking-faces"
DATASET_VERSION = 1
INFO_FILE = "dataset.json"
CLIPS_DIR = "clips"
FACES_FILE, AUDIO_FILE, MEL_FILE = "faces.npy", "audio.npy", "mel.npy"
ORIGINAL_AUDIO_FILE = "audio_original.npy"
FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640
CROP_SIZE = 96
SYNC_FRAMES = 5
MEL_STEP = 16
MEL_COLUMNS_PER_SECOND = 80

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def mel_start(frame: int) -> int:
    """The first mel column of the sync window of the five frames starting at ``frame``: ``int(80 * t / 25)``."""
    return frame * MEL_COLUMNS_PER_SECOND // FPS


def last_start_by_mel(columns: int) -> int:
    """The last start ``t`` whose mel window fits in ``columns`` mel columns (-1: none does)."""
    # mel_start(t) + 16 <= columns  <=>  80 t < 25 (columns - 15)
    return (FPS * (columns - MEL_STEP + 1) - 1) // MEL_COLUMNS_PER_SECOND if columns >= MEL_STEP else -1


def sync_start_count(frames: int, columns: int) -> int:
    """How many five-frame starts ``t`` a clip of ``frames`` frames and ``columns`` mel columns has with both their
    frames and a full mel window."""
    return max(0, min(frames - SYNC_FRAMES, last_start_by_mel(columns)) + 1)


def clip_id(text: str) -> str:
    """``text`` made safe as a clip id (a folder name): letters, digits, ``_ . -``."""
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.") or "clip"
    return cleaned if cleaned[0].isalnum() else "c" + cleaned


@dataclass(frozen=True)
class Clip:
    """One clip of a data set; its arrays are read (memory-mapped) on first use."""

    id: str
    speaker: str
    frames: int
    source: str
    folder: Path
    truth: dict[str, Any] | None = None

    @cached_property
    def faces(self) -> npt.NDArray[np.uint8]:
        """(N, 96, 96, 3) uint8 BGR crops (read-only memory map)."""
        return np.load(self.folder / FACES_FILE, mmap_mode="r")

    @cached_property
    def audio(self) -> npt.NDArray[np.float32]:
        return np.load(self.folder / AUDIO_FILE, mmap_mode="r")

    @cached_property
    def mel(self) -> npt.NDArray[np.float32]:
        return np.load(self.folder / MEL_FILE)

    @cached_property
    def audio_original(self) -> npt.NDArray[np.float32] | None:
        """The sound before denoising (memory map), or None when the clip was not denoised."""
        path = self.folder / ORIGINAL_AUDIO_FILE
        return np.load(path, mmap_mode="r") if path.is_file() else None

    @property
    def seconds(self) -> float:
        return self.frames / FPS

    @cached_property
    def sync_starts(self) -> int:
        """How many five-frame starts ``t`` have both their frames and a full mel window in this clip."""
        return sync_start_count(self.frames, self.mel.shape[1])

    def info(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"id": self.id, "speaker": self.speaker, "frames": self.frames,
                                 "source": self.source}
        if self.truth is not None:
            entry["truth"] = self.truth
        return entry


@dataclass(frozen=True)
class SyncBatch:
    """A SyncNet batch: ``mels`` (B,1,80,16), ``faces`` (B,15,48,96) float32 in [0,1] (lower halves of five
    frames, frame-major BGR), ``labels`` (B,) float32 (1 in sync, 0 off), and where each sample came from."""

    mels: npt.NDArray[np.float32]
    faces: npt.NDArray[np.float32]
    labels: npt.NDArray[np.float32]
    clip_ids: tuple[str, ...]
    face_starts: npt.NDArray[np.int64]
    audio_starts: npt.NDArray[np.int64]
    """The frame whose sync window gave the audio: equal to ``face_starts`` for positives."""


@dataclass
class Dataset:
    """A talking-face data set folder (see the module docstring), or a subset of its clips."""

    folder: Path
    clips: list[Clip]
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, folder: Path | str) -> Dataset:
        """Reads ``folder/dataset.json`` and checks every clip's files and shapes; InputError naming what is
        missing or wrong."""
        folder = Path(folder).expanduser()
        hint = ("make one with `anchorcast train prepare VIDEOS... --out DATASET` or "
                "`anchorcast train synth --out DATASET`")
        if not folder.is_dir():
            raise InputError(f"data set folder {folder} does not exist", hint=hint)
        info_path = folder / INFO_FILE
        if not info_path.is_file():
            raise InputError(f"{folder} is not a data set: it has no {INFO_FILE}", hint=hint)
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read {info_path}: {error}", hint=hint) from error
        if not isinstance(info, dict) or info.get("format") != DATASET_FORMAT:
            raise InputError(f"{info_path} is not an anchorcast data set description", hint=hint)
        if info.get("version") != DATASET_VERSION:
            raise InputError(f"{info_path} has data set version {info.get('version')!r}; this anchorcast reads "
                             f"version {DATASET_VERSION}", hint="prepare the data set again")
        expected = {"fps": FPS, "sample_rate": SAMPLE_RATE, "crop_size": CROP_SIZE}
        for key, value in expected.items():
            if info.get(key) != value:
                raise InputError(f"{info_path}: {key} is {info.get(key)!r}, expected {value}")
        entries = info.get("clips")
        if not isinstance(entries, list):
            raise InputError(f"{info_path} has no list of clips", hint=hint)
        clips = [_load_clip(folder, entry, info_path) for entry in entries]
        ids = [c.id for c in clips]
        if len(set(ids)) != len(ids):
            raise InputError(f"{info_path} lists a clip id twice")
        return cls(folder, clips, info)

    def __len__(self) -> int:
        return len(self.clips)

    def clip(self, clip_id: str) -> Clip:
        for clip in self.clips:
            if clip.id == clip_id:
                return clip
        raise InputError(f"data set {self.folder} has no clip {clip_id!r}")

    @property
    def speakers(self) -> list[str]:
        return sorted({c.speaker for c in self.clips})

    @property
    def frames(self) -> int:
        return sum(c.frames for c in self.clips)

    def subset(self, clip_ids: list[str] | tuple[str, ...]) -> Dataset:
        wanted = set(clip_ids)
        return Dataset(self.folder, [c for c in self.clips if c.id in wanted], self.info)

    def split(self, heldout: float = 0.2, seed: int = 0) -> tuple[Dataset, Dataset]:
        """``(train, held_out)`` by whole clips: the ``ceil(heldout * len)`` clips (at least one when there are
        two or more) that come first when ordered by a hash of ``seed`` and the clip id. Deterministic, and a
        clip keeps its side when others are added."""
        if not 0.0 <= heldout < 1.0:
            raise InputError(f"held-out fraction must be in [0, 1), got {heldout}")
        ranked = sorted(self.clips, key=lambda c: hashlib.sha256(f"{seed}:{c.id}".encode()).hexdigest())
        count = int(np.ceil(heldout * len(ranked))) if len(ranked) >= 2 else 0
        if heldout > 0 and len(ranked) >= 2:
            count = min(max(count, 1), len(ranked) - 1)
        held = {c.id for c in ranked[:count]}
        return (Dataset(self.folder, [c for c in self.clips if c.id not in held], self.info),
                Dataset(self.folder, [c for c in self.clips if c.id in held], self.info))

    def sync_pairs(self, rng: np.random.Generator, count: int, shift_min: int = 5) -> SyncBatch:
        """``count`` SyncNet samples, half in sync and half off (the audio window of a start at least
        ``shift_min`` frames away in the same clip), in random order; clips drawn by their number of starts."""
        if count < 1:
            raise ValueError("count must be at least 1")
        if shift_min < 1:
            raise ValueError("shift_min must be at least 1")
        usable = [(c, c.sync_starts) for c in self.clips]
        usable = [(c, n) for c, n in usable if n > shift_min]
        if not usable:
            raise InputError(f"no clip in {self.folder} is long enough for SyncNet pairs shifted by {shift_min} "
                             f"frames (a clip needs more than {SYNC_FRAMES + shift_min} frames)")
        weights = np.array([n for _, n in usable], np.float64)
        labels = np.zeros(count, np.float32)
        labels[: (count + 1) // 2] = 1.0
        labels = rng.permutation(labels)
        picks = rng.choice(len(usable), size=count, p=weights / weights.sum())
        mels = np.empty((count, 1, 80, MEL_STEP), np.float32)
        faces = np.empty((count, 3 * SYNC_FRAMES, CROP_SIZE // 2, CROP_SIZE), np.float32)
        face_starts = np.empty(count, np.int64)
        audio_starts = np.empty(count, np.int64)
        ids = []
        for k in range(count):
            clip, starts = usable[picks[k]]
            t = u = int(rng.integers(starts))
            if labels[k] == 0:
                # in a short clip a start near the middle has no start far enough away: draw one that has
                t = int(rng.choice(np.union1d(np.arange(0, starts - shift_min), np.arange(shift_min, starts))))
                far = np.concatenate([np.arange(0, max(0, t - shift_min + 1)),
                                      np.arange(min(starts, t + shift_min), starts)])
                u = int(far[rng.integers(len(far))])
            face_starts[k], audio_starts[k] = t, u
            ids.append(clip.id)
            faces[k] = lower_halves(clip.faces[t : t + SYNC_FRAMES])
            mels[k, 0] = clip.mel[:, mel_start(u) : mel_start(u) + MEL_STEP]
        return SyncBatch(mels, faces, labels, tuple(ids), face_starts, audio_starts)


def lower_halves(frames: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """(5, 96, 96, 3) uint8 BGR crops -> (15, 48, 96) float32 in [0, 1], frame-major (f0 B,G,R, f1 B,G,R, ...)."""
    lower = np.asarray(frames[:, CROP_SIZE // 2 :], np.float32) / 255.0
    return np.ascontiguousarray(lower.transpose(0, 3, 1, 2).reshape(-1, CROP_SIZE // 2, CROP_SIZE))


def _load_clip(folder: Path, entry: Any, info_path: Path) -> Clip:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), str) or not _ID_PATTERN.match(entry["id"]):
        raise InputError(f"{info_path}: a clip entry has no valid id: {str(entry)[:80]}")
    cid = entry["id"]
    frames = entry.get("frames")
    if not isinstance(frames, int) or frames < 1:
        raise InputError(f"{info_path}: clip {cid} has no frame count")
    clip_folder = folder / CLIPS_DIR / cid
    broken = f"data set {folder}: clip {cid}"
    hint = "the data set is incomplete: make it again"
    for name in (FACES_FILE, AUDIO_FILE, MEL_FILE):
        if not (clip_folder / name).is_file():
            raise InputError(f"{broken} has no {CLIPS_DIR}/{cid}/{name}", hint=hint)
    try:
        faces = np.load(clip_folder / FACES_FILE, mmap_mode="r")
        audio = np.load(clip_folder / AUDIO_FILE, mmap_mode="r")
        mel = np.load(clip_folder / MEL_FILE, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise InputError(f"{broken}: cannot read its arrays: {error}", hint=hint) from error
    if faces.shape != (frames, CROP_SIZE, CROP_SIZE, 3) or faces.dtype != np.uint8:
        raise InputError(f"{broken}: faces.npy is {faces.dtype} {faces.shape}, expected uint8 "
                         f"({frames}, {CROP_SIZE}, {CROP_SIZE}, 3)", hint=hint)
    if audio.shape != (frames * SAMPLES_PER_FRAME,) or audio.dtype != np.float32:
        raise InputError(f"{broken}: audio.npy is {audio.dtype} {audio.shape}, expected float32 "
                         f"({frames * SAMPLES_PER_FRAME},)", hint=hint)
    if mel.ndim != 2 or mel.shape[0] != 80 or mel.dtype != np.float32:
        raise InputError(f"{broken}: mel.npy is {mel.dtype} {mel.shape}, expected float32 (80, T)", hint=hint)
    truth = entry.get("truth")
    return Clip(cid, str(entry.get("speaker", "unknown")), frames, str(entry.get("source", "")), clip_folder,
                truth if isinstance(truth, dict) else None)


class DatasetWriter:
    """Writes a data set folder: clips go into a hidden partial folder beside ``out``, which :meth:`finish`
    moves into place (replacing a data set there). Refuses a non-empty ``out`` that is not a data set."""

    def __init__(self, out: Path | str, extra: dict[str, Any] | None = None) -> None:
        self.out = Path(out).expanduser()
        occupied = self.out.exists() and (not self.out.is_dir() or any(self.out.iterdir()))
        if occupied and not (self.out / INFO_FILE).is_file():
            raise InputError(f"{self.out} exists and is not a data set folder: refusing to write into it",
                             hint="choose another --out folder, or an empty one")
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        if self.partial.exists():
            shutil.rmtree(self.partial)
        (self.partial / CLIPS_DIR).mkdir(parents=True)
        self.extra = dict(extra or {})
        self.entries: list[dict[str, Any]] = []

    def add(self, cid: str, speaker: str, faces: npt.NDArray[np.uint8], audio: npt.ArrayLike, source: str,
            truth: dict[str, Any] | None = None, original: npt.ArrayLike | None = None) -> dict[str, Any]:
        """Stores one clip: ``faces`` (N,96,96,3) uint8 BGR; ``audio`` 16 kHz mono, cut or padded with silence
        to ``N * 640`` samples; its mel spectrogram is computed here. ``original``: the sound before denoising,
        kept as ``audio_original.npy`` (cut or padded the same way)."""
        from anchorcast_plugins.engines.wav2lip.audio import melspectrogram

        if not _ID_PATTERN.match(cid) or any(e["id"] == cid for e in self.entries):
            raise ValueError(f"clip id {cid!r} is not a valid, unique folder name")
        faces = np.ascontiguousarray(faces, np.uint8)
        if faces.ndim != 4 or faces.shape[1:] != (CROP_SIZE, CROP_SIZE, 3) or len(faces) < 1:
            raise ValueError(f"faces must be (N, 96, 96, 3), got {faces.shape}")
        wanted = len(faces) * SAMPLES_PER_FRAME
        samples = np.asarray(audio, np.float32).reshape(-1)[:wanted]
        samples = np.pad(samples, (0, wanted - len(samples)))
        folder = self.partial / CLIPS_DIR / cid
        folder.mkdir()
        np.save(folder / FACES_FILE, faces)
        np.save(folder / AUDIO_FILE, samples)
        np.save(folder / MEL_FILE, melspectrogram(samples))
        if original is not None:
            kept = np.asarray(original, np.float32).reshape(-1)[:wanted]
            np.save(folder / ORIGINAL_AUDIO_FILE, np.pad(kept, (0, wanted - len(kept))))
        entry: dict[str, Any] = {"id": cid, "speaker": speaker, "frames": len(faces), "source": source}
        if truth is not None:
            entry["truth"] = truth
        self.entries.append(entry)
        return entry

    def relabel(self, cid: str, speaker: str, new_id: str) -> str:
        """Gives a clip added before another speaker and id (its folder is renamed); returns the id used (made
        unique with trailing ``x`` when taken)."""
        entry = next(e for e in self.entries if e["id"] == cid)
        taken = {e["id"] for e in self.entries} - {cid}
        while new_id in taken:
            new_id += "x"
        if not _ID_PATTERN.match(new_id):
            raise ValueError(f"clip id {new_id!r} is not a valid folder name")
        if new_id != cid:
            os.replace(self.partial / CLIPS_DIR / cid, self.partial / CLIPS_DIR / new_id)
        entry["id"], entry["speaker"] = new_id, speaker
        return new_id

    def remove(self, cid: str) -> None:
        """Takes a clip added before back out (its files and its entry)."""
        shutil.rmtree(self.partial / CLIPS_DIR / cid, ignore_errors=True)
        self.entries = [e for e in self.entries if e["id"] != cid]

    def finish(self) -> Dataset:
        info = {"format": DATASET_FORMAT, "version": DATASET_VERSION, "fps": FPS, "sample_rate": SAMPLE_RATE,
                "crop_size": CROP_SIZE, **self.extra, "clips": self.entries}
        (self.partial / INFO_FILE).write_text(json.dumps(info, indent=1) + "\n")
        if self.out.exists():
            shutil.rmtree(self.out)
        os.replace(self.partial, self.out)
        return Dataset.load(self.out)

    def abandon(self) -> None:
        shutil.rmtree(self.partial, ignore_errors=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> None:
        if kind is not None or self.partial.exists():
            self.abandon()
