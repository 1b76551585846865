"""A synthetic talking-face data set with known ground truth, made here with nothing to download.

The ``viseme`` engine renders the bundled portrait (and, for a second speaker, the portrait mirrored and
recoloured) speaking English sentences read by the in-process eSpeak NG voice; the mouth follows the voice's
phoneme timings. Each clip stores the face crop of every frame (the avatar-style padded box, fixed because the
face does not move: detected once), the 16 kHz audio and its mel spectrogram, and as ground truth the text, the
voice, the phoneme timings and each frame's mouth openness and width. Negatives for a lip-sync expert are the same
clip with the audio shifted by a known number of frames (see :meth:`Dataset.sync_pairs`).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from anchorcast.components import FrameJob
from anchorcast.errors import InputError
from anchorcast.media import Image, StreamFormat, TextSegment, Timing
from anchorcast_plugins.engines.wav2lip.training.dataset import (
    FPS,
    SAMPLE_RATE,
    SAMPLES_PER_FRAME,
    Dataset,
    DatasetWriter,
)

SENTENCES = (
    "Good evening, and welcome to the late news.",
    "The weather will stay mild with light rain in the west.",
    "Markets opened higher this morning after a quiet week.",
    "A new bridge across the river opens to traffic on Monday.",
    "Scientists have found water ice near the lunar south pole.",
    "The city council voted to extend the night bus service.",
    "Fans queued for hours to buy tickets for the final.",
    "Our reporter spoke to farmers about the early harvest.",
    "Police have asked drivers to avoid the northern ring road.",
    "The museum will reopen its famous painting gallery in May.",
    "Train services are running normally again after the storm.",
    "A local school won the national robotics championship.",
    "Prices of fresh fruit and vegetables fell again last month.",
    "The astronauts returned safely after six months in orbit.",
    "Thousands of runners took part in the marathon today.",
    "The government will publish its budget plans next week.",
    "Wildlife experts counted more otters on the river this year.",
    "Here is a look at the main stories making the news tonight.",
    "The airport expects a busy weekend as the holidays begin.",
    "Thank you for watching, and have a very good night.",
)
"""Sentences read by the synthetic speakers (news-style English, a wide mix of mouth shapes)."""


@dataclass(frozen=True)
class SyntheticSpeaker:
    """A portrait variant and an eSpeak NG voice: ``mirror`` flips the portrait, ``hue_shift`` rotates its hue
    (OpenCV hue units, 0-179)."""

    name: str
    voice: str
    pitch: int
    rate: int
    mirror: bool = False
    hue_shift: int = 0


SPEAKERS = (
    SyntheticSpeaker("astronaut", "en", pitch=50, rate=170),
    SyntheticSpeaker("astronaut-mirror", "en+f3", pitch=65, rate=160, mirror=True, hue_shift=12),
)

RENDER_SIZE = 512
"""Output frames are square at the portrait's own size, so the face is not resampled before cropping."""
SENTENCE_GAP_SECONDS = 0.2


@dataclass
class RenderedClip:
    """A rendered talking clip: full RGB ``frames`` at 25 fps, 16 kHz ``audio`` (``len(frames) * 640``
    samples) and its ground truth."""

    frames: list[Image]
    audio: npt.NDArray[np.float32]
    speaker: str
    truth: dict[str, Any] = field(default_factory=dict)


def speaker_portrait(speaker: SyntheticSpeaker) -> Image:
    """The bundled astronaut as this speaker sees it (RGB)."""
    import cv2

    from anchorcast_plugins.engines.viseme.engine import bundled_avatar
    from anchorcast_plugins.engines.viseme.portrait import load_image

    image = load_image(bundled_avatar())
    if speaker.mirror:
        image = np.ascontiguousarray(image[:, ::-1])
    if speaker.hue_shift:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(np.int32) + speaker.hue_shift) % 180
        image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    return image


