"""Speech denoising with RNNoise (through the ``pyrnnoise`` wheel, whose library carries its model): for a whole
recording (:func:`denoise_audio`, used by ``train prepare``) and block by block for a live microphone
(:class:`StreamingDenoiser`).

RNNoise works on 10 ms frames (480 samples) at 48 kHz, on float samples in the int16 range; it returns each frame
two frames (20 ms) late, with its voice-activity probability. Other rates are resampled to 48 kHz and back:

- rates that divide 48 kHz (8, 16, 24 kHz) with a linear-phase FIR low-pass of our own (2.25 ms each way), because
  soxr's streaming resampler releases its output in bursts: measured on 20 ms blocks at 16 kHz, its output lags
  the input by up to 37 ms each way (HQ), against none for the FIR, whose delay is only its group delay;
- other rates (44.1, 22.05 kHz) with soxr, whole recordings only.

Both functions return audio aligned with the input: sample k of the output is sample k of the input, denoised.
The streaming class does so :attr:`StreamingDenoiser.latency_seconds` late.

RNNoise is for steady noise (hiss, fans, hum): on eSpeak speech in white noise at 0 to 10 dB SNR it raises the SNR
by 4 to 9 dB and lowers the noise-only stretches by about 60 dB, the speech's level within 1 dB. Speech-like noise
(babble) it does not tell from the voice: it lowers both. ``python scripts/bench_denoise.py`` prints the figures.
"""

from __future__ import annotations

import ctypes
import importlib.util
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anchorcast.errors import InputError

RNNOISE_RATE = 48000
FRAME = 480
"""RNNoise's frame: 10 ms at 48 kHz."""
FRAME_SECONDS = FRAME / RNNOISE_RATE
RNNOISE_DELAY = 2 * FRAME
"""RNNoise returns each frame this many samples (at 48 kHz) late: measured, the cross-correlation peak of its
output against its input (speech with noise) is at exactly 960 samples; the tests hold it to that."""
INT16_SCALE = 32768.0
"""RNNoise expects float samples in the int16 range; the host's audio is float in [-1, 1]."""
FIR_HALF = 108
"""The resampling low-pass has 2 * FIR_HALF + 1 taps at 48 kHz, so its delay is FIR_HALF samples (2.25 ms), a
multiple of 6 so that every rate dividing 48 kHz keeps whole-sample alignment. Measured for 16 kHz: flat (-0.1 dB)
to 90 % of the Nyquist frequency (7.2 kHz), -6 dB at 95 %, -40 dB at 8 kHz and more than 75 dB down from 8.1 kHz."""

INSTALL_HINT = "pip install 'anchorcast[wav2lip]' or 'anchorcast[live]' (pyrnnoise, which ships RNNoise and its model)"

_lib: Any = None
_lib_lock = threading.Lock()


@dataclass(frozen=True)
class DenoisedAudio:
    """What :func:`denoise_audio` returns."""

    audio: np.ndarray
    """float32, the input's rate and length, aligned with it."""
    speech: np.ndarray
    """float32, RNNoise's voice-activity probability for each ``frame_seconds`` of the input (the last one
    partial), aligned with it."""
    frame_seconds: float = FRAME_SECONDS


def rnnoise_library() -> Any:
    """The RNNoise library from the pyrnnoise wheel, loaded directly: importing pyrnnoise itself pulls in
    audiolab and PyAV (0.3 s) for features not used here. InputError when it is not installed."""
    global _lib
    with _lib_lock:
        if _lib is None:
            try:
                spec = importlib.util.find_spec("pyrnnoise")
            except (ImportError, ValueError):
                spec = None
            folders = list(spec.submodule_search_locations or []) if spec else []
            found = [path for folder in folders for path in Path(folder).glob("*rnnoise*.*")
                     if path.suffix in (".so", ".dylib", ".dll")]
            if not found:
                raise InputError("speech denoising needs pyrnnoise, which is not installed", hint=INSTALL_HINT)
            lib = ctypes.CDLL(str(found[0]))
            lib.rnnoise_create.argtypes = [ctypes.c_void_p]
            lib.rnnoise_create.restype = ctypes.c_void_p
            lib.rnnoise_destroy.argtypes = [ctypes.c_void_p]
            lib.rnnoise_process_frame.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
            lib.rnnoise_process_frame.restype = ctypes.c_float
            lib.rnnoise_get_frame_size.restype = ctypes.c_int
            if lib.rnnoise_get_frame_size() != FRAME:
                raise InputError(f"the installed RNNoise works on frames of {lib.rnnoise_get_frame_size()} "
                                 f"samples, not {FRAME}", hint=INSTALL_HINT)
            _lib = lib
        return _lib


