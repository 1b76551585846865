"""Face captures in the Live Link Face CSV format, as training data for the coefficient model.

Epic's Live Link Face app (an iPhone's ARKit face tracking) exports a take as a CSV file: a header
``Timecode,BlendShapeCount,EyeBlinkLeft,...,TongueOut,HeadYaw,...,RightEyeRoll`` and one row per captured frame.
``Timecode`` is ``HH:MM:SS:FF.sss``, ``FF`` the frame at the app's timecode rate (60 by default, 30 when set so)
and ``.sss`` its fraction; ``BlendShapeCount`` says how many values follow (61: the 52 ARKit blendshapes and 9
head and eye rotations, which are ignored here).

The ARKit names are Apple's in PascalCase; the face model's are camelCase with ``_L``/``_R`` for the sides
(``EyeBlinkLeft`` -> ``eyeBlink_L``, ``JawOpen`` -> ``jawOpen``, ``MouthSmileRight`` -> ``mouthSmile_R``). ARKit's
single ``BrowInnerUp`` and ``CheekPuff`` drive both sides of the model's pairs; ``TongueOut`` has no counterpart.
Names match case-insensitively (some exporters write ``BlendshapeCount`` or camelCase).

A take's audio is the WAV of the same name beside the CSV, starting at the first row's timecode. The curves are
sampled (linearly) at the centre of each video frame of the model's frame rate.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from anchorcast.errors import InputError

from .coeff_model import SAMPLE_RATE, shipped_expression_names

if TYPE_CHECKING:
    from .training_data import Item

TIMECODE_RATE = 60
"""Live Link Face's default timecode frame rate (the ``FF`` field)."""
TIMECODE = re.compile(r"^(\d+):(\d{2}):(\d{2})[:;](\d+)(?:\.(\d+))?$")
IGNORED = ("tongueout", "headyaw", "headpitch", "headroll", "lefteyeyaw", "lefteyepitch", "lefteyeroll",
           "righteyeyaw", "righteyepitch", "righteyeroll")
"""Columns the face model has no expression for (the tongue, head and eye rotations)."""
REQUIRED = ("jawopen", "mouthclose", "mouthfunnel", "mouthpucker", "eyeblinkleft", "eyeblinkright")
"""Columns a capture must have to be useful at all (the rest of the 52 default to 0 when absent)."""


def arkit_targets(column: str, names: Sequence[str]) -> list[int]:
    """Indices in ``names`` that a Live Link Face column drives (empty for the ignored ones)."""
    lowered = {name.lower(): i for i, name in enumerate(names)}
    key = column.strip().lower()
    if key in lowered:  # jawLeft, mouthRight: the side is the motion, not a half of the face
        return [lowered[key]]
    for suffix, mark in (("left", "_l"), ("right", "_r")):
        if key.endswith(suffix):
            side = key[: -len(suffix)] + mark
            return [lowered[side]] if side in lowered else []
    return [lowered[key + mark] for mark in ("_l", "_r") if key + mark in lowered]


def parse_timecode(value: str, rate: int = TIMECODE_RATE) -> float:
    """Seconds of a ``HH:MM:SS:FF.sss`` timecode at ``rate`` frames a second; ValueError when malformed."""
    match = TIMECODE.match(value.strip())
    if match is None:
        raise ValueError(f"timecode {value!r} is not HH:MM:SS:FF.sss")
    hours, minutes, seconds, frame = (int(match.group(i)) for i in range(1, 5))
    fraction = float("0." + match.group(5)) if match.group(5) else 0.0
    if minutes >= 60 or seconds >= 60 or frame >= rate:
        raise ValueError(f"timecode {value!r} is out of range (frames counted at {rate} fps)")
    return hours * 3600 + minutes * 60 + seconds + (frame + fraction) / rate


@dataclass(frozen=True)
class Capture:
    """A Live Link Face take: capture times (seconds from the first row) and (rows, 53) weights."""

    path: Path
    times: npt.NDArray[np.float64]
    weights: npt.NDArray[np.float32]

    def resampled(self, fps: Fraction | int, frames: int) -> npt.NDArray[np.float32]:
        """(frames, 53): the curves at the centre of each video frame (held at the ends)."""
        centres = (np.arange(frames) + 0.5) / float(fps)
        return np.stack([np.interp(centres, self.times, self.weights[:, k]) for k in range(self.weights.shape[1])],
                        axis=1).astype(np.float32)