class SyntheticTalker:
    """Renders one speaker reading sentences: the viseme engine driven frame by frame with :class:`FrameJob`
    objects built as the scheduler builds them (context audio, speech presence, phonemes on the timeline)."""

    def __init__(self, speaker: SyntheticSpeaker, size: int = RENDER_SIZE) -> None:
        import soxr

        from anchorcast_plugins.engines.faces import FaceDetector
        from anchorcast_plugins.engines.viseme.engine import VisemeEngine
        from anchorcast_plugins.engines.viseme.portrait import Box, PortraitRenderer
        from anchorcast_plugins.engines.wav2lip.avatar import DEFAULT_PADS, pad_box
        from anchorcast_plugins.voices.espeak_voice import EspeakVoice

        self._resample = soxr.resample
        self.speaker = speaker
        self.voice = EspeakVoice(speaker.voice, rate=speaker.rate, pitch=speaker.pitch)
        portrait = speaker_portrait(speaker)
        detector = FaceDetector()
        face = detector.detect(portrait)
        if face is None:
            raise InputError(f"no face found in the synthetic portrait of speaker {speaker.name}")
        self.engine = VisemeEngine(PortraitRenderer(portrait, Box(*face), "blur"))
        self.engine.open(StreamFormat(size, size, Fraction(FPS), SAMPLE_RATE))
        idle = self.engine.idle(0)
        # The face never moves: one detection on the rendered frame gives the crop box of every frame.
        found = detector.detect(idle)
        if found is None:
            raise InputError(f"no face found in the rendered frame of synthetic speaker {speaker.name}")
        self.face = found
        self.box = pad_box(found, DEFAULT_PADS, idle.shape[1], idle.shape[0])

    def speak(self, sentences: list[str], seconds: float) -> RenderedClip:
        """The speaker reading ``sentences`` (separated by short pauses), cut or padded with silence to exactly
        ``round(seconds * 25)`` frames."""
        frame_count = max(1, round(seconds * FPS))
        total = frame_count * SAMPLES_PER_FRAME
        audio = np.zeros(total, np.float32)
        phonemes: list[Timing] = []
        spans: list[tuple[float, float]] = []
        read: list[str] = []
        cursor = 0
        for index, text in enumerate(sentences):
            if cursor >= total:
                break
            for speech in self.voice.synthesize(TextSegment(text, index=index, language="en")):
                samples = self._resample(speech.audio, speech.sample_rate, SAMPLE_RATE).astype(np.float32)
                take = min(len(samples), total - cursor)
                if take <= 0:
                    break
                audio[cursor : cursor + take] = samples[:take]
                origin = cursor / SAMPLE_RATE
                end = (cursor + take) / SAMPLE_RATE
                phonemes += [p.shifted(origin) for p in speech.phonemes if p.start + origin < end]
                spans.append((origin, end))
                cursor += len(samples) + round(SENTENCE_GAP_SECONDS * SAMPLE_RATE)
            read.append(text)
        frames, shapes = self._render(audio, frame_count, phonemes, spans)
        truth = {
            "kind": "synthetic",
            "text": " ".join(read),
            "voice": {"engine": "espeak", "voice": self.speaker.voice, "pitch": self.speaker.pitch,
                      "rate": self.speaker.rate},
            "portrait": {"mirror": self.speaker.mirror, "hue_shift": self.speaker.hue_shift},
            "speech_spans": [[round(a, 4), round(b, 4)] for a, b in spans],
            "phonemes": [[p.label, round(p.start, 4), round(p.end, 4)] for p in phonemes],
            "mouth_openness": [round(s.openness, 4) for s in shapes],
            "mouth_width": [round(s.width, 4) for s in shapes],
            "visemes": [s.viseme.value for s in shapes],
            "face_box": list(self.box),
        }
        return RenderedClip(frames, audio, self.speaker.name, truth)

    def _render(self, audio: npt.NDArray[np.float32], frame_count: int, phonemes: list[Timing],
                spans: list[tuple[float, float]]) -> tuple[list[Image], list[Any]]:
        behind = round(self.engine.lookbehind * SAMPLE_RATE)
        ahead = round(self.engine.lookahead * SAMPLE_RATE)
        padded = np.pad(audio, (behind, ahead))
        jobs = []
        for index in range(frame_count):
            start = index * SAMPLES_PER_FRAME
            context = padded[start : start + behind + SAMPLES_PER_FRAME + ahead]
            window = ((start - behind) / SAMPLE_RATE, (start + SAMPLES_PER_FRAME + ahead) / SAMPLE_RATE)
            centre = (start + SAMPLES_PER_FRAME / 2) / SAMPLE_RATE
            speaking = any(a <= centre < b for a, b in spans)
            jobs.append(FrameJob(
                index=index, pts=start / SAMPLE_RATE, context=context, offset=behind,
                frame_samples=SAMPLES_PER_FRAME, speech=1.0 if speaking else 0.0,
                phonemes=tuple(p for p in phonemes if p.end > window[0] and p.start < window[1]),
            ))
        shapes = [self.engine.shape(job) for job in jobs]
        return self.engine.render(jobs), shapes

    def crops(self, frames: list[Image]) -> npt.NDArray[np.uint8]:
        """The (N, 96, 96, 3) BGR crops of the fixed padded face box."""
        return crop_faces(frames, [self.box] * len(frames))

    def close(self) -> None:
        self.engine.close()


