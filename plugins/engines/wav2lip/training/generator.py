"""``anchorcast train generator`` and ``anchorcast train gan``: the Wav2Lip generator against the frozen lip-sync
expert, and its refinement with the visual-quality discriminator.

A training sample is a window of five consecutive frames ``t .. t+4`` of one clip (the reference's ``T = 5``):

- face input (6,5,96,96): each target frame with its lower half (rows 48-95) zeroed, and as reference the frames
  of another window of the same clip, unmasked;
- audio (5,1,80,16): frame ``i``'s own mel window, starting at column ``int(80 * (i - 1) / 25)`` (the reference
  training's window, one frame earlier than the engine's ``int(80 * i / 25)`` at inference, as in the reference);
- the expert's mel window for the whole five frames, ``mel[:, int(80 t / 25) : + 16]``, for the sync term;
- target (3,5,96,96): the real frames.

Loss, with weights ``a1`` (``--sync-weight``), ``a2`` (``--perceptual-weight``), ``a3`` (``--msssim-weight``) and,
for ``gan``, ``d`` (``--disc-weight``)::

    a1 * L_sync + a2 * L_perceptual + a3 * L_msssim + d * L_adversarial + (1 - a1 - a2 - a3 - d) * L1

``L_sync`` is the frozen expert's BCE on the generated lower halves (as in sync); following the reference recipe
it is switched on (``a1`` taken as 0 until then) once the held-out sync loss falls below ``--sync-on-below``.
``L_perceptual`` is :class:`~.losses.ExpertFeatures`, ``L_msssim`` is ``1 - MS-SSIM`` and ``L_adversarial`` is
``BCE(D(G), 1)``; the discriminator learns ``BCE(D(real), 1) + BCE(D(G), 0)``. In ``gan`` both use Adam with
betas (0.5, 0.999), as the reference does.

Evaluation on held-out clips reports the losses and the mouth-box L1 of the output against the real frames next
to that of the unchanged input (the reference frames, what would be on air without the generator).

With ``--alternate`` (``generator`` and ``gan``) the sync term's judge is a sync discriminator trained in turn with
the generator (see :mod:`.alternate`); the frozen original expert still gives the perceptual term and the
held-out sync figures.

The samples are :mod:`.windows`'s, the models' step and evaluation :mod:`.generator_trainer`'s, the CLI
:mod:`.generator_cli`'s; this module is the run (config, checkpoints, evaluation schedule, alternation).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from torch import nn

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.training.alternate import AlternatingDiscriminator, Alternation
from anchorcast_plugins.engines.wav2lip.training.common import (
    Companions,
    RunFolder,
    run_steps,
    step_rng,
    training_device,
)
from anchorcast_plugins.engines.wav2lip.training.dataset import Dataset
from anchorcast_plugins.engines.wav2lip.training.generator_trainer import (
    GeneratorTrainer,
    LossWeights,
    load_expert,
    sync_loss,
)
from anchorcast_plugins.engines.wav2lip.training.windows import WindowBatch, WindowSampler

__all__ = ["GeneratorConfig", "GeneratorTrainer", "LossWeights", "WindowBatch", "WindowSampler", "load_expert",
           "sync_loss", "train_generator"]

# --- the run ----------------------------------------------------------------------------------------------


STAGES = ("generator", "finetune", "gan")


@dataclass(frozen=True)
class GeneratorConfig:
    """Everything ``anchorcast train generator|finetune|gan`` take (recorded in ``metrics.json``).

    ``stage`` ``finetune`` prepares ``video`` into ``out/data`` (unless ``data`` is given), trains only the face
    encoder from ``init`` and also reports the mouth jitter on the held-out clips before and after."""

    out: str
    stage: str = "generator"
    data: str | None = None
    expert: str | None = None
    init: str | None = None
    """``--from``: generator weights to start from (required by ``finetune`` and ``gan``)."""
    video: str | None = None
    """``finetune``: the presenter's reading video."""
    clip_seconds: float = 4.0
    """``finetune``: the video is cut into clips of at most this length (whole clips are held out)."""
    steps: int = 300
    batch: int = 4
    lr: float = 1e-4
    sync_weight: float | None = None
    """a1; None: the reference's 0.01, or 0.03 for ``gan``."""
    perceptual_weight: float = 0.05
    msssim_weight: float = 0.15
    disc_weight: float = 0.07
    sync_on_below: float = 0.75
    eval_every: int = 50
    eval_windows: int = 16
    heldout: float = 0.2
    save_every: int = 50
    seed: int = 0
    device: str = "auto"
    bf16: bool = False
    resume: bool = False
    alternate: bool = False
    """``generator`` and ``gan``: train the sync discriminator in turn with the generator (:mod:`.alternate`)."""
    disc_every: int = 1
    """Generator steps per sync-discriminator step."""
    disc_lr: float = 1e-4
    """The sync discriminator's Adam learning rate: the rate ``train syncnet`` trains the expert with, and the
    generator's default (the GAN stage's discriminator also learns at the generator's rate)."""
    disc_floor: float = 0.6
    """Below this held-out accuracy (real pairs) the sync discriminator is reverted and its steps stop."""
    shift_min: int = 5
    """Off-sync audio for the sync discriminator is at least this many frames away (as ``train syncnet``)."""
    eval_pairs: int = 32
    """Held-out real pairs for the sync discriminator's accuracy."""

    @property
    def weights(self) -> LossWeights:
        if self.expert is None:
            return LossWeights(0.0, 0.0, self.msssim_weight, 0.0)
        sync = self.sync_weight if self.sync_weight is not None else (0.03 if self.stage == "gan" else 0.01)
        return LossWeights(sync, self.perceptual_weight, self.msssim_weight,
                           self.disc_weight if self.stage == "gan" else 0.0)

    def check(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}")
        for name in ("steps", "batch", "eval_every", "eval_windows", "save_every", "disc_every", "shift_min",
                     "eval_pairs"):
            if getattr(self, name) < 1:
                raise InputError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.lr < 1:
            raise InputError(f"--lr must be between 0 and 1, got {self.lr}")
        if self.stage != "generator" and not self.init:
            raise InputError(f"train {self.stage} starts from trained generator weights: pass --from WEIGHTS",
                             hint="train them with `anchorcast train generator`, or import public weights")
        if self.stage != "finetune" and not self.expert:
            raise InputError(f"train {self.stage} needs the lip-sync expert: pass --expert WEIGHTS",
                             hint="train one with `anchorcast train syncnet`")
        if self.stage == "finetune" and self.clip_seconds < 1:
            raise InputError(f"--clip-seconds must be at least 1, got {self.clip_seconds}")
        if self.stage == "finetune" and not (self.video or self.data):
            raise InputError("train finetune needs the presenter's reading video: pass --video PRESENTER.mp4")
        if self.stage != "finetune" and not self.data:
            raise InputError(f"train {self.stage} needs a data set: pass --data DATASET")
        self.weights.check()
        if self.alternate:
            if self.stage == "finetune":
                raise InputError("--alternate is for train generator and train gan",
                                 hint="fine-tuning trains only the face encoder against the frozen expert")
            if not 0 < self.disc_lr < 1:
                raise InputError(f"--disc-lr must be between 0 and 1, got {self.disc_lr}")
            if not 0 <= self.disc_floor < 1:
                raise InputError(f"--disc-floor must be in [0, 1), got {self.disc_floor}")