def read_csv(path: Path, rate: int = TIMECODE_RATE, names: Sequence[str] | None = None) -> Capture:
    """Reads a Live Link Face CSV; an InputError naming the file (and line) when it is not one."""
    order = list(names or shipped_expression_names())
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            rows = list(csv.reader(file))
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"{path}: cannot read the Live Link Face CSV ({error})") from None
    if not rows:
        raise InputError(f"{path}: empty file, expected a Live Link Face CSV (Timecode,BlendShapeCount,...)")
    header = [cell.strip() for cell in rows[0]]
    lowered = [cell.lower() for cell in header]
    missing = [name for name in ("timecode", *REQUIRED) if name not in lowered]
    if missing:
        raise InputError(f"{path}:1: not a Live Link Face CSV: no column {', '.join(missing)}",
                         hint="the header must start Timecode,BlendShapeCount,EyeBlinkLeft,... (the app's export)")
    columns = [(i, arkit_targets(header[i], order)) for i, name in enumerate(lowered)
               if name not in ("timecode", "blendshapecount", *IGNORED)]
    unknown = [header[i] for i, targets in columns if not targets]
    if unknown:
        raise InputError(f"{path}:1: unknown blendshape column(s) {', '.join(unknown[:5])}",
                         hint="Live Link Face writes ARKit names such as EyeBlinkLeft, JawOpen, MouthSmileRight")
    clock = lowered.index("timecode")
    times, weights = [], []
    for line, row in enumerate(rows[1:], 2):
        if not any(cell.strip() for cell in row):
            continue
        if len(row) < len(header):
            raise InputError(f"{path}:{line}: {len(row)} values, the header has {len(header)} columns")
        values = np.zeros(len(order), np.float32)
        try:
            times.append(parse_timecode(row[clock], rate))
            for i, targets in columns:
                values[targets] = float(row[i])
        except ValueError as error:
            raise InputError(f"{path}:{line}: {error}") from None
        if not np.all(np.isfinite(values)):
            raise InputError(f"{path}:{line}: a blendshape value is not a finite number")
        weights.append(np.clip(values, 0.0, 1.0))
    if len(times) < 2:
        raise InputError(f"{path}: {len(times)} capture row(s); a take needs at least two")
    clock_times = np.array(times, np.float64)
    if np.any(np.diff(clock_times) <= 0):
        line = int(np.argmax(np.diff(clock_times) <= 0)) + 3
        raise InputError(f"{path}:{line}: the timecode does not advance (timecodes counted at {rate} fps)",
                         hint="a take that crosses midnight or was recorded at another rate: pass its rate")
    return Capture(path, clock_times - clock_times[0], np.stack(weights))


def read_wav(path: Path) -> npt.NDArray[np.float32]:
    """A WAV file as 16 kHz mono float32 (soxr); InputError naming the file."""
    import soundfile
    import soxr

    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except (OSError, RuntimeError) as error:
        raise InputError(f"{path}: cannot read the take's audio ({error})") from None
    mono = audio.mean(axis=1)
    return mono if rate == SAMPLE_RATE else soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)


def load_take(csv_path: Path, fps: Fraction | int = 25, rate: int = TIMECODE_RATE) -> tuple[
        npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """``(audio 16 kHz, (frames, 53) targets)`` of a take: the CSV and the WAV of the same name beside it."""
    wav = csv_path.with_suffix(".wav")
    if not wav.is_file():
        raise InputError(f"{csv_path}: no audio beside it ({wav.name})",
                         hint="export the take's audio as a WAV of the same name into the same folder")
    capture = read_csv(csv_path, rate)
    audio = read_wav(wav)
    frames = min(int(len(audio) * Fraction(fps) // SAMPLE_RATE),
                 int(capture.times[-1] * float(fps)) + 1)
    return audio[: int(frames * SAMPLE_RATE // Fraction(fps))], capture.resampled(fps, frames)


def load_livelink_folder(folder: Path, fps: Fraction | int = 25, heldout_every: int = 10) -> list[Item]:
    """Every take (``*.csv`` with its ``.wav``) in ``folder`` as training items. The last take (sorted by name)
    and every ``heldout_every``-th before it are held out, when there are two or more. The voice is the folder's
    name (one performer per folder)."""
    from .training_data import Item

    if not folder.is_dir():
        raise InputError(f"Live Link Face folder {folder} not found")
    takes = sorted(folder.glob("*.csv"))
    if not takes:
        raise InputError(f"{folder}: no Live Link Face takes (*.csv with a .wav beside each)")
    items = []
    for index, path in enumerate(takes):
        audio, target = load_take(path, fps)
        last = len(takes) - 1
        split = "heldout-sentence" if last and (last - index) % heldout_every == 0 else "train"
        items.append(Item(f"livelink-{folder.name}-{path.stem}", audio, target, f"livelink-{folder.name}", split))
    return items