class _RNNoise:
    """One RNNoise state: 48 kHz float samples in [-1, 1], any length, in; denoised samples (RNNOISE_DELAY
    late) and one voice probability per completed frame out."""

    def __init__(self) -> None:
        self._lib = rnnoise_library()
        self._state = self._lib.rnnoise_create(None)
        self._pending = np.zeros(0, np.float32)
        self._frame_in = np.zeros(FRAME, np.float32)
        self._frame_out = np.zeros(FRAME, np.float32)

    def __del__(self) -> None:
        state, self._state = getattr(self, "_state", None), None
        if state:
            self._lib.rnnoise_destroy(state)

    @property
    def buffered(self) -> int:
        """Samples waiting for a whole frame."""
        return len(self._pending)

    def process(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        data = np.concatenate([self._pending, samples]) if len(self._pending) else samples
        frames = len(data) // FRAME
        out = np.empty(frames * FRAME, np.float32)
        speech = np.empty(frames, np.float32)
        frame_in, frame_out = self._frame_in, self._frame_out
        in_ptr, out_ptr = frame_in.ctypes.data, frame_out.ctypes.data
        for i in range(frames):
            np.multiply(data[i * FRAME:(i + 1) * FRAME], INT16_SCALE, out=frame_in)
            speech[i] = self._lib.rnnoise_process_frame(self._state, out_ptr, in_ptr)
            np.multiply(frame_out, 1 / INT16_SCALE, out=out[i * FRAME:(i + 1) * FRAME])
        self._pending = np.array(data[frames * FRAME:], np.float32)
        return out, speech


def _lowpass(factor: int) -> np.ndarray:
    """A Kaiser-windowed sinc at 48 kHz passing what a rate of 48 kHz / ``factor`` holds (see FIR_HALF), with a
    gain of 1."""
    n = np.arange(-FIR_HALF, FIR_HALF + 1)
    cutoff = 0.95 / factor / 2  # cycles per sample at 48 kHz: the middle of the transition band
    taps = 2 * cutoff * np.sinc(2 * cutoff * n) * np.kaiser(len(n), 7.0)
    return (taps / taps.sum()).astype(np.float32)


class _Fir:
    """A streaming FIR filter: the output is as long as the input, delayed by the filter's FIR_HALF samples."""

    def __init__(self, taps: np.ndarray) -> None:
        self.taps = taps
        self._history = np.zeros(len(taps) - 1, np.float32)

    def __call__(self, samples: np.ndarray) -> np.ndarray:
        if not len(samples):
            return samples
        data = np.concatenate([self._history, samples])
        self._history = data[len(data) - len(self._history):]
        return np.convolve(data, self.taps, mode="valid").astype(np.float32)


class StreamingDenoiser:
    """RNNoise on a live stream: :meth:`process` takes a block at ``rate`` and returns a block of the same length,
    the input from :attr:`latency_samples` earlier, denoised. ``rate`` must divide 48 kHz (8, 16, 24 or 48 kHz).

    ``block``: the length of every block, when it is fixed (a microphone's 20 ms): blocks of whole 10 ms frames
    then wait for nothing, and the latency is RNNoise's 20 ms plus the resampling filters' 4.5 ms. Without it up
    to 10 ms more is held to make whole frames; a block of another length than ``block`` may make it wait longer
    from then on (:attr:`latency_samples` grows). ``speech`` is the voice probability of the latest frame.
    """

    def __init__(self, rate: int, block: int | None = None) -> None:
        if rate <= 0 or RNNOISE_RATE % rate:
            raise InputError(f"streaming denoising needs a sample rate that divides 48000 Hz, not {rate} Hz",
                             hint="set the source's sample_rate to 16000, 24000 or 48000")
        self.rate = rate
        self.factor = RNNOISE_RATE // rate
        self._rnnoise = _RNNoise()
        filters = self.factor > 1
        self._up = _Fir(_lowpass(self.factor) * self.factor) if filters else None
        self._down = _Fir(_lowpass(self.factor)) if filters else None
        delay_48k = RNNOISE_DELAY + (2 * FIR_HALF if filters else 0)
        wanted = block * self.factor if block else 1
        waiting = FRAME - math.gcd(wanted, FRAME)  # the most input a frame may still be waiting for
        self._pipeline_delay = delay_48k // self.factor
        self.latency_samples = self._pipeline_delay + math.ceil(waiting / self.factor)
        self._out = np.zeros(self.latency_samples - self._pipeline_delay, np.float32)
        self.speech = 0.0

    @property
    def latency_seconds(self) -> float:
        """The delay this denoiser adds: RNNoise's 20 ms, the resampling filters' and the wait for whole frames."""
        return self.latency_samples / self.rate

    def process(self, block: np.ndarray) -> np.ndarray:
        """Denoises ``block`` (float32 in [-1, 1]); returns as many samples, :attr:`latency_samples` late."""
        return self.process_with_speech(block)[0]

    def process_with_speech(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`process`, with the voice probability of every RNNoise frame completed meanwhile (frame i's
        describes the 10 ms of input that end RNNOISE_DELAY samples at 48 kHz before it)."""
        block = np.asarray(block, np.float32)
        denoised, speech = self._rnnoise.process(self._upsample(block))
        if len(speech):
            self.speech = float(speech[-1])
        out = np.concatenate([self._out, self._downsample(denoised)])
        if len(out) < len(block):  # a block of another length than promised: wait longer from now on
            self.latency_samples += len(block) - len(out)
            out = np.concatenate([out, np.zeros(len(block) - len(out), np.float32)])
        self._out = out[len(block):]
        return out[: len(block)], speech

    def _upsample(self, block: np.ndarray) -> np.ndarray:
        if self._up is None:
            return block
        stuffed = np.zeros(len(block) * self.factor, np.float32)
        stuffed[:: self.factor] = block
        return self._up(stuffed)

    def _downsample(self, wide: np.ndarray) -> np.ndarray:
        if self._down is None:
            return wide
        return self._down(wide)[:: self.factor]  # frames are whole multiples of the factor: the phase holds


def denoise_audio(audio: np.ndarray, rate: int) -> DenoisedAudio:
    """``audio`` (float32 mono, [-1, 1]) denoised by RNNoise: the same rate and length, aligned sample for
    sample, with the voice probability of every 10 ms frame. InputError when pyrnnoise is not installed."""
    audio = np.asarray(audio, np.float32)
    if audio.ndim != 1:
        raise InputError(f"denoising needs mono audio, got an array of shape {audio.shape}")
    if rate <= 0:
        raise InputError(f"denoising needs a positive sample rate, got {rate}")
    frames = math.ceil(len(audio) * RNNOISE_RATE / rate / FRAME)
    tail = RNNOISE_DELAY + 2 * FRAME  # flushes the frames still inside RNNoise (and the filters)
    if RNNOISE_RATE % rate == 0:
        denoiser = StreamingDenoiser(rate)
        late = denoiser.latency_samples
        padded = np.concatenate([audio, np.zeros(late + tail // denoiser.factor, np.float32)])
        out, speech = denoiser.process_with_speech(padded)
        return DenoisedAudio(out[late: late + len(audio)], _aligned(speech, frames))
    import soxr

    wide = soxr.resample(audio, rate, RNNOISE_RATE, quality="HQ").astype(np.float32)
    denoised, speech = _RNNoise().process(np.concatenate([wide, np.zeros(tail, np.float32)]))
    denoised = denoised[RNNOISE_DELAY: RNNOISE_DELAY + len(wide)]
    out = soxr.resample(denoised, RNNOISE_RATE, rate, quality="HQ").astype(np.float32)
    out = np.pad(out, (0, max(0, len(audio) - len(out))))[: len(audio)]
    return DenoisedAudio(out, _aligned(speech, frames))


def _aligned(speech: np.ndarray, frames: int) -> np.ndarray:
    """RNNoise's voice probabilities, one per 10 ms of the input: each frame's arrives RNNOISE_DELAY late."""
    late = RNNOISE_DELAY // FRAME
    return np.asarray(speech[late: late + frames], np.float32)