StepCallback = Callable[[int, Mapping[str, float]], None]


def train_generator(config: GeneratorConfig, console: Console | None = None,
                    after_step: StepCallback | None = None) -> dict[str, Any]:
    """Runs (or with ``config.resume`` continues) a generator, fine-tuning or GAN run; returns the final metrics.

    Everything given is checked before the run folder is made; a folder made by this call is removed again if the
    run fails before its first checkpoint. Raises :class:`TrainingInterrupted` after saving when interrupted."""
    config.check()
    out = console or Console(stderr=True)
    device, description = training_device(config.device, config.bf16)
    expert = load_expert(config.expert, device) if config.expert else None
    dataset = Dataset.load(config.data) if config.data else None
    if dataset is None and config.video and not Path(config.video).expanduser().is_file():
        raise InputError(f"--video {config.video}: no such file")
    trainer = GeneratorTrainer(expert, device, lr=config.lr, seed=config.seed,
                               trainable="face_encoder" if config.stage == "finetune" else "all",
                               discriminator=config.stage == "gan",
                               betas=(0.5, 0.999) if config.stage == "gan" else (0.9, 0.999),
                               init=config.init, bf16=config.bf16)
    folder = Path(config.out).expanduser()
    made_here = not folder.exists()
    try:
        return _train(config, trainer, dataset, description, out, after_step)
    except BaseException:
        if made_here and folder.is_dir() and not RunFolder(folder, "generator").has_checkpoint:
            shutil.rmtree(folder, ignore_errors=True)
        raise


