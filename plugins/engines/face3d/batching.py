"""The coefficient model over a batch of frame jobs in one pass, equal frame by frame to
:class:`.coeff_model.StreamingCoefficients`.

A batch of consecutive frames shares almost all its audio: each job's context is the previous one's shifted by a
frame. Per frame the model would run over its whole 1.2 s window (about 130 columns through 6 layers); over a run
of ``n`` consecutive frames one pass over the union of their windows covers ``120 + 4n + 5`` columns, so a batch of
8 costs about a sixth of eight single frames. Jobs that do not continue the previous one (another session's frames
in a shared engine's batch, a gap) start a new run; each run is one pass.

The jobs' audio is at the stream's rate; the model wants 16 kHz, so a run's audio is resampled (soxr, as the host
resamples voices) unless the stream already is 16 kHz, where the result is exactly the streaming one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from fractions import Fraction

import numpy as np
import numpy.typing as npt

from anchorcast.components import FrameJob
from anchorcast.resampling import Resampler

from ..wav2lip.audio import SAMPLE_RATE, frame_start_sample
from .coeff_model import LOOKAHEAD_COLUMNS, CoefficientModel, column_samples, columns_from_raw, frame_columns

Float32Array = npt.NDArray[np.float32]
LogitsFunction = Callable[[Float32Array, int, tuple[int, int]], Float32Array]
"""``(mel (n, 80), first column, (start, stop)) -> logits (stop - start, 53)``: the model's token pass, in torch
or an exported runtime."""
RESAMPLING_MARGIN_S = 0.01
"""Extra lookbehind asked of the host when the stream is not 16 kHz: the resampler's filter settles in it."""


def torch_logits(model: CoefficientModel) -> LogitsFunction:
    """The token pass of ``model`` in torch, without gradients."""
    import torch

    def logits(mel: Float32Array, first: int, keep: tuple[int, int]) -> Float32Array:
        with torch.inference_mode():
            features = torch.from_numpy(mel)[None].to(model.input.weight)
            return model.token_logits(features, first, keep)[0].float().cpu().numpy()

    return logits


class BatchCoefficients:
    """Coefficients (n, 53) for a batch of FrameJobs at ``fps`` and stream rate ``sample_rate``."""

    def __init__(self, model: CoefficientModel, fps: Fraction, sample_rate: int,
                 logits: LogitsFunction | None = None) -> None:
        self.model = model
        self.fps = fps
        self.sample_rate = sample_rate
        self.logits = logits or torch_logits(model)
        self.lookbehind_s = model.lookbehind_samples / SAMPLE_RATE + (
            0.0 if sample_rate == SAMPLE_RATE else RESAMPLING_MARGIN_S)
        self._resampler = Resampler(SAMPLE_RATE)

    def __call__(self, jobs: Sequence[FrameJob]) -> Float32Array:
        out = np.zeros((len(jobs), len(self.model.expression_names)), np.float32)
        for positions, audio in self._runs(jobs):
            out[positions] = self._run([jobs[k] for k in positions], audio)
        return out

    def _runs(self, jobs: Sequence[FrameJob]) -> list[tuple[list[int], Float32Array]]:
        """Runs of consecutive jobs (positions into ``jobs``, by frame) with the union of their contexts: a job
        continues a run when it is the next frame and its context, but for its last ``frame_samples`` samples,
        is the end of the run's audio."""
        runs: list[tuple[list[int], Float32Array]] = []
        for k in sorted(range(len(jobs)), key=lambda k: jobs[k].index):
            job = jobs[k]
            context = np.asarray(job.context, np.float32)
            overlap = context.size - job.frame_samples
            for number, (positions, audio) in enumerate(runs):
                last = jobs[positions[-1]]
                if (job.index == last.index + 1 and job.offset == last.offset and 0 < overlap <= audio.size
                        and np.array_equal(context[:overlap], audio[audio.size - overlap:])):
                    positions.append(k)
                    runs[number] = (positions, np.concatenate([audio, context[overlap:]]))
                    break
            else:
                runs.append(([k], context))
        return runs

    def _run(self, jobs: Sequence[FrameJob], audio: Float32Array) -> Float32Array:
        """The coefficients of consecutive ``jobs`` whose contexts together are ``audio`` (stream rate)."""
        first, last = jobs[0], jobs[-1]
        # the timeline position (16 kHz) of audio[0]
        behind = first.offset
        if self.sample_rate != SAMPLE_RATE:
            audio = self._resampler(audio, self.sample_rate)
            behind = round(behind * SAMPLE_RATE / self.sample_rate)
        origin = frame_start_sample(first.index, self.fps) - behind
        start, _ = frame_columns(first.index, self.fps)
        _, stop = frame_columns(last.index, self.fps)
        low = max(0, start - self.model.context_columns)
        high = stop - 1 + LOOKAHEAD_COLUMNS
        begin, end = (sample - origin for sample in column_samples(low, high))
        raw = np.asarray(audio, np.float64)
        # the host zero-pads outside the timeline; rounding at other rates may leave a sample or two to pad here
        raw = np.pad(raw[max(begin, 0): max(min(end, raw.size), 0)], (max(-begin, 0), max(end - raw.size, 0)))
        raw = raw[: end - begin]
        mel = columns_from_raw(raw, high - low + 1)
        logits = self.logits(mel, low, (start, stop))
        result = np.empty((len(jobs), logits.shape[-1]), np.float32)
        for row, job in enumerate(jobs):
            a, b = frame_columns(job.index, self.fps)
            result[row] = logits[a - start: b - start].mean(axis=0)
        return 1.0 / (1.0 + np.exp(-result))
