"""The Wav2Lip reference mel spectrogram, in numpy, for whole files, single frames and live streams.

The reference (``audio.py`` of Wav2Lip, with its ``hparams``) computes, from 16 kHz mono audio:

1. pre-emphasis ``y[n] = x[n] - 0.97 x[n-1]`` (``y[0] = x[0]``);
2. the STFT magnitude with n_fft 800, a periodic Hann window of 800, hop 200, centred with *reflect* padding of
   400 samples on each side (librosa 0.7's default; recent librosa pads with zeros unless told otherwise);
3. 80 mel bands from 55 to 7600 Hz on the Slaney scale with Slaney area normalisation (librosa's defaults);
4. ``dB = 20 log10(max(1e-5, mel)) - 20`` and ``clip(8 (dB + 100) / 100 - 4, -4, 4)``.

The result has ``1 + N // 200`` columns; column ``c`` is the spectrum of ``y[200c - 400 : 200c + 400]`` (centred
on sample ``200c``). Frame ``i`` at ``fps`` uses columns ``[s, s + 16)`` with ``s = floor(i * 80 / fps)``.

Three ways to get the same numbers:

- :func:`melspectrogram` for a whole file, and :func:`mel_windows` for the per-frame windows (the reference's
  past-the-end rule included);
- :class:`FrameMel` for one window per frame computed from the audio context the scheduler hands a lip engine
  (see :data:`LOOKBEHIND_SAMPLES` and :func:`lookahead_samples`), vectorised over a batch of frames;
- :class:`StreamingMel` for live audio pushed in chunks of any size, emitting each column as soon as its samples
  are in.

Away from the very start and end of a file (where the reference reflects the signal and a live timeline has
zeros) all three agree with the reference to float rounding. Everything is computed in float64 and returned as
float32. Nothing here imports librosa (slow to import); the Slaney filterbank is built in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

import numpy as np
import numpy.typing as npt
from numpy.lib.stride_tricks import sliding_window_view

Float32Array = npt.NDArray[np.float32]
Float64Array = npt.NDArray[np.float64]

SAMPLE_RATE = 16000
N_FFT = 800
HOP = 200
WIN = 800
N_MELS = 80
FMIN, FMAX = 55.0, 7600.0
PREEMPHASIS = 0.97
MIN_LEVEL = 1e-5  # the reference's exp(-100 / 20 * ln 10): -100 dB
REF_LEVEL_DB = 20.0
MIN_LEVEL_DB = -100.0
MAX_ABS_VALUE = 4.0
MEL_STEP = 16
"""Mel columns per frame window (200 ms)."""
COLUMNS_PER_SECOND = SAMPLE_RATE // HOP  # 80

_PAD = N_FFT // 2  # centring: 400 samples each side
WINDOW_SPAN_SAMPLES = HOP * (MEL_STEP - 1) + N_FFT // 2  # 3400
"""Samples a frame's window needs from the frame's first sample ``a`` on: columns s..s+15 end at sample
``200 s + 3399 <= a + 3399``."""
LOOKBEHIND_SAMPLES = (HOP - 1) + _PAD + 1  # 600
"""Samples a frame's window needs before the frame's first sample, at 16 kHz.