def _train(config: GeneratorConfig, trainer: GeneratorTrainer, dataset: Dataset | None, description: str,
           out: Console, after_step: StepCallback | None) -> dict[str, Any]:
    run = RunFolder.open(config.out, "generator", config.stage, asdict(config), resume=config.resume)
    if dataset is None:
        dataset = _prepared_video(config, run, out)
    train_set, heldout_set = dataset.split(config.heldout, seed=config.seed)
    if len(heldout_set) == 0:
        hint = ("use a longer video or a shorter --clip-seconds" if config.stage == "finetune"
                else "add clips, e.g. `anchorcast train synth --clips 12`")
        raise InputError(f"data set {dataset.folder} has {len(dataset)} clip(s): evaluation needs at least two "
                         "(one is held out)", hint=hint)
    sampler = WindowSampler(train_set)
    heldout_sampler = WindowSampler(heldout_set)
    heldout = heldout_sampler.fixed(config.seed + 1, config.eval_windows)
    disc = (AlternatingDiscriminator(trainer, train_set, heldout_set, lr=config.disc_lr, shift_min=config.shift_min,
                                     eval_pairs=config.eval_pairs, seed=config.seed) if config.alternate else None)
    run.metrics["device"] = description
    run.metrics["data"] = {"folder": str(dataset.folder), "train_clips": len(train_set),
                           "heldout_clips": len(heldout_set)}
    companions = _companions(trainer, disc)
    step, extra = 0, {}
    if config.resume:
        step, extra = run.load_checkpoint(trainer.model, trainer.optimizer, trainer.device, companions)
        if bool(extra.get("alternate", False)) != config.alternate:
            raise InputError(f"--resume: {run.path} was " + ("" if extra.get("alternate") else "not ")
                             + "trained with --alternate", hint="resume it with the options it was started with")
        run.metrics["steps"] = [s for s in run.metrics["steps"] if s["step"] <= step]
        run.metrics["evals"] = [e for e in run.metrics["evals"] if e["step"] <= step]
        out.print(f"resuming {run.path} after step {step}", highlight=False)
    weights = config.weights
    state = {"sync_on": bool(extra.get("sync_on", False))}
    alternation = Alternation.restored(extra.get("alternation"))
    if disc is not None and alternation.active:
        trainer.judge = disc.disc.model
    trained = "the face encoder only" if config.stage == "finetune" else "all of the generator"
    out.print(f"{config.stage} on {description}, training {trained}: {len(train_set)} training clips "
              f"({len(sampler.windows)} windows), {len(heldout_set)} held out ({len(heldout)} eval windows); "
              f"{config.steps} steps, batch {config.batch}; loss weights sync {weights.sync} (from eval sync loss "
              f"< {config.sync_on_below}), perceptual {weights.perceptual}, MS-SSIM {weights.msssim}"
              + (f", adversarial {weights.disc}" if config.stage == "gan" else "")
              + ("" if trainer.expert else " (no --expert: no sync or perceptual term)"), highlight=False)
    if disc is not None:
        out.print(f"alternating: a sync-discriminator step (lr {config.disc_lr}) after every {config.disc_every} "
                  f"generator step(s) once the sync term is on; reverted and stopped below held-out accuracy "
                  f"{config.disc_floor}", highlight=False)

    def record_eval(number: int) -> dict[str, Any]:
        result: dict[str, Any] = dict(trainer.evaluate(heldout, weights, state["sync_on"]))
        if config.stage == "finetune":
            result.update(trainer.jitter(heldout_sampler))
        if disc is not None:
            result.update(disc.accuracy())
            _guard(config, disc, alternation, number, result, out)
            run.metrics["alternation"] = alternation.saved()
        if not state["sync_on"] and weights.sync > 0 and result.get("eval_sync", np.inf) < config.sync_on_below:
            state["sync_on"] = True
            result["sync_switched_on"] = True
            if disc is not None:
                alternation.since = number + 1
                trainer.judge = disc.disc.model
                run.metrics["alternation"] = alternation.saved()
        run.record_eval(number, {**result, "sync_on": state["sync_on"]})
        run.save_metrics()
        return result

    if step == 0:
        first_eval = record_eval(0)
        if disc is not None and first_eval["disc_accuracy"] < config.disc_floor:
            out.print(f"[yellow]note[/]: the expert's own held-out accuracy {first_eval['disc_accuracy']:.3f} is "
                      f"below --disc-floor {config.disc_floor}: the sync discriminator will be reverted at the "
                      "first evaluation after its steps unless it improves (train the expert longer, or pass a "
                      "lower --disc-floor; 0.5 is chance)", highlight=False)

    def one_step(number: int) -> Mapping[str, float]:
        values = dict(trainer.step(sampler.sample(step_rng(config.seed, number), config.batch), weights,
                                   state["sync_on"]))
        if disc is not None and alternation.due(number, config.disc_every):
            values.update(disc.step(number, config.batch))
            alternation.disc_steps += 1
        return values

    def held_out(number: int) -> Mapping[str, float]:
        if number % config.eval_every or number == config.steps:
            return {}
        return {"eval_l1": record_eval(number)["eval_l1"]}

    def save(number: int) -> None:
        run.save_checkpoint(trainer.model, trainer.optimizer, number,
                            {"sync_on": state["sync_on"], "alternate": config.alternate,
                             "alternation": alternation.saved()}, companions)

    def record_extra(number: int) -> dict[str, Any]:
        if disc is None:
            return {"sync_on": state["sync_on"]}
        return {"sync_on": state["sync_on"], "disc_steps": alternation.disc_steps}

    run_steps(run, label=config.stage, first=step + 1, last=config.steps, step=one_step, save=save, console=out,
              save_every=config.save_every, after_step=after_step, evaluate=held_out, record_extra=record_extra)
    last = run.metrics["evals"][-1] if run.metrics["evals"] else None
    final = last if last is not None and last["step"] == config.steps else record_eval(config.steps)
    if disc is not None:
        save(config.steps)  # the final evaluation may have reverted the discriminator: the files say so
    _finish(run, final)
    return run.metrics


