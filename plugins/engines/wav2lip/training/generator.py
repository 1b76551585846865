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
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from rich.console import Console
from rich.table import Table
from torch import nn
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
    Clip,
    Dataset,
    last_start_by_mel,
    mel_start,
)
from anchorcast_plugins.engines.wav2lip.training.losses import (
    ExpertFeatures,
    frames_to_windows,
    mouth_jitter,
    mouth_l1,
    mouth_motion,
    ms_ssim,
)

EPS = 1e-7
CENTRE_OFFSET = 1
"""Frame ``i``'s own mel window starts at frame ``i - 1``: the reference training numbers frames from 1 there
(``get_frame_id(f) + 1``) and crops at ``i - 2``."""


@dataclass(frozen=True)
class LossWeights:
    """``a1`` sync, ``a2`` perceptual, ``a3`` MS-SSIM, ``disc`` adversarial; L1 takes what is left."""

    sync: float = 0.01
    perceptual: float = 0.05
    msssim: float = 0.15
    disc: float = 0.0

    def check(self) -> None:
        for name, value in asdict(self).items():
            if not 0 <= value < 1:
                raise InputError(f"--{name}-weight must be in [0, 1), got {value}")
        if self.sync + self.perceptual + self.msssim + self.disc >= 1:
            raise InputError("the sync, perceptual, MS-SSIM (and discriminator) weights must add up to less than 1 "
                             "so that L1 keeps a positive weight",
                             hint=f"they add up to {self.sync + self.perceptual + self.msssim + self.disc:.3f}")

    def l1(self, sync_on: bool) -> float:
        return 1.0 - (self.sync if sync_on else 0.0) - self.perceptual - self.msssim - self.disc


# --- sampling ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowBatch:
    """A generator batch (see the module docstring): ``faces`` (B,6,5,96,96), ``mels`` (B,5,1,80,16),
    ``sync_mels`` (B,1,80,16), ``targets`` (B,3,5,96,96), float32 in [0, 1] (mels normalised);
    ``windows`` the (clip index, t, reference start) of each sample."""

    faces: npt.NDArray[np.float32]
    mels: npt.NDArray[np.float32]
    sync_mels: npt.NDArray[np.float32]
    targets: npt.NDArray[np.float32]
    windows: npt.NDArray[np.int64]

    @property
    def references(self) -> npt.NDArray[np.float32]:
        """The unmasked reference frames (B,3,5,96,96): the unchanged input."""
        return self.faces[:, 3:]

    def __len__(self) -> int:
        return len(self.faces)


def window_starts(clip: Clip) -> range:
    """The starts ``t`` whose five frames, own mel windows and sync window all lie inside ``clip``."""
    last_by_mel = last_start_by_mel(clip.mel.shape[1])
    # frame t + 4's own window starts at t + 4 - CENTRE_OFFSET and must end inside the mel, as must the sync window
    return range(CENTRE_OFFSET, min(clip.frames - SYNC_FRAMES, last_by_mel - (SYNC_FRAMES - 1 - CENTRE_OFFSET),
                                    last_by_mel) + 1)