def crop_faces(frames: list[Image], boxes: list[tuple[int, int, int, int]]) -> npt.NDArray[np.uint8]:
    """Each RGB frame's ``(x1, y1, x2, y2)`` box resized to 96x96 (bilinear, aspect ignored), as BGR."""
    import cv2

    out = np.empty((len(frames), 96, 96, 3), np.uint8)
    for i, (frame, (x1, y1, x2, y2)) in enumerate(zip(frames, boxes, strict=True)):
        out[i] = cv2.cvtColor(cv2.resize(frame[y1:y2, x1:x2], (96, 96), interpolation=cv2.INTER_LINEAR),
                              cv2.COLOR_RGB2BGR)
    return out


def plan_sentences(rng: np.random.Generator, count: int = 3) -> list[str]:
    """``count`` distinct sentences from :data:`SENTENCES`, in random order."""
    picks = rng.choice(len(SENTENCES), size=min(count, len(SENTENCES)), replace=False)
    return [SENTENCES[int(i)] for i in picks]


def make_synthetic_dataset(out: Path | str, clips: int = 12, seconds: float = 3.0, seed: int = 0,
                           speakers: int = 2,
                           progress: Callable[[int, int], None] | None = None) -> Dataset:
    """Writes a synthetic data set of ``clips`` clips of ``seconds`` each to ``out`` and returns it loaded.

    Clips alternate between the first ``speakers`` (1 or 2) of :data:`SPEAKERS`; each reads sentences drawn
    with ``seed`` (the same seed gives the same sentences; eSpeak NG's noise sources are random, so the audio
    may differ by a few samples). ``progress(done, total)`` is called after each clip.
    """
    if clips < 1:
        raise InputError(f"--clips must be at least 1, got {clips}")
    if not 0.4 <= seconds <= 60:
        raise InputError(f"--seconds must be between 0.4 and 60, got {seconds}")
    if speakers not in (1, 2):
        raise InputError(f"--speakers must be 1 or 2, got {speakers}")
    rng = np.random.default_rng(seed)
    talkers = [SyntheticTalker(s) for s in SPEAKERS[:speakers]]
    extra = {"synthetic": {"seed": seed, "clips": clips, "seconds": seconds, "speakers": speakers}}
    with DatasetWriter(out, extra=extra) as writer:
        for k in range(clips):
            talker = talkers[k % len(talkers)]
            clip = talker.speak(plan_sentences(rng, 4), seconds)
            writer.add(f"{talker.speaker.name}-{k:04d}", talker.speaker.name, talker.crops(clip.frames),
                       clip.audio, source=f"synthetic:seed={seed}:clip={k}", truth=clip.truth)
            if progress is not None:
                progress(k + 1, clips)
        dataset = writer.finish()
    for talker in talkers:
        talker.close()
    return dataset


def run_synth(host: Any, args: argparse.Namespace) -> int:
    """Runs ``anchorcast train synth``: a progress bar, then a one-paragraph summary."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    del host
    console = Console(stderr=True)
    started = time.perf_counter()
    with Progress(TextColumn("[bold]synthesising"), BarColumn(), MofNCompleteColumn(), TextColumn("clips"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("synth", total=args.clips)
        dataset = make_synthetic_dataset(args.out, clips=args.clips, seconds=args.seconds, seed=args.seed,
                                         speakers=args.speakers,
                                         progress=lambda done, total: bar.update(task, completed=done))
    elapsed = time.perf_counter() - started
    console.print(f"[bold]data set[/] {dataset.folder}\n"
                  f"  clips     {len(dataset)} ({dataset.frames} frames, {dataset.frames / FPS:.1f} s), "
                  f"speakers {', '.join(dataset.speakers)}\n"
                  f"  took      {elapsed:.1f} s", highlight=False)
    return 0
