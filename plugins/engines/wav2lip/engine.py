"""The ``wav2lip`` lip engine: mel windows per frame, the generator on cached face features, a feathered paste.

Per run: weights are resolved (a store name or a path) and verified; the avatar folder is opened (prepared on
first use); the face encoder runs once per avatar frame and its features are cached on disk, keyed by the
weights; a backend is chosen (see :mod:`anchorcast_plugins.engines.wav2lip.backends`). Per batch: the scheduler's audio
contexts become the reference's (80, 16) mel windows, the backend predicts the 96x96 lower faces, and each is pasted
back over the face box with the avatar's feathered mask, scaled by the frame's speech presence (so speech blends in
and out and silent frames are the avatar untouched).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import numpy.typing as npt

from anchorcast import setup_progress
from anchorcast.components import FrameJob
from anchorcast.errors import InputError
from anchorcast.media import Image, StreamFormat
from anchorcast_plugins.engines.wav2lip.audio import LOOKBEHIND_SAMPLES, SAMPLE_RATE, FrameMel, lookahead_samples
from anchorcast_plugins.engines.wav2lip.avatar import Avatar, open_avatar

if TYPE_CHECKING:
    from anchorcast_plugins.engines.wav2lip.backends import LazyModel
    from anchorcast_plugins.engines.wav2lip.devices import DeviceChoice

log = logging.getLogger(__name__)

_RESAMPLE_MARGIN_S = 0.02  # extra context around a window resampled to 16 kHz, so filter edges stay outside it


class Layout:
    """Where the avatar's frames sit in the output: scaled to fit, centred over a blurred copy of the first frame."""

    def __init__(self, avatar_size: tuple[int, int], fmt: StreamFormat, backdrop_source: Image) -> None:
        from anchorcast_plugins.engines.viseme.portrait import blurred_backdrop

        width, height = avatar_size
        self.scale = min(fmt.width / width, fmt.height / height)
        self.size = (max(1, round(width * self.scale)), max(1, round(height * self.scale)))
        self.x = (fmt.width - self.size[0]) // 2
        self.y = (fmt.height - self.size[1]) // 2
        self.backdrop = blurred_backdrop(np.ascontiguousarray(backdrop_source), fmt.width, fmt.height)

    def place(self, frame: Image) -> Image:
        out = self.backdrop.copy()
        w, h = self.size
        scaled = frame if (frame.shape[1], frame.shape[0]) == (w, h) else cv2.resize(
            frame, (w, h), interpolation=cv2.INTER_AREA if self.scale < 1 else cv2.INTER_LINEAR
        )
        out[self.y : self.y + h, self.x : self.x + w] = scaled[..., :3]
        return out

    def box(self, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
        """An avatar-space box ``(x1, y1, x2, y2)`` in output pixels."""
        x1, y1, x2, y2 = box
        return (
            self.x + round(x1 * self.scale), self.y + round(y1 * self.scale),
            self.x + round(x2 * self.scale), self.y + round(y2 * self.scale),
        )  # fmt: skip


class Wav2LipEngine:
    """The LipEngine protocol over a Wav2Lip generator (see the module docstring)."""

    concurrent_renders = 2
    """Two renders may run at once (the studio server's shared engine uses two threads): the backend serialises
    its inference, so one batch's mel windows and paste overlap with the other's inference."""

    def __init__(self, settings: dict[str, Any]) -> None:
        self.settings = settings
        self.live_batch = int(settings.get("max_batch", 4))
        self.throughput_batch = max(self.live_batch, int(settings.get("throughput_batch", 16)))
        self.max_batch = self.live_batch
        self.live = True
        self.lookbehind = (LOOKBEHIND_SAMPLES + 1) / SAMPLE_RATE
        self.lookahead = 0.2 + 0.03  # refined in open() for the stream's fps
        self.avatar: Avatar | None = None
        self.layout: Layout | None = None
        self.backend: Any = None
        self.weights_id = ""
        self._fmt: StreamFormat | None = None
        self._mel: FrameMel | None = None
        self._idle_cache: dict[int, Image] = {}
        self.timings: dict[str, float] = {}

    # --- set-up --------------------------------------------------------------------------------------------

    def open(self, fmt: StreamFormat) -> None:
        from anchorcast_plugins.engines.wav2lip.backend_choice import backend_for_avatar

        started = time.perf_counter()
        self._fmt = fmt
        margin = 0.0 if fmt.sample_rate == SAMPLE_RATE else _RESAMPLE_MARGIN_S
        self.lookbehind = LOOKBEHIND_SAMPLES / SAMPLE_RATE + margin
        self.lookahead = lookahead_samples(fmt.fps) / SAMPLE_RATE + margin
        self._mel = FrameMel(fmt.fps)

        model, device = self._weights_and_device()
        self.timings["weights_s"] = time.perf_counter() - started

        avatar_path: Path | None = self.settings.get("avatar")
        if avatar_path is None:
            from anchorcast_plugins.engines.viseme.engine import bundled_avatar

            avatar_path = bundled_avatar()
        face_box = self.settings.get("face_box")
        with setup_progress.LazyStep("preparing the avatar", unit="frames") as preparing:
            self.avatar = open_avatar(Path(avatar_path), fps=Fraction(fmt.fps), face_box=_face_box(face_box),
                                      progress=preparing)
        self.layout = Layout((self.avatar.width, self.avatar.height), fmt, self.avatar.frame(0))
        self.timings["avatar_s"] = time.perf_counter() - started - self.timings["weights_s"]

        self.backend = backend_for_avatar(
            model,
            device,
            self.avatar,
            self.weights_id,
            request=self.settings.get("backend", "auto"),
            calibration_mels=calibration_mels,  # made only when something is measured or built
            remeasure=bool(self.settings.get("remeasure", False)),
            streams=self._inference_streams(),
            log=log.info,
        )
        self.timings["backend_s"] = time.perf_counter() - started - sum(self.timings.values())
        log.info(
            "wav2lip: weights %s, avatar %s (%d frames), backend %s on %s; ready in %.1f s",
            self.weights_id, self.avatar.folder, self.avatar.frame_count, self.backend.name, device.description,
            time.perf_counter() - started,
        )

    def _weights_and_device(self) -> tuple[LazyModel, DeviceChoice]:
        """The generator (built when first needed) and the device. Stored weights on the CPU are identified from
        the stored file's header and the CPU is chosen without probing for accelerators, so a warm start whose
        features and OpenVINO model are cached neither loads the checkpoint nor imports torch (about 2 s); weights
        given as a path, and accelerators, are loaded and probed at once as before."""
        from anchorcast_plugins.engines.wav2lip.backends import LazyModel
        from anchorcast_plugins.engines.wav2lip.devices import cpu_without_probing, select_device
        from anchorcast_plugins.engines.wav2lip.weights_store import (
            resolve_weights,
            stored_generator_id,
            weights_id,
        )

        request = self.settings.get("device", "auto")
        device = cpu_without_probing(request) or select_device(request)
        stored_id = stored_generator_id(self.settings["weights"])
        loaded = None if stored_id else resolve_weights(self.settings["weights"], expected_kind="generator")
        self.weights_id = stored_id or weights_id(loaded)  # type: ignore[arg-type]

        def build() -> Any:
            from anchorcast_plugins.engines.wav2lip.checkpoints import build_model

            checkpoint = loaded or resolve_weights(self.settings["weights"], expected_kind="generator")
            model = build_model("generator", checkpoint.state_dict).to(device.device)
            return model.half() if device.half else model

        model = LazyModel(build)
        if loaded is not None:
            model.get()  # loaded already: a checkpoint that does not build fails here, as it always did
        return model, device

    def set_pacing(self, live: bool) -> None:
        """Called before :meth:`open`. Live: batches of ``max_batch`` in the backend's latency mode. Fast (nobody
        waits for a frame): batches of ``throughput_batch``; an OpenVINO backend runs in throughput mode with one
        inference stream per core, each sub-batch of ``max_batch`` pasted while later ones infer."""
        self.live = live
        self.max_batch = self.live_batch if live else self.throughput_batch

    def _inference_streams(self) -> int:
        asked = int(self.settings.get("inference_streams", 1))
        if self.live or self.throughput_batch <= self.live_batch:  # no larger batches: nothing to run side by side
            return asked
        return max(asked, throughput_streams())

    # --- per batch -----------------------------------------------------------------------------------------

    def render(self, jobs: Sequence[FrameJob]) -> list[Image]:
        assert self._fmt is not None and self._mel is not None and self.avatar is not None
        contexts = [self._context16k(job) for job in jobs]
        mels = self._mel.windows(contexts, [job.index for job in jobs], LOOKBEHIND_SAMPLES)[:, None]
        mels = mels.astype(np.float32, copy=False)
        frames = [self.avatar.index(job.index) for job in jobs]
        if self.live or self.backend.streams <= 1 or len(jobs) <= self.live_batch:
            # one stream (torch, or OpenVINO in latency mode) already uses every core: overlapping the paste with it
            # only made them compete (0.88x at batches of 8-16 with torch on 2 cores)
            predictions = self.backend.predict(mels, frames)
            return [self._paste(job, prediction) for job, prediction in zip(jobs, predictions, strict=True)]
        # sub-batches in flight on the backend's streams, each pasted while later ones infer
        parts = [slice(start, start + self.live_batch) for start in range(0, len(jobs), self.live_batch)]
        pending = [self.backend.submit(mels[part], frames[part]) for part in parts]
        images: list[Image] = []
        for part, future in zip(parts, pending, strict=True):
            images += [self._paste(job, prediction) for job, prediction in zip(jobs[part], future.result(), strict=True)]
        return images

    def _context16k(self, job: FrameJob) -> npt.NDArray[np.float32]:
        """The job's audio at 16 kHz, starting LOOKBEHIND_SAMPLES before the frame's first sample."""
        assert self._fmt is not None
        if self._fmt.sample_rate == SAMPLE_RATE:
            return job.context
        import soxr

        rate = self._fmt.sample_rate
        resampled = soxr.resample(job.context, rate, SAMPLE_RATE).astype(np.float32)
        first = round(job.offset * SAMPLE_RATE / rate)  # the frame's first sample at 16 kHz
        return resampled[first - LOOKBEHIND_SAMPLES :]

    def _paste(self, job: FrameJob, prediction: npt.NDArray[np.float32]) -> Image:
        """The prediction (3, 96, 96) BGR in [0, 1], resized over the face box and feather-blended."""
        assert self.avatar is not None and self.layout is not None
        out = self.idle(job.index).copy()
        x1, y1, x2, y2 = self.layout.box(self.avatar.box(job.index))
        x1, y1 = max(x1, 0), max(y1, 0)
        x2, y2 = min(x2, out.shape[1]), min(y2, out.shape[0])
        w, h = x2 - x1, y2 - y1
        if w <= 1 or h <= 1:
            return out
        face = np.ascontiguousarray(prediction.transpose(1, 2, 0)[:, :, ::-1])  # BGR -> RGB, HWC
        face = cv2.resize(face, (w, h), interpolation=cv2.INTER_LINEAR)
        alpha = self.avatar.mask_for(w, h)[..., None] * np.float32(min(max(job.speech, 0.0), 1.0))
        region = out[y1:y2, x1:x2].astype(np.float32)
        out[y1:y2, x1:x2] = np.clip(region + alpha * (face * 255.0 - region), 0, 255).astype(np.uint8)
        return out

    def idle(self, index: int) -> Image:
        """The avatar frame placed in the output (read-only; cached for stills and the current clip frame)."""
        assert self.avatar is not None and self.layout is not None
        frame_index = self.avatar.index(index)
        cached = self._idle_cache.get(frame_index)
        if cached is None:
            if len(self._idle_cache) > 64:
                self._idle_cache.clear()
            cached = self.layout.place(self.avatar.frame(index))
            cached.flags.writeable = False
            self._idle_cache[frame_index] = cached
        return cached

    def close(self) -> None:
        if self.backend is not None and hasattr(self.backend, "close"):
            self.backend.close()
        self.backend = None
        self._idle_cache.clear()


def calibration_mels() -> npt.NDArray[np.float32]:
    """Mel windows (M, 1, 80, 16) of real speech for calibrating a quantised backend: a sentence from the
    in-process eSpeak NG voice (nothing to download)."""
    import soxr

    from anchorcast.media import TextSegment
    from anchorcast_plugins.engines.wav2lip.audio import mel_windows, melspectrogram
    from anchorcast_plugins.voices.espeak_voice import EspeakVoice

    voice = EspeakVoice("en")
    text = "Good evening. Here is the news: markets rose, and the weather stays mild over the weekend."
    audio = np.concatenate([speech.audio for speech in voice.synthesize(TextSegment(text))])
    audio16 = soxr.resample(audio, voice.sample_rate, SAMPLE_RATE).astype(np.float32)
    mel = melspectrogram(audio16)
    frames = int(len(audio16) / SAMPLE_RATE * 25)
    return mel_windows(mel, frames, 25)[:, None]


def throughput_streams() -> int:
    """OpenVINO inference streams when rendering as fast as possible: one per core, at most 4."""
    from anchorcast_plugins.engines.wav2lip.backends import cpu_cores

    return min(cpu_cores(), 4)


def _face_box(value: Any) -> tuple[int, int, int, int] | None:
    if value is None:
        return None
    if not (isinstance(value, list) and len(value) == 4 and all(isinstance(v, int) for v in value)):
        raise InputError(f"engine.face_box must be four integers [x, y, w, h], got {value!r}")
    x, y, w, h = value
    if w <= 0 or h <= 0:
        raise InputError(f"engine.face_box needs a positive width and height, got {value!r}")
    return (x, y, w, h)
