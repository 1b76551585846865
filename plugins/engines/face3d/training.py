"""``anchorcast train coeffs``: trains the coefficient model on teacher data sets and Live Link Face captures.

Each step draws ``batch`` utterances of the training split (a function of the seed and the step, so a resumed run
draws what an uninterrupted one would), crops each to at most ``crop_seconds`` at a frame boundary, applies a
random gain (and sometimes faint noise, as a microphone has) and computes the features
(:func:`~.coeff_model.features_for`). Loss: L1 against the target coefficients, mouth expressions (``jaw*``,
``mouth*``) weighted ``mouth_weight``, the rest 1, plus ``velocity_weight`` times the L1 of the frame-to-frame
change of the mouth expressions (smooth, not lagging motion). AdamW with a linear warm-up and a cosine decay to a
tenth of the rate at ``steps``.

The run folder (as the Wav2Lip tools': :class:`~anchorcast_plugins.engines.wav2lip.training.common.RunFolder`)
holds ``metrics.json``, ``coeffs.safetensors`` (:meth:`CoefficientModel.save`, loadable by the engine) and
``training_state.pt`` (optimizer, step, torch RNG). ``--resume`` continues from the last checkpoint exactly;
``--minutes`` stops after that much time with a checkpoint.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console
from rich.table import Table

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.training.common import (
    RunFolder,
    TrainingInterrupted,
    evaluation,
    run_steps,
    set_seeds,
    step_rng,
)

from .coeff_model import SAMPLE_RATE, CoefficientConfig, CoefficientModel, features_for, shipped_expression_names
from .teacher import mouth_mask
from .training_data import FPS, Item, load_dataset

STATE_FORMAT = "anchorcast-coeffs-state/1"
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


@dataclass
class CoeffsConfig:
    """The options of ``anchorcast train coeffs`` (stored in the run's metrics)."""

    out: str
    data: list[str] = field(default_factory=list)
    livelink: list[str] = field(default_factory=list)
    init: str | None = None
    steps: int = 2000
    batch: int = 8
    lr: float = 1e-3
    warmup: int = 100
    crop_seconds: float = 4.0
    mouth_weight: float = 4.0
    velocity_weight: float = 1.0
    gain_db: tuple[float, float] = (-18.0, 4.0)
    noise_probability: float = 0.3
    minutes: float | None = None
    save_every: int = 100
    eval_every: int = 100
    eval_items: int = 48
    seed: int = 0
    threads: int | None = None
    resume: bool = False

    def check(self) -> None:
        if not self.data and not self.livelink:
            raise InputError("train coeffs needs data: --data TEACHER_SET and/or --livelink FOLDER",
                             hint="make a teacher set with `anchorcast train coeffs-data --out FOLDER`")
        if self.steps < 1 or self.batch < 1 or self.crop_seconds <= 0.2:
            raise InputError("--steps and --batch must be at least 1 and --crop-seconds more than 0.2")


# --- data ------------------------------------------------------------------------------------------------


def load_items(config: CoeffsConfig) -> tuple[list[Item], list[Item]]:
    """``(training, held-out)`` items of every ``--data`` and ``--livelink`` folder."""
    items: list[Item] = []
    for folder in config.data:
        items += load_dataset(Path(folder))
    if config.livelink:
        from .livelink import load_livelink_folder

        for folder in config.livelink:
            items += load_livelink_folder(Path(folder), FPS)
    train = [item for item in items if item.split == "train"]
    heldout = [item for item in items if item.split != "train"]
    if not train:
        raise InputError(f"no training items in {', '.join(config.data + config.livelink)}",
                         hint="a teacher set holds held-out items only when --sentences is very small")
    return train, heldout


@dataclass
class Batch:
    features: torch.Tensor  # (B, T, 80)
    target: torch.Tensor  # (B, frames, 53)
    mask: torch.Tensor  # (B, frames): 1 where the frame is part of an utterance


def crop(item: Item, rng: np.random.Generator, max_frames: int) -> tuple[npt.NDArray[np.float32], npt.NDArray]:
    """A random stretch of at most ``max_frames`` frames of ``item`` starting at a frame boundary."""
    frames = len(item.target)
    if frames <= max_frames:
        return item.audio, item.target
    first = int(rng.integers(0, frames - max_frames + 1))
    audio = item.audio[first * SAMPLES_PER_FRAME : (first + max_frames) * SAMPLES_PER_FRAME]
    return audio, item.target[first : first + max_frames]


def make_batch(items: Sequence[Item], rng: np.random.Generator | None, config: CoeffsConfig) -> Batch:
    """Features, targets and masks of ``items`` (cropped and augmented with ``rng``; whole and clean without)."""
    pieces = []
    for item in items:
        if rng is None:
            audio, target = item.audio, item.target
        else:
            audio, target = crop(item, rng, round(config.crop_seconds * FPS))
            gain = 10 ** (rng.uniform(*config.gain_db) / 20)
            audio = audio * gain
            if rng.random() < config.noise_probability:
                level = 10 ** (rng.uniform(-70, -50) / 20)
                audio = audio + level * rng.standard_normal(audio.size).astype(np.float32)
            audio = np.clip(audio, -1.0, 1.0)
        frames = min(len(target), len(audio) // SAMPLES_PER_FRAME)
        pieces.append((audio[: frames * SAMPLES_PER_FRAME], target[:frames]))
    most = max(len(target) for _, target in pieces)
    features, targets, masks = [], [], []
    for audio, target in pieces:
        padded = np.zeros(most * SAMPLES_PER_FRAME, np.float32)
        padded[: audio.size] = audio
        features.append(features_for(padded))
        full = np.zeros((most, target.shape[1]), np.float32)
        full[: len(target)] = target
        targets.append(full)
        masks.append((np.arange(most) < len(target)).astype(np.float32))
    return Batch(torch.from_numpy(np.stack(features)), torch.from_numpy(np.stack(targets)),
                 torch.from_numpy(np.stack(masks)))


# --- loss ------------------------------------------------------------------------------------------------


class CoeffsLoss:
    """Weighted L1 plus the mouth's velocity L1 (see the module doc)."""

    def __init__(self, names: Sequence[str], mouth_weight: float, velocity_weight: float) -> None:
        mouth = torch.from_numpy(mouth_mask(names))
        self.weights = torch.where(mouth, mouth_weight, 1.0).float()
        self.mouth = mouth
        self.velocity_weight = velocity_weight

    def __call__(self, predicted: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        mask = batch.mask[..., None]
        frames = mask.sum().clamp(min=1.0)
        error = (predicted - batch.target).abs()
        l1 = (error * self.weights * mask).sum() / (frames * self.weights.sum())
        mouth_l1 = (error[..., self.mouth] * mask).sum() / (frames * self.mouth.sum())
        both = mask[:, 1:] * mask[:, :-1]
        change = predicted.diff(dim=1)[..., self.mouth] - batch.target.diff(dim=1)[..., self.mouth]
        velocity = (change.abs() * both).sum() / (both.sum().clamp(min=1.0) * self.mouth.sum())
        return {"loss": l1 + self.velocity_weight * velocity, "l1": l1, "mouth_l1": mouth_l1, "velocity": velocity}


def learning_rate(config: CoeffsConfig, step: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine from ``lr`` to ``lr / 10`` at ``steps``."""
    if step <= config.warmup:
        return config.lr * step / config.warmup
    progress = min(1.0, (step - config.warmup) / max(1, config.steps - config.warmup))
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


# --- checkpoints -----------------------------------------------------------------------------------------


def save_checkpoint(run: RunFolder, model: CoefficientModel, optimizer: torch.optim.Optimizer, step: int) -> None:
    """The weights (:meth:`CoefficientModel.save`, atomic) then the state, renamed last."""
    model.save(run.weights_path)
    state = {"format": STATE_FORMAT, "step": step, "optimizer": optimizer.state_dict(),
             "torch_rng": torch.get_rng_state()}
    partial = run.state_path.with_name(run.state_path.name + ".partial")
    torch.save(state, partial)
    partial.replace(run.state_path)


def load_checkpoint(run: RunFolder, model: CoefficientModel, optimizer: torch.optim.Optimizer) -> int:
    """Restores the weights, optimizer and torch RNG; returns the step."""
    saved = CoefficientModel.load(run.weights_path)
    if saved.config != model.config:
        raise InputError(f"--resume: {run.weights_path} has another model shape ({saved.config})")
    model.load_state_dict(saved.state_dict())
    try:
        state = torch.load(run.state_path, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"format {state.get('format')!r}")
        optimizer.load_state_dict(state["optimizer"])
    except Exception as error:
        raise InputError(f"cannot resume from {run.state_path}: {error}", hint="start a new run") from None
    torch.set_rng_state(state["torch_rng"])
    return int(state["step"])


# --- the run ---------------------------------------------------------------------------------------------


class _BudgetSpent(Exception):
    def __init__(self, step: int) -> None:
        super().__init__(step)
        self.step = step


def heldout_l1(model: CoefficientModel, items: Sequence[Item], config: CoeffsConfig,
               loss: CoeffsLoss) -> dict[str, float]:
    """Mouth L1 and loss on whole held-out utterances (no augmentation)."""
    if not items:
        return {}
    totals = {"eval_loss": 0.0, "eval_mouth_l1": 0.0}
    with evaluation(model):
        for start in range(0, len(items), 8):
            batch = make_batch(items[start : start + 8], None, config)
            values = loss(model(batch.features, FPS, frames=batch.target.shape[1]), batch)
            count = len(items[start : start + 8])
            totals["eval_loss"] += float(values["loss"]) * count
            totals["eval_mouth_l1"] += float(values["mouth_l1"]) * count
    return {key: value / len(items) for key, value in totals.items()}


def initial_model(config: CoeffsConfig) -> CoefficientModel:
    """The model a run starts from: ``--from`` weights, or seeded random weights whose outputs start near 0 (the
    rest pose) rather than 0.5. Seeds the global generators (dropout draws from torch's)."""
    set_seeds(config.seed)
    model = CoefficientModel(CoefficientConfig(), shipped_expression_names())
    if config.init:
        model.load_state_dict(CoefficientModel.load(Path(config.init)).state_dict())
    else:
        with torch.no_grad():
            model.head.bias.fill_(-4.0)
    return model.train()


def train_coeffs(config: CoeffsConfig, console: Console | None = None) -> dict[str, Any]:
    """Runs (or with ``config.resume`` continues) a training run; returns its metrics. Raises
    :class:`TrainingInterrupted` after saving on Ctrl-C."""
    config.check()
    out = console or Console(stderr=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    train, heldout = load_items(config)
    eval_set = [heldout[int(i)] for i in np.random.default_rng(config.seed + 1).permutation(len(heldout))
                [: config.eval_items]]
    names = shipped_expression_names()
    run = RunFolder.open(config.out, "coeffs", "coeffs", asdict(config), resume=config.resume)
    run.metrics["data"] = {"train_items": len(train), "heldout_items": len(heldout),
                           "train_seconds": round(sum(len(i.audio) for i in train) / SAMPLE_RATE, 1),
                           "voices": sorted({i.voice for i in train})}
    model = initial_model(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=0.01)
    loss = CoeffsLoss(names, config.mouth_weight, config.velocity_weight)
    step = 0
    if config.resume:
        step = load_checkpoint(run, model, optimizer)
        run.metrics["steps"] = [s for s in run.metrics["steps"] if s["step"] <= step]
        run.metrics["evals"] = [e for e in run.metrics["evals"] if e["step"] <= step]
        out.print(f"resuming {run.path} after step {step}", highlight=False)
    out.print(f"coefficient model: {len(train)} training utterances "
              f"({run.metrics['data']['train_seconds'] / 60:.0f} min), {len(heldout)} held out; steps "
              f"{step + 1}-{config.steps}, batch {config.batch}, {torch.get_num_threads()} thread(s)",
              highlight=False)
    started = time.monotonic()

    def one_step(number: int) -> Mapping[str, float]:
        rng = step_rng(config.seed, number)
        chosen = [train[int(i)] for i in rng.integers(0, len(train), config.batch)]
        batch = make_batch(chosen, rng, config)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, number)
        values = loss(model(batch.features, FPS, frames=batch.target.shape[1]), batch)
        optimizer.zero_grad(set_to_none=True)
        values["loss"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return {key: float(value.detach()) for key, value in values.items() if key != "velocity"}

    def evaluate(number: int) -> Mapping[str, float]:
        if number % config.eval_every and number != config.steps:
            return {}
        result = heldout_l1(model, eval_set, config, loss)
        run.record_eval(number, result)
        return result

    def budget(number: int, values: Mapping[str, float]) -> None:
        del values
        spent = time.monotonic() - started
        if config.minutes is not None and spent > 60 * config.minutes and number < config.steps:
            raise _BudgetSpent(number)

    try:
        run_steps(run, label="coeffs", first=step + 1, last=config.steps, step=one_step,
                  save=lambda number: save_checkpoint(run, model, optimizer, number), console=out,
                  save_every=config.save_every, after_step=budget, evaluate=evaluate)
    except _BudgetSpent as stop:
        save_checkpoint(run, model, optimizer, stop.step)
        run.metrics["stopped_at_step"] = stop.step
        run.save_metrics()
        out.print(f"time budget of {config.minutes} min spent after step {stop.step}; checkpoint saved; continue "
                  "with the same command and --resume", highlight=False)
        return run.metrics
    run.metrics["finished"] = True
    run.metrics.pop("stopped_at_step", None)
    run.save_metrics()
    return run.metrics


# --- CLI -------------------------------------------------------------------------------------------------


def config_from_args(args: argparse.Namespace) -> CoeffsConfig:
    return CoeffsConfig(out=str(args.out), data=[str(p) for p in args.data or []],
                        livelink=[str(p) for p in args.livelink or []], init=args.init, steps=args.steps,
                        batch=args.batch, lr=args.lr, crop_seconds=args.crop_seconds, minutes=args.minutes,
                        save_every=args.save_every, eval_every=args.eval_every, seed=args.seed,
                        threads=args.threads, resume=args.resume)


def run_coeffs(host: Any, args: argparse.Namespace) -> int:
    """Runs ``anchorcast train coeffs``; 130 when interrupted (the checkpoint is saved)."""
    del host
    console = Console(stderr=True)
    config = config_from_args(args)
    for folder in config.data + config.livelink:
        if not Path(folder).is_dir():
            raise InputError(f"data folder {folder} not found",
                             hint="make a teacher set with `anchorcast train coeffs-data --out FOLDER`")
    started = time.perf_counter()
    try:
        metrics = train_coeffs(config, console)
    except TrainingInterrupted as stop:
        console.print(f"[yellow]interrupted[/] after step {stop.step}; checkpoint saved in {config.out}; "
                      "continue with the same command and --resume", highlight=False)
        return 130
    table = Table(title=f"coefficient model run {config.out}", header_style="bold")
    for column in ("step", "eval loss", "held-out mouth L1"):
        table.add_column(column, justify="right")
    for entry in metrics.get("evals", [])[-5:]:
        table.add_row(str(entry["step"]), f"{entry.get('eval_loss', float('nan')):.4f}",
                      f"{entry.get('eval_mouth_l1', float('nan')):.4f}")
    console.print(table)
    console.print(f"weights: {Path(config.out) / 'coeffs.safetensors'}; {metrics.get('seconds_per_step', 0):.2f} "
                  f"s/step; took {time.perf_counter() - started:.0f} s", highlight=False)
    return 0

