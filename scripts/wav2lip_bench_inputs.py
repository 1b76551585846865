"""The inputs of scripts/bench_wav2lip.py, all made here (nothing downloaded): seeded random Wav2Lip weights
imported into an ANCHORCAST_HOME through the weights store, seconds of eSpeak NG speech at 16 kHz, a 1280x720 still
(the bundled astronaut, 720x720, on a grey canvas) with a fixed face box, and the profile that runs them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

ASTRONAUT = Path(__file__).resolve().parent.parent / "plugins" / "engines" / "assets" / "astronaut.png"
FACE_BOX = (457, 144, 231, 210)
"""x, y, w, h of the astronaut's face in the 1280x720 still."""
WEIGHTS_NAME = "bench-random"
SPEECH = (
    "Good evening. Here is the news at the top of the hour. Markets rose in early trading, and the weather stays "
    "mild through the weekend. We will be back after the break with sport and the rest of the headlines. "
    "In other news, the city council approved the new bridge, and the library opens late on Thursdays."
)


@dataclass(frozen=True)
class ClipInputs:
    """Where the bench's inputs are: ``home`` holds the weights only (a template: copy it for each start-up)."""

    home: Path
    still: Path
    speech: Path
    seconds: float


def make_inputs(root: Path, seconds: float) -> ClipInputs:
    """Weights in ``root/home``, ``root/still.png`` and ``root/speech.wav`` (``seconds`` of speech)."""
    import soundfile

    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    _import_random_weights(root, home)
    still = root / "still.png"
    canvas = np.full((720, 1280, 3), 40, np.uint8)
    canvas[:, 280:1000] = cv2.resize(cv2.imread(str(ASTRONAUT)), (720, 720), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(still), canvas)
    speech = root / "speech.wav"
    soundfile.write(str(speech), speech_16k(seconds), 16000)
    return ClipInputs(home, still, speech, seconds)


def _import_random_weights(root: Path, home: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from anchorcast_plugins.engines.wav2lip.models import Wav2Lip

    torch.manual_seed(0)  # the same generator as the backend table's (seeded the same way)
    checkpoint = root / "generator.safetensors"
    save_file({k: v.contiguous() for k, v in Wav2Lip().state_dict().items()}, str(checkpoint))
    with anchorcast_home(home):
        from anchorcast_plugins.engines.wav2lip.weights_store import import_weights

        import_weights(checkpoint, WEIGHTS_NAME, overwrite=True)
    checkpoint.unlink()


def speech_16k(seconds: float) -> np.ndarray:
    """``seconds`` of eSpeak NG speech at 16 kHz, float32 (the text repeated when it is shorter)."""
    import soxr

    from anchorcast.media import TextSegment
    from anchorcast_plugins.voices.espeak_voice import EspeakVoice

    voice = EspeakVoice("en")
    audio = np.concatenate([segment.audio for segment in voice.synthesize(TextSegment(SPEECH))])
    audio16 = soxr.resample(audio, voice.sample_rate, 16000).astype(np.float32)
    wanted = round(seconds * 16000)
    return np.resize(audio16, wanted) if len(audio16) < wanted else audio16[:wanted]


def fresh_home(template: Path, target: Path) -> Path:
    """A copy of ``template`` holding the weights only: no prepared avatar, no stored decision, no OpenVINO
    model (a cold start)."""
    if target.exists():
        shutil.rmtree(target)
    (target / "weights").mkdir(parents=True)
    for weights in (template / "weights").glob("*.safetensors"):
        shutil.copy2(weights, target / "weights" / weights.name)
    return target


@contextmanager
def anchorcast_home(home: Path) -> Iterator[Path]:
    """ANCHORCAST_HOME set to ``home`` for the duration (the engine reads it when it opens)."""
    previous = os.environ.get("ANCHORCAST_HOME")
    os.environ["ANCHORCAST_HOME"] = str(home)
    try:
        yield home
    finally:
        if previous is None:
            os.environ.pop("ANCHORCAST_HOME", None)
        else:
            os.environ["ANCHORCAST_HOME"] = previous


def engine_settings(inputs: ClipInputs, backend: str, **extra: object) -> dict[str, object]:
    """The engine section of the bench profile, as the engine's settings."""
    return {"weights": WEIGHTS_NAME, "avatar": inputs.still, "face_box": list(FACE_BOX), "backend": backend, **extra}


def write_profile(path: Path, inputs: ClipInputs, out: Path) -> Path:
    """The end-to-end profile: 1280x720 at 25 fps, the speech file, wav2lip, a file output, pace fast."""
    x, y, w, h = FACE_BOX
    path.write_text(
        f"""[stream]
width = 1280
height = 720
fps = 25
sample_rate = 16000
[scheduler]
pace = "fast"
[source]
use = "audio-file"
path = "{inputs.speech}"
[engine]
use = "wav2lip"
weights = "{WEIGHTS_NAME}"
avatar = "{inputs.still}"
face_box = [{x}, {y}, {w}, {h}]
backend = "auto"
[outputs.file]
use = "file"
path = "{out}"
""",
        encoding="utf-8",
    )
    return path