Frame ``i`` starts at sample ``a = floor(i * 16000 / fps)`` (the host's media clock) and its window at column
``s = floor(i * 80 / fps)``, centred at sample ``200 s``, which lies ``d = a - 200 s`` samples before the frame
(``0 <= d <= 199``, not a whole number of hops when 16000 / fps is not a multiple of 200, e.g. at 30 fps). Column
``s`` starts 400 samples before its centre, and pre-emphasis needs one sample more: ``d + 401 <= 600``.
"""


def lookahead_samples(fps: Fraction | float) -> int:
    """Samples a frame's window needs after the frame's last sample, at 16 kHz (the host's ``lookahead``).

    The window ends at sample ``200 s + 3399 <= a + 3399``; a frame has at least ``floor(16000 / fps)`` samples,
    so ``3400 - floor(16000 / fps)`` after its end suffice for every frame (2760 at 25 fps, 2867 at 30 fps).
    """
    rate = _as_fraction(fps)
    shortest_frame = (SAMPLE_RATE * rate.denominator) // rate.numerator
    return max(0, WINDOW_SPAN_SAMPLES - shortest_frame)


# --- the filterbank ------------------------------------------------------------------------------------------


def _hz_to_mel(hz: Float64Array) -> Float64Array:
    """Slaney's mel scale (librosa with htk=False): linear below 1 kHz, logarithmic above."""
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    hz = np.asarray(hz, np.float64)
    mels = hz / f_sp
    high = hz >= min_log_hz
    mels[high] = min_log_mel + np.log(hz[high] / min_log_hz) / logstep
    return mels


def _mel_to_hz(mels: Float64Array) -> Float64Array:
    f_sp = 200.0 / 3
    min_log_hz = 1000.0
    min_log_mel = min_log_hz / f_sp
    logstep = np.log(6.4) / 27.0
    mels = np.asarray(mels, np.float64)
    hz = f_sp * mels
    high = mels >= min_log_mel
    hz[high] = min_log_hz * np.exp(logstep * (mels[high] - min_log_mel))
    return hz


@lru_cache(maxsize=1)
def mel_basis() -> Float64Array:
    """The (80, 401) Slaney mel filterbank with Slaney normalisation (librosa.filters.mel with the reference's
    sr 16000, n_fft 800, 80 mels, fmin 55, fmax 7600)."""
    fft_freqs = np.fft.rfftfreq(N_FFT, d=1.0 / SAMPLE_RATE)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(np.array([FMIN]))[0], _hz_to_mel(np.array([FMAX]))[0], N_MELS + 2))
    widths = np.diff(edges)
    ramps = edges[:, None] - fft_freqs[None, :]
    lower = -ramps[:-2] / widths[:-1, None]
    upper = ramps[2:] / widths[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (edges[2:] - edges[:-2]))[:, None]
    weights.flags.writeable = False
    return weights


@lru_cache(maxsize=1)
def _hann() -> Float64Array:
    """The periodic Hann window of 800 (scipy's get_window('hann', 800, fftbins=True))."""
    window = 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(WIN) / WIN)
    window.flags.writeable = False
    return window


# --- the core: spectra of framed, pre-emphasised audio -------------------------------------------------------


def _normalised(mel: Float64Array) -> Float64Array:
    db = 20.0 * np.log10(np.maximum(MIN_LEVEL, mel)) - REF_LEVEL_DB
    return np.clip(2 * MAX_ABS_VALUE * (db - MIN_LEVEL_DB) / -MIN_LEVEL_DB - MAX_ABS_VALUE,
                   -MAX_ABS_VALUE, MAX_ABS_VALUE)


def mel_columns_from_frames(frames: Float64Array) -> Float32Array:
    """Normalised mel columns for STFT frames of shape (..., T, 800): returns (..., 80, T) float32."""
    spectrum = np.abs(np.fft.rfft(frames * _hann(), axis=-1))
    mel = spectrum @ mel_basis().T
    return np.swapaxes(_normalised(mel), -1, -2).astype(np.float32)


def _columns(padded: Float64Array, count: int) -> Float32Array:
    """``count`` mel columns of a pre-emphasised signal where column k covers ``padded[200k : 200k + 800]``."""
    if count <= 0:
        return np.zeros((N_MELS, 0), np.float32)
    frames = sliding_window_view(padded[: HOP * (count - 1) + N_FFT], N_FFT)[::HOP]
    return mel_columns_from_frames(frames)