def _guard(config: GeneratorConfig, disc: AlternatingDiscriminator, alternation: Alternation, number: int,
           result: dict[str, Any], out: Console) -> None:
    """Reverts the sync discriminator to the expert and stops its steps when its held-out accuracy has fallen
    below the floor after it was trained."""
    if alternation.disc_steps == 0 or alternation.paused_at is not None:
        return
    if result["disc_accuracy"] >= config.disc_floor:
        return
    alternation.paused_at, alternation.paused_accuracy = number, float(result["disc_accuracy"])
    disc.disc.revert()
    result["disc_reverted"] = True
    out.print(f"[yellow]sync discriminator collapsed[/] at step {number}: held-out accuracy "
              f"{result['disc_accuracy']:.3f} < --disc-floor {config.disc_floor} after {alternation.disc_steps} "
              "steps; reverted to the original expert, its steps stop for the rest of the run", highlight=False)


def _prepared_video(config: GeneratorConfig, run: RunFolder, out: Console) -> Dataset:
    """``finetune``: the presenter video prepared into ``RUN/data``; a resumed run reuses what it trained on."""
    from anchorcast_plugins.engines.wav2lip.training.prepare import prepare_dataset

    folder = run.path / "data"
    if config.resume and (folder / "dataset.json").is_file():
        return Dataset.load(folder)
    assert config.video is not None
    video = Path(config.video).expanduser()
    out.print(f"preparing {video} (faces cropped, clips of at most {config.clip_seconds:g} s)", highlight=False)
    report = prepare_dataset([video], folder, speaker="presenter", max_seconds=config.clip_seconds)
    for source, reason in report.dropped:
        out.print(f"  dropped from {source}: {reason}", highlight=False)
    run.metrics["prepared"] = {"video": str(video), "clip_seconds": config.clip_seconds,
                               "clips": len(report.dataset), "seconds": round(report.dataset.frames / 25, 2),
                               "dropped": report.dropped}
    return report.dataset


def _companions(trainer: GeneratorTrainer, disc: AlternatingDiscriminator | None) -> Companions:
    models: dict[str, tuple[nn.Module, torch.optim.Optimizer]] = {}
    if trainer.discriminator is not None and trainer.disc_optimizer is not None:
        models["discriminator"] = (trainer.discriminator, trainer.disc_optimizer)
    if disc is not None:
        models["syncnet"] = (disc.disc.model, disc.disc.optimizer)
    return models


def _finish(run: RunFolder, final: Mapping[str, Any]) -> None:
    first = run.metrics["evals"][0] if run.metrics["evals"] else final
    run.metrics["final"] = {k: final[k] for k in ("eval_loss", "eval_l1", "eval_sync", "eval_perceptual",
                                                   "eval_msssim", "eval_sync_similarity", "eval_sync_disc",
                                                   "disc_accuracy", "disc_pair_accuracy", "mouth_l1",
                                                   "input_mouth_l1", "mouth_jitter", "real_mouth_motion") if k in final}
    run.metrics["initial"] = {k: first[k] for k in run.metrics["final"] if k in first}
    run.metrics["finished"] = True
    run.metrics.pop("interrupted_at_step", None)
    run.save_metrics()
