"""The generator's training step: its loss terms against the lip-sync expert (and, for ``gan``, the
visual-quality discriminator), the optimisers and the held-out evaluation (see :mod:`.generator` for the loss)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.training.common import evaluation, mixed_precision, set_seeds
from anchorcast_plugins.engines.wav2lip.training.losses import (
    ExpertFeatures,
    frames_to_windows,
    mouth_jitter,
    mouth_l1,
    mouth_motion,
    ms_ssim,
)
from anchorcast_plugins.engines.wav2lip.training.windows import WindowBatch, WindowSampler

EPS = 1e-7


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


def sync_similarity(expert: nn.Module, sync_mels: torch.Tensor, generated: torch.Tensor,
                    bf16: bool = False) -> torch.Tensor:
    """The expert's cosine similarity (B,) of generated five-frame windows (B,3,5,96,96) with their audio; with
    ``bf16`` the expert runs under autocast, the similarity is float32."""
    with mixed_precision(str(generated.device), bf16):
        audio, video = expert(sync_mels, frames_to_windows(generated))
    return (audio.float() * video.float()).sum(dim=1)


def sync_loss(expert: nn.Module, sync_mels: torch.Tensor, generated: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """The expert's BCE against "in sync" for generated five-frame windows (B,3,5,96,96) (computed in float32:
    CUDA's autocast refuses BCE)."""
    similarity = sync_similarity(expert, sync_mels, generated, bf16).clamp(EPS, 1 - EPS)
    return F.binary_cross_entropy(similarity, torch.ones_like(similarity))


TRAINABLE_PARTS = ("all", "face_encoder")


class GeneratorTrainer:
    """The generator (optionally with the discriminator), the frozen expert and their optimisers.

    ``judge`` is the module the training sync term uses: the frozen expert, or with ``--alternate`` the sync
    discriminator trained alongside (:mod:`.alternate`). The perceptual term and every held-out figure
    (``eval_sync``, ``eval_sync_similarity``) stay with the frozen original expert, so runs compare.

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
        self.judge: nn.Module | None = expert
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
        judge = self.judge if self.judge is not None else self.expert
        if with_sync_grad:
            values["sync"] = sync_loss(judge, sync_mels, generated, self.bf16)
        else:
            with torch.no_grad():
                values["sync"] = sync_loss(judge, sync_mels, generated, self.bf16)
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
        """Held-out losses and mouth-box L1 of the output and of the unchanged input, both against the real frames.

        ``eval_sync`` and ``eval_sync_similarity`` (the mean cosine similarity of output and audio) are the frozen
        original expert's; where the sync term uses another judge (``--alternate``) its loss is ``eval_sync_disc``."""
        generated = self.predict(batch)
        _, _, sync_mels, targets = self.tensors(batch)
        judge, self.judge = self.judge, self.expert
        try:
            with torch.no_grad():
                parts = self.losses(generated, targets, sync_mels, with_sync_grad=False)
        finally:
            self.judge = judge
        # the adversarial term has no held-out value: leave it out, so eval_loss compares across stages
        loss = self.combined(parts, replace(weights, disc=0.0), sync_on)
        frames, real = generated.cpu().transpose(1, 2), targets.cpu().transpose(1, 2)
        unchanged = torch.from_numpy(batch.references).transpose(1, 2)
        result = {
            "eval_loss": round(float(loss), 5),
            **{f"eval_{k}": round(float(v), 5) for k, v in parts.items()},
            "mouth_l1": round(mouth_l1(frames, real), 5),
            "input_mouth_l1": round(mouth_l1(unchanged, real), 5),
            "samples": len(batch),
        }
        if self.expert is not None:
            with torch.no_grad():
                similarity = sync_similarity(self.expert, sync_mels, generated, self.bf16)
                result["eval_sync_similarity"] = round(float(similarity.mean()), 5)
                if self.judge is not None and self.judge is not self.expert:
                    result["eval_sync_disc"] = round(float(sync_loss(self.judge, sync_mels, generated, self.bf16)), 5)
        return result

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