def preemphasis(wav: npt.ArrayLike, previous: float = 0.0) -> Float64Array:
    """``y[n] = x[n] - 0.97 x[n-1]`` in float64, with ``x[-1] = previous`` (0 as scipy's lfilter)."""
    x = np.asarray(wav, np.float64).reshape(-1)
    y = np.empty_like(x)
    if x.size:
        y[0] = x[0] - PREEMPHASIS * previous
        np.subtract(x[1:], PREEMPHASIS * x[:-1], out=y[1:])
    return y


def _reflect_padded(y: Float64Array) -> Float64Array:
    if y.size >= 2:
        return np.pad(y, _PAD, mode="reflect")
    return np.pad(y, _PAD)  # reflection needs two samples; librosa refuses such inputs outright


def melspectrogram(wav16k: npt.ArrayLike) -> Float32Array:
    """The reference mel spectrogram of 16 kHz mono audio: (80, 1 + N // 200) float32 in [-4, 4]."""
    y = preemphasis(wav16k)
    return _columns(_reflect_padded(y), 1 + y.size // HOP)


# --- per-frame windows -----------------------------------------------------------------------------------------


def _as_fraction(fps: Fraction | float) -> Fraction:
    if isinstance(fps, Fraction):
        rate = fps
    elif isinstance(fps, int) or float(fps).is_integer():
        rate = Fraction(int(fps))
    else:
        rate = Fraction(float(fps)).limit_denominator(1_000_000)
    if rate <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return rate


def mel_window_start(frame_index: int, fps: Fraction | float) -> int:
    """The first mel column of frame ``frame_index``: ``int(frame_index * 80 / fps)``, computed exactly."""
    rate = _as_fraction(fps)
    return (frame_index * COLUMNS_PER_SECOND * rate.denominator) // rate.numerator


def frame_start_sample(frame_index: int, fps: Fraction | float) -> int:
    """The first 16 kHz sample of frame ``frame_index`` on the host's media clock: ``floor(i * 16000 / fps)``."""
    rate = _as_fraction(fps)
    return (frame_index * SAMPLE_RATE * rate.denominator) // rate.numerator


def mel_windows(mel: npt.ArrayLike, frame_count: int, fps: Fraction | float) -> Float32Array:
    """The (F, 80, 16) windows of frames ``0 .. frame_count-1`` as the reference cuts them.

    A window past the end of ``mel`` is the last full window (``mel[:, T-16:]``). A spectrogram shorter than 16
    columns (under 0.2 s of audio) is first padded on the right with silence (-4), where the reference would cut
    a short window.
    """
    columns = np.asarray(mel, np.float32)
    if columns.ndim != 2 or columns.shape[0] != N_MELS:
        raise ValueError(f"expected a (80, T) mel spectrogram, got shape {columns.shape}")
    if columns.shape[1] < MEL_STEP:
        columns = np.pad(columns, ((0, 0), (0, MEL_STEP - columns.shape[1])), constant_values=-MAX_ABS_VALUE)
    last_start = columns.shape[1] - MEL_STEP
    starts = np.array([min(mel_window_start(i, fps), last_start) for i in range(frame_count)], np.int64)
    index = starts[:, None] + np.arange(MEL_STEP)[None, :]
    return np.ascontiguousarray(np.moveaxis(columns[:, index], 1, 0))


class FrameMel:
    """Mel windows for single frames, from the audio context the host hands a lip engine with each frame.

    The context of frame ``i`` is 16 kHz timeline audio whose sample ``offset`` is the frame's first sample
    (``FrameJob.context`` / ``FrameJob.offset``); it must reach at least :data:`LOOKBEHIND_SAMPLES` before and
    ``WINDOW_SPAN_SAMPLES`` (3400) from that sample, which an engine with
    ``lookbehind = LOOKBEHIND_SAMPLES / 16000`` and ``lookahead = lookahead_samples(fps) / 16000`` receives.
    The window's 16 columns need the 3801 samples ``x[200 s - 401 : 200 s + 3400]``; in context coordinates they
    start at ``offset - d - 401`` with ``d = floor(i * 16000 / fps) - 200 floor(i * 80 / fps)`` (see
    :meth:`segment_start`).

    The result equals :func:`melspectrogram`'s columns for that frame wherever the frame's window lies inside the
    file away from its first and last 400 samples (the reference reflects there; a timeline has zeros).
    """

    SEGMENT_SAMPLES = WINDOW_SPAN_SAMPLES + _PAD + 1  # 3801

    def __init__(self, fps: Fraction | float, sample_rate: int = SAMPLE_RATE) -> None:
        if sample_rate != SAMPLE_RATE:
            raise ValueError(f"the Wav2Lip mel needs 16000 Hz audio, got {sample_rate} Hz: resample first")
        self.fps = _as_fraction(fps)

    def window_start(self, frame_index: int) -> int:
        """The frame's first mel column."""
        return mel_window_start(frame_index, self.fps)

    def segment_start(self, frame_index: int, offset: int = LOOKBEHIND_SAMPLES) -> int:
        """Where, in a context whose sample ``offset`` is the frame's first sample, the 3801 samples begin."""
        lag = frame_start_sample(frame_index, self.fps) - HOP * self.window_start(frame_index)
        return offset - lag - _PAD - 1

    def windows(self, contexts: Sequence[npt.ArrayLike] | npt.NDArray[np.floating], frame_indices: Sequence[int],
                offsets: int | Sequence[int] = LOOKBEHIND_SAMPLES) -> Float32Array:
        """The (B, 80, 16) windows of a batch of frames from their contexts (1-D arrays, lengths may differ)."""
        count = len(frame_indices)
        if len(contexts) != count:
            raise ValueError(f"{len(contexts)} contexts for {count} frames")
        offset_list = [offsets] * count if isinstance(offsets, int) else list(offsets)
        segments = np.empty((count, self.SEGMENT_SAMPLES), np.float64)
        for row, (context, index, offset) in enumerate(zip(contexts, frame_indices, offset_list, strict=True)):
            audio = np.asarray(context).reshape(-1)
            begin = self.segment_start(index, offset)
            if begin < 0 or begin + self.SEGMENT_SAMPLES > audio.size:
                raise ValueError(
                    f"frame {index}: the context ({audio.size} samples, frame at {offset}) must cover samples "
                    f"{begin}..{begin + self.SEGMENT_SAMPLES - 1}; give the engine lookbehind "
                    f"{LOOKBEHIND_SAMPLES} and lookahead {lookahead_samples(self.fps)} samples at 16 kHz"
                )
            segments[row] = audio[begin : begin + self.SEGMENT_SAMPLES]
        emphasised = segments[:, 1:] - PREEMPHASIS * segments[:, :-1]  # (B, 3800)
        frames = sliding_window_view(emphasised, N_FFT, axis=1)[:, ::HOP]  # (B, 16, 800)
        return mel_columns_from_frames(frames)

    def window(self, context: npt.ArrayLike, frame_index: int, offset: int = LOOKBEHIND_SAMPLES) -> Float32Array:
        """The (80, 16) window of one frame."""
        return self.windows([context], [frame_index], offset)[0]


# --- streaming ---------------------------------------------------------------------------------------------------


class StreamingMel:
    """The reference mel of a stream, column by column, from chunks of any size.

    Sample 0 is the first sample pushed; column ``c`` (centred at sample ``200c``) is emitted as soon as samples up
    to ``200c + 399`` are in (column 0 also needs sample 400, which the reference reflects into its left padding).
    The columns pushed out, followed by those :meth:`finish` returns, equal :func:`melspectrogram` of everything
    pushed. The last ``keep`` columns stay available through :meth:`columns` and :meth:`window`.
    """

    def __init__(self, keep: int = 800) -> None:
        self.keep = keep
        self._previous = 0.0  # last raw sample, for pre-emphasis across chunks
        self._received = 0
        self._next = 0  # next column to emit
        self._pending: list[Float64Array] = []  # pre-emphasised audio before the left padding can be built
        self._buffer: Float64Array | None = None  # padded audio: column k covers [200k - base, ... + 800)
        self._base = 0  # padded index of _buffer[0]
        self._history = np.zeros((N_MELS, 2 * keep), np.float32)
        self._history_start = 0  # column index of _history[:, 0]
        self._finished = False

    @property
    def samples_received(self) -> int:
        return self._received

    @property
    def columns_emitted(self) -> int:
        return self._next

    def push(self, samples: npt.ArrayLike) -> Float32Array:
        """Adds samples; returns the (80, k) columns that became complete (k may be 0)."""
        if self._finished:
            raise RuntimeError("StreamingMel.push after finish")
        x = np.asarray(samples, np.float64).reshape(-1)
        if not x.size:
            return np.zeros((N_MELS, 0), np.float32)
        y = preemphasis(x, self._previous)
        self._previous = float(x[-1])
        self._received += x.size
        if self._buffer is None:
            self._pending.append(y)
            if self._received <= _PAD:
                return np.zeros((N_MELS, 0), np.float32)
            head = np.concatenate(self._pending)
            self._pending = []
            self._buffer = np.concatenate([head[_PAD:0:-1], head])  # the reference's left reflection
        else:
            self._buffer = np.concatenate([self._buffer, y])
        ready = (self._received - _PAD) // HOP + 1  # columns whose last sample 200c + 399 is in
        return self._emit(ready - self._next)

    def finish(self) -> Float32Array:
        """The remaining columns, with the reference's reflect padding after the last sample."""
        if self._finished:
            return np.zeros((N_MELS, 0), np.float32)
        self._finished = True
        total = 1 + self._received // HOP
        if self._buffer is None:  # never reached 401 samples: pad the whole (short) signal at once
            y = np.concatenate(self._pending) if self._pending else np.zeros(0)
            self._pending = []
            self._buffer, self._base = _reflect_padded(y), 0
        else:
            tail = self._buffer[-_PAD - 1 : -1][::-1]  # y[N-2], y[N-3], ... y[N-401]
            self._buffer = np.concatenate([self._buffer, tail])
        return self._emit(total - self._next)

    def _emit(self, count: int) -> Float32Array:
        assert self._buffer is not None
        if count <= 0:
            return np.zeros((N_MELS, 0), np.float32)
        start = HOP * self._next - self._base
        columns = _columns(self._buffer[start:], count)
        self._next += count
        drop = HOP * self._next - self._base  # the next column starts here: older samples are done
        self._buffer = self._buffer[drop:]
        self._base += drop
        self._remember(columns)
        return columns

    def _remember(self, columns: Float32Array) -> None:
        # The store holds columns [_history_start, _next) and has room for 2 * keep, so the kept columns are
        # shifted down once every ``keep`` columns rather than copied on every push.
        count = columns.shape[1]
        if count >= self.keep:
            self._history[:, : self.keep] = columns[:, count - self.keep :]
            self._history_start = self._next - self.keep
            return
        used = self._next - count - self._history_start
        if used + count > 2 * self.keep:
            self._history[:, : self.keep] = self._history[:, used - self.keep : used]
            self._history_start += used - self.keep
            used = self.keep
        self._history[:, used : used + count] = columns

    def columns(self, start: int, stop: int) -> Float32Array | None:
        """Emitted columns ``[start, stop)`` if they are still kept and all emitted, else None."""
        if start < max(0, self._next - self.keep) or stop > self._next or start > stop:
            return None
        return self._history[:, start - self._history_start : stop - self._history_start].copy()

    def window(self, frame_index: int, fps: Fraction | float) -> Float32Array | None:
        """Frame ``frame_index``'s (80, 16) window once its columns are emitted (None before, or once dropped)."""
        start = mel_window_start(frame_index, fps)
        return self.columns(start, start + MEL_STEP)
