"""``anchorcast train syncnet``: the lip-sync expert, trained with the cosine-similarity BCE loss and, with
``--stages 3``, the three-stage curriculum.

Loss (the reference recipe): the expert embeds a mel window and five lower-half frames, both L2-normalised and
non-negative, so their cosine similarity ``s`` lies in [0, 1]; the loss is ``BCE(s, y)`` with ``y = 1`` in sync and
``y = 0`` for the same frames with the audio window of a start at least ``shift_min`` frames away, 50/50. Every
batch draws ``batch / 2`` face windows and gives each both its own audio and a shifted one, so positives and
negatives come in matched pairs.

Curriculum (``--stages 3``), each stage ``--steps`` steps, global step numbers running on across stages:

1. ``all``: BCE on every (clip, start) of the training split;
2. ``margin``: the stage-1 expert scores every in-sync (clip, start) of the training split and only those it
   judges in sync (similarity >= ``--filter-threshold``; at least ``--min-keep`` of them, best first) are kept.
   Training goes on on the kept windows with BCE plus a margin term ``relu(m - (s_pos - s_neg))`` that pushes
   apart each pair's similarities; ``m`` grows by ``--margin-step`` every ``--margin-every`` steps until it
   passes ``--margin-threshold``, after which it is held at the threshold;
3. ``filtered``: BCE on the kept windows.

Evaluation (every ``--eval-every`` steps and at the end of every stage) uses a fixed set of matched pairs from
the held-out clips: ``eval_loss`` (BCE), ``pair_accuracy`` (the fraction of pairs whose in-sync similarity is above
its shifted twin's) and ``accuracy`` (the fraction of held-out samples classified right by a similarity threshold
chosen on training-split pairs). These judge single five-frame windows. At the end of every stage the expert
also judges whole held-out clips (:func:`evaluate_clips`): each clip in sync against the same clip with its audio
shifted by 1, 2 and 3 times ``--shift-min`` frames either way, scored by the mean similarity over the clip, as
``prepare --expert`` judges a clip.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console
from rich.table import Table
from torch.nn import functional as F

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.training.common import (
    RunFolder,
    TrainingInterrupted,
    evaluation,
    mixed_precision,
    run_steps,
    set_seeds,
    step_rng,
    training_device,
)
from anchorcast_plugins.engines.wav2lip.training.dataset import (
    MEL_STEP,
    SYNC_FRAMES,
    Dataset,
    lower_halves,
    mel_start,
)
from anchorcast_plugins.engines.wav2lip.training.offsets import ClipEmbeddings

STAGE_NAMES = ("all", "margin", "filtered")
FILTER_FILE = "filtered.json"
EPS = 1e-7


@dataclass(frozen=True)
class SyncNetConfig:
    """Everything ``anchorcast train syncnet`` takes (the CLI's options; recorded in ``metrics.json``)."""

    data: str
    out: str
    steps: int = 200
    """Steps per stage."""
    batch: int = 16
    lr: float = 1e-4
    stages: int = 1
    shift_min: int = 5
    margin_step: float = 0.05
    margin_every: int = 10
    margin_threshold: float = 0.4
    filter_threshold: float = 0.5
    min_keep: float = 0.5
    eval_every: int = 50
    eval_pairs: int = 64
    eval_clips: int = 64
    """Held-out clips (and as many training clips, for the threshold) in the clip-level evaluation."""
    heldout: float = 0.2
    save_every: int = 50
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    resume: bool = False

    def check(self) -> None:
        if self.stages not in (1, 3):
            raise InputError(f"--stages must be 1 or 3, got {self.stages}")
        for name in ("steps", "batch", "margin_every", "eval_every", "eval_pairs", "eval_clips", "save_every",
                     "shift_min"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.batch < 2 or self.batch % 2:
            raise InputError(f"--batch must be even and at least 2 (half in sync, half off), got {self.batch}")
        if not 0 < self.lr < 1:
            raise InputError(f"--lr must be between 0 and 1, got {self.lr}")
        if self.margin_step <= 0 or not 0 < self.margin_threshold <= 1:
            raise InputError("--margin-step must be positive and --margin-threshold in (0, 1]")
        if not 0 < self.min_keep <= 1:
            raise InputError(f"--min-keep must be in (0, 1], got {self.min_keep}")

    @property
    def total_steps(self) -> int:
        return self.steps * self.stages

    def stage_of(self, step: int) -> int:
        """The 1-based stage of a 1-based global step."""
        return 1 if self.stages == 1 else min(3, (step - 1) // self.steps + 1)

    def margin_at(self, step: int) -> float:
        """Stage 2's margin at a global step: grows by ``margin_step`` every ``margin_every`` steps of the stage
        until it passes the threshold, then stays at the threshold."""
        k = step - self.steps - 1
        return min(self.margin_threshold, self.margin_step * (k // self.margin_every + 1))


# --- sampling ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairBatch:
    """``faces`` (N,15,48,96) and, for each, its own audio window ``in_sync`` and one shifted by at least
    ``shift_min`` frames ``off_sync`` (N,1,80,16); ``windows`` the (clip index, start) of each face window."""

    faces: npt.NDArray[np.float32]
    in_sync: npt.NDArray[np.float32]
    off_sync: npt.NDArray[np.float32]
    windows: npt.NDArray[np.int64]


class PairSampler:
    """Draws matched pairs from a data set's face windows, all of them or a kept subset (``windows``: rows of
    (clip index, start))."""

    def __init__(self, dataset: Dataset, shift_min: int = 5,
                 windows: npt.NDArray[np.int64] | None = None) -> None:
        self.dataset = dataset
        self.shift_min = shift_min
        self.clips = dataset.clips
        self.windows = self.all_windows() if windows is None else np.asarray(windows, np.int64).reshape(-1, 2)
        if len(self.windows) == 0:
            raise InputError(f"no clip in {dataset.folder} is long enough for SyncNet pairs shifted by {shift_min} "
                             f"frames (a clip needs more than {SYNC_FRAMES + shift_min} frames)")

    def all_windows(self) -> npt.NDArray[np.int64]:
        """Every (clip, start) that has a start at least ``shift_min`` frames away in the same clip."""
        rows = [(index, t) for index, clip in enumerate(self.clips) for t in range(clip.sync_starts)
                if t - self.shift_min >= 0 or t + self.shift_min < clip.sync_starts]
        return np.array(rows, np.int64).reshape(-1, 2)

    def pairs(self, rows: npt.NDArray[np.int64], rng: np.random.Generator) -> PairBatch:
        count = len(rows)
        faces = np.empty((count, 3 * SYNC_FRAMES, 48, 96), np.float32)
        in_sync = np.empty((count, 1, 80, MEL_STEP), np.float32)
        off_sync = np.empty_like(in_sync)
        for k, (index, t) in enumerate(rows):
            clip = self.clips[int(index)]
            starts = clip.sync_starts
            far = np.concatenate([np.arange(0, max(0, t - self.shift_min + 1)),
                                  np.arange(min(starts, t + self.shift_min), starts)])
            u = int(far[rng.integers(len(far))])
            faces[k] = lower_halves(clip.faces[t : t + SYNC_FRAMES])
            in_sync[k, 0] = clip.mel[:, mel_start(int(t)) : mel_start(int(t)) + MEL_STEP]
            off_sync[k, 0] = clip.mel[:, mel_start(u) : mel_start(u) + MEL_STEP]
        return PairBatch(faces, in_sync, off_sync, np.asarray(rows, np.int64))

    def sample(self, rng: np.random.Generator, count: int) -> PairBatch:
        """``count`` face windows drawn uniformly (with replacement) from the windows, each with its pair."""
        return self.pairs(self.windows[rng.integers(len(self.windows), size=count)], rng)

    def fixed(self, seed: int, count: int) -> PairBatch:
        """A reproducible set of up to ``count`` distinct windows spread over the data (for evaluation)."""
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(len(self.windows))[: min(count, len(self.windows))]
        return self.pairs(self.windows[np.sort(chosen)], rng)


# --- the model's training step ----------------------------------------------------------------------------


def sync_bce(similarity: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The expert's loss: BCE on the cosine similarity (clamped away from 0 and 1)."""
    return F.binary_cross_entropy(similarity.clamp(EPS, 1 - EPS), labels)


class SyncNetTrainer:
    """The expert, its Adam optimiser and one training step; usable without the CLI (tests, benchmarks)."""

    def __init__(self, device: str = "cpu", lr: float = 1e-4, seed: int = 0, bf16: bool = False) -> None:
        from anchorcast_plugins.engines.wav2lip.models import SyncNet

        set_seeds(seed)
        self.device = device
        self.bf16 = bf16
        self.model = SyncNet().to(device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def similarities(self, mels: npt.NDArray[np.float32] | torch.Tensor,
                     faces: npt.NDArray[np.float32] | torch.Tensor) -> torch.Tensor:
        with mixed_precision(self.device, self.bf16):
            audio, video = self.model(torch.as_tensor(mels, device=self.device),
                                      torch.as_tensor(faces, device=self.device))
        return (audio.float() * video.float()).sum(dim=1)

    def step(self, batch: PairBatch, margin: float = 0.0) -> dict[str, float]:
        """One optimiser step on a batch of matched pairs (2N samples, half in sync); ``margin`` > 0 adds the
        stage-2 term ``relu(margin - (s_pos - s_neg))``."""
        self.model.train()
        count = len(batch.faces)
        faces = torch.as_tensor(np.concatenate([batch.faces, batch.faces]), device=self.device)
        mels = torch.as_tensor(np.concatenate([batch.in_sync, batch.off_sync]), device=self.device)
        labels = torch.cat([torch.ones(count), torch.zeros(count)]).to(self.device)
        similarity = self.similarities(mels, faces)
        bce = sync_bce(similarity, labels)
        loss = bce
        values = {"loss": 0.0, "bce": 0.0}
        if margin > 0:
            gap = similarity[:count] - similarity[count:]
            margin_loss = F.relu(margin - gap).mean()
            loss = bce + margin_loss
            values["margin_loss"] = float(margin_loss.detach())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        values["loss"], values["bce"] = float(loss.detach()), float(bce.detach())
        return values

    def score(self, batch: PairBatch, chunk: int = 32) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """Similarities of every pair's in-sync and off-sync sample, in eval mode."""
        positives, negatives = [], []
        with evaluation(self.model):
            for start in range(0, len(batch.faces), chunk):
                faces = batch.faces[start : start + chunk]
                positives.append(self.similarities(batch.in_sync[start : start + chunk], faces).cpu().numpy())
                negatives.append(self.similarities(batch.off_sync[start : start + chunk], faces).cpu().numpy())
        return np.concatenate(positives), np.concatenate(negatives)


def best_threshold(positives: npt.NDArray[np.float32], negatives: npt.NDArray[np.float32]) -> float:
    """The similarity threshold that classifies these samples best (in sync when similarity > threshold)."""
    values = np.sort(np.concatenate([positives, negatives]))
    candidates = np.concatenate([[values[0] - 1e-6], (values[1:] + values[:-1]) / 2, [values[-1] + 1e-6]])
    scores = [(positives > c).sum() + (negatives <= c).sum() for c in candidates]
    return float(candidates[int(np.argmax(scores))])


def evaluate(trainer: SyncNetTrainer, heldout: PairBatch, calibration: PairBatch) -> dict[str, float]:
    """Eval loss, pair accuracy and thresholded accuracy on held-out pairs (threshold chosen on ``calibration``,
    pairs from the training split)."""
    positives, negatives = trainer.score(heldout)
    calib_pos, calib_neg = trainer.score(calibration)
    threshold = best_threshold(calib_pos, calib_neg)
    similarity = torch.from_numpy(np.concatenate([positives, negatives]))
    labels = torch.cat([torch.ones(len(positives)), torch.zeros(len(negatives))])
    correct = (positives > threshold).sum() + (negatives <= threshold).sum()
    return {
        "eval_loss": round(float(sync_bce(similarity, labels)), 5),
        "pair_accuracy": round(float((positives > negatives).mean()), 5),
        "accuracy": round(float(correct / (len(positives) + len(negatives))), 5),
        "threshold": round(threshold, 5),
        "mean_in_sync": round(float(positives.mean()), 5),
        "mean_off_sync": round(float(negatives.mean()), 5),
        "pairs": len(positives),
    }


def clip_shifts(shift_min: int) -> tuple[int, ...]:
    """The audio shifts a held-out clip is compared against: 1, 2 and 3 times ``shift_min``, late and early."""
    return tuple(sign * k * shift_min for k in (1, 2, 3) for sign in (1, -1))


@dataclass(frozen=True)
class ClipPairs:
    """Matched arrays, one row per (clip, shift): the clip's score in sync and with the audio shifted (over the
    same face windows), the shift and the clip's index in its data set."""

    positives: npt.NDArray[np.float32]
    negatives: npt.NDArray[np.float32]
    shifts: npt.NDArray[np.int64]
    clips: npt.NDArray[np.int64]


def clip_pairs(model: torch.nn.Module, dataset: Dataset, shifts: tuple[int, ...], device: str = "cpu",
               bf16: bool = False) -> ClipPairs:
    """Every clip of ``dataset`` at every shift that leaves a quarter of its windows, scored over those windows
    with their own audio and with the shifted audio."""
    rows: list[tuple[float, float, int, int]] = []
    for index, clip in enumerate(dataset.clips):
        embeddings = ClipEmbeddings.of(model, clip.faces, clip.mel, device, bf16)
        for shift in shifts:
            pair = embeddings.pair(shift)
            if pair is not None:
                rows.append((pair[0], pair[1], shift, index))
    table = np.array(rows, np.float64).reshape(-1, 4)
    return ClipPairs(table[:, 0].astype(np.float32), table[:, 1].astype(np.float32), table[:, 2].astype(np.int64),
                     table[:, 3].astype(np.int64))


def evaluate_clips(model: torch.nn.Module, heldout: Dataset, calibration: Dataset, shift_min: int,
                   device: str = "cpu", bf16: bool = False) -> dict[str, Any]:
    """Clip-level off-sync detection: each held-out clip, in sync and with its whole audio shifted by each of
    :func:`clip_shifts`, is scored by its mean window similarity and classified by a threshold chosen the same
    way on ``calibration`` (training) clips. ``clip_accuracy`` counts both members of every (in sync, shifted)
    pair, so the classes weigh equally; ``clip_pair_accuracy`` is the fraction of pairs whose in-sync score is the
    higher; ``clip_accuracy_by_shift`` splits the accuracy by the size of the shift. Empty when no clip is long
    enough for a shift."""
    shifts = clip_shifts(shift_min)
    calibrating = clip_pairs(model, calibration, shifts, device, bf16)
    held = clip_pairs(model, heldout, shifts, device, bf16)
    if len(held.positives) == 0 or len(calibrating.positives) == 0:
        return {}
    threshold = best_threshold(calibrating.positives, calibrating.negatives)
    right = (held.positives > threshold).astype(np.float64) + (held.negatives <= threshold)
    sizes = np.abs(held.shifts)
    return {
        "clip_accuracy": round(float(right.mean() / 2), 5),
        "clip_pair_accuracy": round(float((held.positives > held.negatives).mean()), 5),
        "clip_accuracy_by_shift": {str(size): round(float(right[sizes == size].mean() / 2), 5)
                                   for size in sorted(set(sizes.tolist()))},
        "clip_threshold": round(threshold, 5),
        "clips": len(set(held.clips.tolist())),
        "clip_pairs": len(held.positives),
    }


def filter_windows(trainer: SyncNetTrainer, sampler: PairSampler, threshold: float, min_keep: float,
                   chunk: int = 32) -> tuple[npt.NDArray[np.int64], dict[str, Any]]:
    """The training windows whose in-sync similarity is at least ``threshold`` (at least ``min_keep`` of them,
    the most similar first), and a summary for ``metrics.json``."""
    windows = sampler.windows
    scores = []
    with evaluation(trainer.model):
        for start in range(0, len(windows), chunk):
            rows = windows[start : start + chunk]
            faces = np.stack([lower_halves(sampler.clips[i].faces[t : t + SYNC_FRAMES]) for i, t in rows])
            mels = np.stack([sampler.clips[i].mel[None, :, mel_start(t) : mel_start(t) + MEL_STEP] for i, t in rows])
            scores.append(trainer.similarities(mels, faces).cpu().numpy())
    similarity = np.concatenate(scores)
    keep = similarity >= threshold
    floor = int(np.ceil(min_keep * len(windows)))
    if keep.sum() < floor:
        keep = np.zeros(len(windows), bool)
        keep[np.argsort(-similarity, kind="stable")[:floor]] = True
    summary = {"windows": len(windows), "kept": int(keep.sum()), "threshold": threshold,
               "min_keep": min_keep, "mean_similarity": round(float(similarity.mean()), 5),
               "kept_min_similarity": round(float(similarity[keep].min()), 5)}
    return windows[keep], summary


# --- the run ----------------------------------------------------------------------------------------------


StepCallback = Callable[[int, Mapping[str, float]], None]


def train_syncnet(config: SyncNetConfig, console: Console | None = None,
                  after_step: StepCallback | None = None) -> dict[str, Any]:
    """Runs (or with ``config.resume`` continues) a SyncNet training run; returns the final metrics.

    Raises :class:`TrainingInterrupted` after saving when interrupted (Ctrl-C, or ``after_step`` raising
    ``KeyboardInterrupt``)."""
    config.check()
    out = console or Console(stderr=True)
    dataset = Dataset.load(config.data)
    train_set, heldout_set = dataset.split(config.heldout, seed=config.seed)
    if len(heldout_set) == 0:
        raise InputError(f"data set {dataset.folder} has {len(dataset)} clip(s): evaluation needs at least two "
                         "(one is held out)", hint="add clips, e.g. `anchorcast train synth --clips 12`")
    device, description = training_device(config.device, config.bf16)
    run = RunFolder.open(config.out, "syncnet", "syncnet", asdict(config), resume=config.resume)
    run.metrics["device"] = description
    run.metrics["data"] = {"folder": str(dataset.folder), "train_clips": len(train_set),
                           "heldout_clips": len(heldout_set), "heldout_ids": [c.id for c in heldout_set.clips]}
    trainer = SyncNetTrainer(device, config.lr, config.seed, config.bf16)
    step = 0
    if config.resume:
        step, _ = run.load_checkpoint(trainer.model, trainer.optimizer, device)
        # steps recorded after the last checkpoint are done again
        run.metrics["steps"] = [s for s in run.metrics["steps"] if s["step"] <= step]
        run.metrics["evals"] = [e for e in run.metrics["evals"] if e["step"] <= step]
        out.print(f"resuming {run.path} after step {step}", highlight=False)
    sampler = PairSampler(train_set, config.shift_min)
    heldout = PairSampler(heldout_set, config.shift_min).fixed(config.seed + 1, config.eval_pairs)
    calibration = sampler.fixed(config.seed + 2, config.eval_pairs)
    clip_heldout = some_clips(heldout_set, config.eval_clips, config.seed + 1)
    clip_calibration = some_clips(train_set, config.eval_clips, config.seed + 2)
    out.print(f"SyncNet expert on {description}: {len(train_set)} training clips ({len(sampler.windows)} windows), "
              f"{len(heldout_set)} held out ({len(heldout.faces)} eval pairs); {config.stages} stage(s) of "
              f"{config.steps} steps, batch {config.batch}", highlight=False)

    kept = _load_filter(run) if step >= config.steps and config.stages == 3 else None
    run.metrics.setdefault("stages", [])
    for stage in range(1, config.stages + 1):
        first, last = (stage - 1) * config.steps + 1, stage * config.steps
        if stage >= 2 and kept is None:
            kept = _make_filter(run, trainer, sampler, config, out)
        stage_sampler = sampler if stage == 1 else PairSampler(train_set, config.shift_min, kept)
        if step < last:
            _run_stage(run, trainer, config, stage, max(first, step + 1), last, stage_sampler, heldout,
                       calibration, out, after_step)
            step = last
            result = evaluate(trainer, heldout, calibration)
            result.update(evaluate_clips(trainer.model, clip_heldout, clip_calibration, config.shift_min, device,
                                         config.bf16))
            run.record_eval(last, {"stage": stage, **result})
            entry = {"stage": stage, "name": STAGE_NAMES[stage - 1] if config.stages == 3 else "all",
                     "first_step": first, "last_step": last, "windows": len(stage_sampler.windows), **result}
            run.metrics["stages"] = [s for s in run.metrics["stages"] if s.get("stage") != stage] + [entry]
            run.save_metrics()
            _print_eval(out, f"stage {stage} ({entry['name']})", result)
    final = run.metrics["evals"][-1] if run.metrics["evals"] else evaluate(trainer, heldout, calibration)
    run.metrics["final"] = {k: final[k] for k in ("eval_loss", "pair_accuracy", "accuracy", "threshold",
                                                  "clip_accuracy", "clip_pair_accuracy", "clip_accuracy_by_shift")
                            if k in final}
    run.metrics["finished"] = True
    run.metrics.pop("interrupted_at_step", None)
    run.save_metrics()
    return run.metrics


def some_clips(dataset: Dataset, count: int, seed: int) -> Dataset:
    """Up to ``count`` clips of ``dataset``, the same ones for the same seed."""
    order = np.random.default_rng(seed).permutation(len(dataset.clips))[:count]
    return dataset.subset([dataset.clips[int(i)].id for i in sorted(order)])


def _run_stage(run: RunFolder, trainer: SyncNetTrainer, config: SyncNetConfig, stage: int, first: int, last: int,
               sampler: PairSampler, heldout: PairBatch, calibration: PairBatch, out: Console,
               after_step: StepCallback | None) -> None:
    margin_on = config.stages == 3 and stage == 2

    def step(number: int) -> Mapping[str, float]:
        batch = sampler.sample(step_rng(config.seed, number), config.batch // 2)
        return trainer.step(batch, config.margin_at(number) if margin_on else 0.0)

    def held_out(number: int) -> Mapping[str, float]:
        if number % config.eval_every or number == last:
            return {}
        result = evaluate(trainer, heldout, calibration)
        run.record_eval(number, {"stage": stage, **result})
        return {"eval_loss": result["eval_loss"], "eval_acc": result["accuracy"]}

    def extra(number: int) -> dict[str, Any]:
        return {"stage": stage, **({"margin": round(config.margin_at(number), 5)} if margin_on else {})}

    def save(number: int) -> None:
        run.save_checkpoint(trainer.model, trainer.optimizer, number, {"stage": config.stage_of(number)})

    label = f"stage {stage}/{config.stages}" if config.stages == 3 else "syncnet"
    run_steps(run, label=label, first=first, last=last, step=step, save=save, console=out,
              save_every=config.save_every, after_step=after_step, record_extra=extra, evaluate=held_out)


def _make_filter(run: RunFolder, trainer: SyncNetTrainer, sampler: PairSampler, config: SyncNetConfig,
                 out: Console) -> npt.NDArray[np.int64]:
    kept, summary = filter_windows(trainer, sampler, config.filter_threshold, config.min_keep)
    run.metrics["filter"] = summary
    (run.path / FILTER_FILE).write_text(json.dumps({"windows": kept.tolist(), **summary}) + "\n")
    run.save_metrics()
    out.print(f"filter: the stage-1 expert keeps {summary['kept']} of {summary['windows']} in-sync windows "
              f"(similarity >= {summary['kept_min_similarity']:.3f})", highlight=False)
    return kept


def _load_filter(run: RunFolder) -> npt.NDArray[np.int64] | None:
    path = run.path / FILTER_FILE
    if not path.is_file():
        return None
    return np.array(json.loads(path.read_text())["windows"], np.int64).reshape(-1, 2)


def _print_eval(out: Console, title: str, result: Mapping[str, Any]) -> None:
    out.print(f"[bold]{title}[/]: eval loss {result['eval_loss']:.4f}, off-sync detection accuracy "
              f"{result['accuracy']:.1%} (threshold {result['threshold']:.3f} chosen on training pairs), "
              f"pair accuracy {result['pair_accuracy']:.1%} on {result['pairs']} held-out pairs", highlight=False)
    if "clip_accuracy" in result:
        by_shift = ", ".join(f"±{size}: {value:.1%}" for size, value in result["clip_accuracy_by_shift"].items())
        out.print(f"  whole clips: off-sync detection accuracy {result['clip_accuracy']:.1%} ({by_shift} frames), "
                  f"pair accuracy {result['clip_pair_accuracy']:.1%} on {result['clips']} held-out clips",
                  highlight=False)


# --- CLI --------------------------------------------------------------------------------------------------


def config_from_args(args: argparse.Namespace) -> SyncNetConfig:
    names = SyncNetConfig.__dataclass_fields__
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    values["data"], values["out"] = str(args.data), str(args.out)
    return SyncNetConfig(**values)


def run_syncnet(host: Any, args: argparse.Namespace) -> int:
    """Runs ``anchorcast train syncnet``; 130 when interrupted (the checkpoint is saved)."""
    del host
    console = Console(stderr=True)
    config = config_from_args(args)
    started = time.perf_counter()
    try:
        metrics = train_syncnet(config, console)
    except TrainingInterrupted as stop:
        console.print(f"[yellow]interrupted[/] after step {stop.step}; checkpoint saved in {config.out}; "
                      "continue with the same command and --resume", highlight=False)
        return 130
    except KeyboardInterrupt:  # outside the step loop (evaluating, filtering): the last checkpoint stands
        console.print(f"[yellow]interrupted[/]; the last checkpoint in {config.out} stands; continue with the same "
                      "command and --resume", highlight=False)
        return 130
    table = Table(title=f"SyncNet run {config.out}", header_style="bold")
    for column in ("stage", "steps", "windows", "eval loss", "accuracy", "pair accuracy", "clip accuracy"):
        table.add_column(column, justify="left" if column == "stage" else "right")
    for stage in metrics.get("stages", []):
        table.add_row(f"{stage['stage']} {stage['name']}", f"{stage['first_step']}-{stage['last_step']}",
                      str(stage["windows"]), f"{stage['eval_loss']:.4f}", f"{stage['accuracy']:.1%}",
                      f"{stage['pair_accuracy']:.1%}",
                      f"{stage['clip_accuracy']:.1%}" if "clip_accuracy" in stage else "-")
    console.print(table)
    console.print(f"weights: {Path(config.out) / 'syncnet.safetensors'} (import with `anchorcast weights import`); "
                  f"{metrics.get('seconds_per_step', 0):.2f} s/step; took {time.perf_counter() - started:.0f} s",
                  highlight=False)
    return 0