def frames_chw(frames: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """(T,96,96,3) uint8 BGR -> (3,T,96,96) float32 in [0, 1]."""
    return np.ascontiguousarray(np.asarray(frames, np.float32).transpose(3, 0, 1, 2) / 255.0)


class WindowSampler:
    """Draws generator samples from a data set's clips; each reference window is another start of the same clip
    (the reference's "wrong window")."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.clips = dataset.clips
        rows = [(index, t) for index, clip in enumerate(self.clips) for t in window_starts(clip)]
        self.windows = np.array(rows, np.int64).reshape(-1, 2)
        if len(self.windows) == 0:
            raise InputError(f"no clip in {dataset.folder} is long enough for the generator (a clip needs at least "
                             f"{SYNC_FRAMES + 2 * CENTRE_OFFSET + 1} frames)")

    def batch(self, rows: npt.NDArray[np.int64], rng: np.random.Generator,
              reference: Callable[[int], int] | None = None) -> WindowBatch:
        """The samples of ``rows`` (clip index, t); the reference start of row ``k`` is ``reference(k)``, or drawn
        from the clip's other starts."""
        count = len(rows)
        faces = np.empty((count, 6, SYNC_FRAMES, 96, 96), np.float32)
        mels = np.empty((count, SYNC_FRAMES, 1, 80, MEL_STEP), np.float32)
        sync_mels = np.empty((count, 1, 80, MEL_STEP), np.float32)
        targets = np.empty((count, 3, SYNC_FRAMES, 96, 96), np.float32)
        chosen = np.empty((count, 3), np.int64)
        for k, (index, t) in enumerate(rows):
            clip = self.clips[int(index)]
            starts = window_starts(clip)
            if reference is not None:
                u = int(reference(k))
            else:
                others = [s for s in starts if s != t] or [int(t)]
                u = int(others[rng.integers(len(others))])
            targets[k] = frames_chw(clip.faces[t : t + SYNC_FRAMES])
            faces[k, :3] = targets[k]
            faces[k, :3, :, 48:] = 0.0
            faces[k, 3:] = frames_chw(clip.faces[u : u + SYNC_FRAMES])
            for i in range(SYNC_FRAMES):
                start = mel_start(int(t) + i - CENTRE_OFFSET)
                mels[k, i, 0] = clip.mel[:, start : start + MEL_STEP]
            sync_mels[k, 0] = clip.mel[:, mel_start(int(t)) : mel_start(int(t)) + MEL_STEP]
            chosen[k] = (index, t, u)
        return WindowBatch(faces, mels, sync_mels, targets, chosen)

    def sample(self, rng: np.random.Generator, count: int) -> WindowBatch:
        return self.batch(self.windows[rng.integers(len(self.windows), size=count)], rng)

    def sequence(self, index: int) -> WindowBatch | None:
        """Consecutive, non-overlapping windows covering clip ``index`` in order (for the mouth jitter), each with
        the window half the clip away as its reference; None when the clip has too few starts for that reference
        to stay clear of the frames."""
        starts = [int(row[1]) for row in self.windows if row[0] == index]
        if len(starts) < 2 * SYNC_FRAMES:
            return None
        rows = np.array([(index, t) for t in starts[::SYNC_FRAMES]], np.int64)
        half = len(starts) // 2
        return self.batch(rows, np.random.default_rng(0),
                          reference=lambda k: starts[(k * SYNC_FRAMES + half) % len(starts)])

    def fixed(self, seed: int, count: int) -> WindowBatch:
        """A reproducible set of up to ``count`` distinct windows spread over the data (for evaluation)."""
        rng = np.random.default_rng(seed)
        chosen = rng.permutation(len(self.windows))[: min(count, len(self.windows))]
        return self.batch(self.windows[np.sort(chosen)], rng)


# --- the models' training step ----------------------------------------------------------------------------


def load_expert(name_or_path: str, device: str) -> nn.Module:
    """The frozen lip-sync expert (a store name or a weights file of kind syncnet), in eval mode."""
    from anchorcast_plugins.engines.wav2lip.checkpoints import build_model
    from anchorcast_plugins.engines.wav2lip.weights_store import resolve_weights

    loaded = resolve_weights(name_or_path, expected_kind="syncnet")
    expert = build_model("syncnet", loaded.state_dict).to(device).eval()
    for parameter in expert.parameters():
        parameter.requires_grad_(False)
    return expert


def load_generator_weights(model: nn.Module, name_or_path: str) -> None:
    from anchorcast_plugins.engines.wav2lip.weights_store import resolve_weights

    loaded = resolve_weights(name_or_path, expected_kind="generator")
    model.load_state_dict(loaded.state_dict, strict=True)


def sync_loss(expert: nn.Module, sync_mels: torch.Tensor, generated: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """The expert's BCE against "in sync" for generated five-frame windows (B,3,5,96,96); with ``bf16`` the
    expert runs under autocast and the loss in float32 (CUDA's autocast refuses BCE)."""
    with mixed_precision(str(generated.device), bf16):
        audio, video = expert(sync_mels, frames_to_windows(generated))
    similarity = (audio.float() * video.float()).sum(dim=1).clamp(EPS, 1 - EPS)
    return F.binary_cross_entropy(similarity, torch.ones_like(similarity))


TRAINABLE_PARTS = ("all", "face_encoder")


class GeneratorTrainer:
    """The generator (optionally with the discriminator), the frozen expert and their optimisers.

    Without an expert (``expert=None``: fine-tuning with no expert at hand) the sync and perceptual terms are left
    out, so their weights must be 0.

    ``trainable="face_encoder"`` freezes the audio encoder and the face decoder (their BatchNorm statistics
    included) and optimises only the face (identity) encoder: the fine-tuning stage."""

    def __init__(self, expert: nn.Module | None, device: str = "cpu", *, lr: float = 1e-4, seed: int = 0,
                 trainable: str = "all", discriminator: bool = False, betas: tuple[float, float] = (0.9, 0.999),
                 init: str | None = None, bf16: bool = False) -> None:
        from anchorcast_plugins.engines.wav2lip.models import Wav2Lip, Wav2LipDiscriminator

        if trainable not in TRAINABLE_PARTS:
            raise ValueError(f"trainable must be one of {TRAINABLE_PARTS}")
        set_seeds(seed)
        self.device = device
        self.model = Wav2Lip()
        if init is not None:
            load_generator_weights(self.model, init)
        self.model.to(device)
        self.expert = expert
        if expert is not None:
            expert.eval()
            for parameter in expert.parameters():
                parameter.requires_grad_(False)
        self.perceptual = ExpertFeatures(expert) if expert is not None else None
        self.trainable = trainable
        self.bf16 = bf16
        if trainable == "face_encoder":
            for name, parameter in self.model.named_parameters():
                parameter.requires_grad_(name.startswith("face_encoder_blocks."))
        parameters = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.Adam(parameters, lr=lr, betas=betas)
        self.discriminator: nn.Module | None = None
        self.disc_optimizer: torch.optim.Optimizer | None = None
        if discriminator:
            self.discriminator = Wav2LipDiscriminator().to(device)
            self.disc_optimizer = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=betas)

    def train_mode(self) -> None:
        self.model.train()
        if self.trainable == "face_encoder":
            for module in (self.model.audio_encoder, self.model.face_decoder_blocks, self.model.output_block):
                module.eval()
        if self.discriminator is not None:
            self.discriminator.train()

    def tensors(self, batch: WindowBatch) -> tuple[torch.Tensor, ...]:
        device = self.device
        return (torch.as_tensor(batch.mels, device=device), torch.as_tensor(batch.faces, device=device),
                torch.as_tensor(batch.sync_mels, device=device), torch.as_tensor(batch.targets, device=device))

    def losses(self, generated: torch.Tensor, targets: torch.Tensor, sync_mels: torch.Tensor,
               with_sync_grad: bool) -> dict[str, torch.Tensor]:
        generated = generated.float()
        frames, real = generated.transpose(1, 2), targets.transpose(1, 2)  # (B,T,3,H,W)
        values = {"l1": F.l1_loss(generated, targets), "msssim": 1.0 - ms_ssim(frames, real)}
        if self.expert is None or self.perceptual is None:
            return values
        with mixed_precision(self.device, self.bf16):
            values["perceptual"] = self.perceptual(generated, targets).float()
        if with_sync_grad:
            values["sync"] = sync_loss(self.expert, sync_mels, generated, self.bf16)
        else:
            with torch.no_grad():
                values["sync"] = sync_loss(self.expert, sync_mels, generated, self.bf16)
        return values

    def combined(self, parts: Mapping[str, torch.Tensor], weights: LossWeights, sync_on: bool) -> torch.Tensor:
        """The weighted sum of the terms in ``parts`` (the module docstring's formula)."""
        loss = weights.l1(sync_on) * parts["l1"] + weights.msssim * parts["msssim"]
        if "perceptual" in parts:
            loss = loss + weights.perceptual * parts["perceptual"]
        if sync_on and "sync" in parts:
            loss = loss + weights.sync * parts["sync"]
        if "adversarial" in parts:
            loss = loss + weights.disc * parts["adversarial"]
        return loss

    def step(self, batch: WindowBatch, weights: LossWeights, sync_on: bool) -> dict[str, float]:
        """One optimiser step (and, with the discriminator, one discriminator step); returns the losses."""
        self.train_mode()
        mels, faces, sync_mels, targets = self.tensors(batch)
        with mixed_precision(self.device, self.bf16):
            generated = self.model(mels, faces).float()
        parts = self.losses(generated, targets, sync_mels, with_sync_grad=sync_on and weights.sync > 0)
        if self.discriminator is not None:
            with mixed_precision(self.device, self.bf16):
                fake = self.discriminator(generated).float()
            # BCE outside autocast (CUDA's autocast refuses it)
            parts["adversarial"] = F.binary_cross_entropy(fake.clamp(EPS, 1 - EPS), torch.ones_like(fake))
        loss = self.combined(parts, weights, sync_on)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        values = {"loss": float(loss.detach()), **{k: float(v.detach()) for k, v in parts.items()}}
        if self.discriminator is not None and self.disc_optimizer is not None:
            with mixed_precision(self.device, self.bf16):
                real = self.discriminator(targets).float()
                fake = self.discriminator(generated.detach()).float()
            disc_loss = (F.binary_cross_entropy(real.clamp(EPS, 1 - EPS), torch.ones_like(real))
                         + F.binary_cross_entropy(fake.clamp(EPS, 1 - EPS), torch.zeros_like(fake)))
            self.disc_optimizer.zero_grad(set_to_none=True)
            disc_loss.backward()
            self.disc_optimizer.step()
            values["disc_loss"] = float(disc_loss.detach())
            values["disc_real"] = float(real.detach().mean())
            values["disc_fake"] = float(fake.detach().mean())
        return values

    def predict(self, batch: WindowBatch, chunk: int = 8) -> torch.Tensor:
        """The generator's output (B,3,5,96,96) in eval mode, on the training device."""
        outputs = []
        with evaluation(self.model):
            for start in range(0, len(batch), chunk):
                mels = torch.as_tensor(batch.mels[start : start + chunk], device=self.device)
                faces = torch.as_tensor(batch.faces[start : start + chunk], device=self.device)
                with mixed_precision(self.device, self.bf16):
                    outputs.append(self.model(mels, faces).float())
        return torch.cat(outputs)

    def evaluate(self, batch: WindowBatch, weights: LossWeights, sync_on: bool) -> dict[str, float]:
        """Held-out losses and mouth-box L1 of the output and of the unchanged input, both against the real frames."""
        generated = self.predict(batch)
        _, _, sync_mels, targets = self.tensors(batch)
        with torch.no_grad():
            parts = self.losses(generated, targets, sync_mels, with_sync_grad=False)
        # the adversarial term has no held-out value: leave it out, so eval_loss compares across stages
        loss = self.combined(parts, replace(weights, disc=0.0), sync_on)
        frames, real = generated.cpu().transpose(1, 2), targets.cpu().transpose(1, 2)
        unchanged = torch.from_numpy(batch.references).transpose(1, 2)
        return {
            "eval_loss": round(float(loss), 5),
            **{f"eval_{k}": round(float(v), 5) for k, v in parts.items()},
            "mouth_l1": round(mouth_l1(frames, real), 5),
            "input_mouth_l1": round(mouth_l1(unchanged, real), 5),
            "samples": len(batch),
        }


    def jitter(self, heldout: WindowSampler) -> dict[str, float]:
        """Mouth jitter over whole held-out clips (see :func:`~.losses.mouth_jitter`), averaged over clips, and
        the real video's own frame-to-frame mouth motion for scale. Clips too short for a reference window that
        does not overlap the frames are skipped."""
        jitters, motions = [], []
        for index in range(len(heldout.clips)):
            batch = heldout.sequence(index)
            if batch is None:
                continue
            output = self.predict(batch).cpu()
            frames = output.permute(0, 2, 1, 3, 4).reshape(-1, 3, 96, 96)  # windows in order, frames in order
            real = torch.from_numpy(batch.targets).permute(0, 2, 1, 3, 4).reshape(-1, 3, 96, 96)
            jitters.append(mouth_jitter(frames, real))
            motions.append(mouth_motion(real))
        if not jitters:
            return {}
        return {"mouth_jitter": round(float(np.mean(jitters)), 5),
                "real_mouth_motion": round(float(np.mean(motions)), 5)}


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
        for name in ("steps", "batch", "eval_every", "eval_windows", "save_every"):
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
    run.metrics["device"] = description
    run.metrics["data"] = {"folder": str(dataset.folder), "train_clips": len(train_set),
                           "heldout_clips": len(heldout_set)}
    companions = _companions(trainer)
    step, extra = 0, {}
    if config.resume:
        step, extra = run.load_checkpoint(trainer.model, trainer.optimizer, trainer.device, companions)
        run.metrics["steps"] = [s for s in run.metrics["steps"] if s["step"] <= step]
        run.metrics["evals"] = [e for e in run.metrics["evals"] if e["step"] <= step]
        out.print(f"resuming {run.path} after step {step}", highlight=False)
    weights = config.weights
    state = {"sync_on": bool(extra.get("sync_on", False))}
    trained = "the face encoder only" if config.stage == "finetune" else "all of the generator"
    out.print(f"{config.stage} on {description}, training {trained}: {len(train_set)} training clips "
              f"({len(sampler.windows)} windows), {len(heldout_set)} held out ({len(heldout)} eval windows); "
              f"{config.steps} steps, batch {config.batch}; loss weights sync {weights.sync} (from eval sync loss "
              f"< {config.sync_on_below}), perceptual {weights.perceptual}, MS-SSIM {weights.msssim}"
              + (f", adversarial {weights.disc}" if config.stage == "gan" else "")
              + ("" if trainer.expert else " (no --expert: no sync or perceptual term)"), highlight=False)

    def record_eval(number: int) -> dict[str, float]:
        result = trainer.evaluate(heldout, weights, state["sync_on"])
        if config.stage == "finetune":
            result.update(trainer.jitter(heldout_sampler))
        if not state["sync_on"] and weights.sync > 0 and result.get("eval_sync", np.inf) < config.sync_on_below:
            state["sync_on"] = True
            result["sync_switched_on"] = True
        run.record_eval(number, {**result, "sync_on": state["sync_on"]})
        run.save_metrics()
        return result

    if step == 0:
        record_eval(0)

    def one_step(number: int) -> Mapping[str, float]:
        return trainer.step(sampler.sample(step_rng(config.seed, number), config.batch), weights, state["sync_on"])

    def held_out(number: int) -> Mapping[str, float]:
        if number % config.eval_every or number == config.steps:
            return {}
        return {"eval_l1": record_eval(number)["eval_l1"]}

    def save(number: int) -> None:
        run.save_checkpoint(trainer.model, trainer.optimizer, number, {"sync_on": state["sync_on"]}, companions)

    run_steps(run, label=config.stage, first=step + 1, last=config.steps, step=one_step, save=save, console=out,
              save_every=config.save_every, after_step=after_step, evaluate=held_out,
              record_extra=lambda number: {"sync_on": state["sync_on"]})
    last = run.metrics["evals"][-1] if run.metrics["evals"] else None
    final = last if last is not None and last["step"] == config.steps else record_eval(config.steps)
    _finish(run, final)
    return run.metrics


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


def _companions(trainer: GeneratorTrainer) -> dict[str, tuple[nn.Module, torch.optim.Optimizer]]:
    if trainer.discriminator is None or trainer.disc_optimizer is None:
        return {}
    return {"discriminator": (trainer.discriminator, trainer.disc_optimizer)}


def _finish(run: RunFolder, final: Mapping[str, Any]) -> None:
    first = run.metrics["evals"][0] if run.metrics["evals"] else final
    run.metrics["final"] = {k: final[k] for k in ("eval_loss", "eval_l1", "eval_sync", "eval_perceptual",
                                                   "eval_msssim", "mouth_l1", "input_mouth_l1", "mouth_jitter",
                                                   "real_mouth_motion") if k in final}
    run.metrics["initial"] = {k: first[k] for k in run.metrics["final"] if k in first}
    run.metrics["finished"] = True
    run.metrics.pop("interrupted_at_step", None)
    run.save_metrics()


# --- CLI --------------------------------------------------------------------------------------------------


def config_from_args(args: argparse.Namespace, stage: str) -> GeneratorConfig:
    names = GeneratorConfig.__dataclass_fields__
    values = {name: getattr(args, name) for name in names if hasattr(args, name)}
    for name in ("data", "out", "expert", "init", "video"):
        value = getattr(args, name, None)
        values[name] = None if value is None else str(value)
    values["stage"] = stage
    return GeneratorConfig(**values)


def run_generator(host: Any, args: argparse.Namespace, stage: str = "generator") -> int:
    """Runs ``anchorcast train generator|finetune|gan``; 130 when interrupted (the checkpoint is saved)."""
    del host
    console = Console(stderr=True)
    config = config_from_args(args, stage)
    started = time.perf_counter()
    try:
        metrics = train_generator(config, console)
    except (TrainingInterrupted, KeyboardInterrupt):
        console.print(f"[yellow]interrupted[/]; the last checkpoint in {config.out} stands; continue with the same "
                      "command and --resume", highlight=False)
        return 130
    print_summary(console, f"{stage} run {config.out}", metrics)
    files = "generator.safetensors" + (" and discriminator.safetensors" if stage == "gan" else "")
    console.print(f"weights: {files} in {config.out} (use it as a profile's weights, or import it with "
                  f"`anchorcast weights import`); {metrics.get('seconds_per_step', 0):.2f} s/step; took "
                  f"{time.perf_counter() - started:.0f} s", highlight=False)
    return 0


def print_summary(console: Console, title: str, metrics: Mapping[str, Any]) -> None:
    """Initial and final held-out figures of a generator-type run."""
    table = Table(title=title, header_style="bold")
    for column in ("held out", "before", "after"):
        table.add_column(column, justify="left" if column == "held out" else "right")
    initial, final = metrics.get("initial", {}), metrics.get("final", {})
    labels = {"eval_l1": "L1", "eval_sync": "sync loss", "eval_perceptual": "perceptual",
              "eval_msssim": "1 - MS-SSIM", "mouth_l1": "mouth L1", "input_mouth_l1": "mouth L1 of unchanged input",
              "mouth_jitter": "mouth jitter", "real_mouth_motion": "real mouth motion"}
    for key, label in labels.items():
        if key in final:
            before = initial.get(key)
            table.add_row(label, "-" if before is None else f"{before:.4f}", f"{final[key]:.4f}")
    console.print(table)
