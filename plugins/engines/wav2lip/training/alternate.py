"""``--alternate`` on ``train generator`` and ``train gan``: the generator and the sync discriminator trained in
turn, so the discriminator keeps up with what the generator now makes.

Once the sync term is on (``--sync-on-below``), every training step is a generator step with the sync
discriminator frozen (its sync loss is the generator's ``L_sync``), and after every ``--disc-every``-th generator
step comes one sync-discriminator step with the generator frozen (eval mode, no gradient). ``--steps`` counts
generator steps; a step's record holds its discriminator step's figures (``sync_disc_*``) when it had one.

The sync discriminator starts as a copy of the expert and is trained like ``train syncnet`` (BCE on the cosine
similarity, Adam at ``--disc-lr``) on a batch of ``--batch`` face windows of each kind:

- real windows with their own audio, labelled in sync (1), and the same windows with audio at least
  ``--shift-min`` frames away, labelled off sync (0), as ``train syncnet`` draws them;
- the generator's output (the generated lower halves) with audio at least ``--shift-min`` frames away from the
  audio it was generated for, labelled off sync (0).

Why these labels: generated frames with shifted audio are off sync whatever the generator does, so the label is
true, and it makes the discriminator judge sync on the generator's own pictures (their textures and artefacts),
not only on real ones. Generated frames with their own audio are left out: labelled in sync they would teach the
discriminator that whatever the generator makes is in sync (the two collude and the sync loss falls without the
lips improving); labelled off sync they would teach it "generated means off sync", a realness test that the
visual-quality discriminator already is and that says nothing about the lips. In-sync and off-sync weigh equally
(as in ``train syncnet``'s 50/50 batches): ``loss = (BCE(real in sync, 1) + BCE(all off sync, 0)) / 2``, the
off-sync half made of real and generated windows in equal numbers.

The trained discriminator drifts from the expert, so the frozen original expert is kept apart: the perceptual
term and every held-out sync figure use it, so an alternating run and a frozen one compare. At every evaluation
the discriminator's held-out accuracy is measured on real pairs of the held-out clips (``train syncnet``'s
``accuracy``, threshold chosen on training pairs); if, after discriminator steps, it falls below
``--disc-floor`` the discriminator is reverted to the original expert and its steps stop for the rest of the run
(the run goes on as a frozen-expert run, and says so in ``metrics.json``'s ``alternation``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.training.dataset import MEL_STEP, Dataset, mel_start
from anchorcast_plugins.engines.wav2lip.training.generator_trainer import GeneratorTrainer
from anchorcast_plugins.engines.wav2lip.training.losses import frames_to_windows
from anchorcast_plugins.engines.wav2lip.training.syncnet import (
    PairBatch,
    PairSampler,
    SyncNetTrainer,
    evaluate,
    sync_bce,
)
from anchorcast_plugins.engines.wav2lip.training.windows import WindowBatch, WindowSampler


@dataclass
class Alternation:
    """Where the alternation stands (saved in every checkpoint, so a resumed run continues it exactly)."""

    since: int | None = None
    """The first generator step of the alternation (the step after the sync term came on); None before."""
    disc_steps: int = 0
    paused_at: int | None = None
    """The evaluation step at which the discriminator's held-out accuracy fell below the floor; None while not."""
    paused_accuracy: float | None = None

    def due(self, step: int, every: int) -> bool:
        """Whether generator step ``step`` is followed by a discriminator step."""
        return (self.since is not None and self.paused_at is None and step >= self.since
                and (step - self.since + 1) % every == 0)

    @property
    def active(self) -> bool:
        return self.since is not None and self.paused_at is None

    def saved(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def restored(cls, saved: Mapping[str, Any] | None) -> Alternation:
        return cls(**dict(saved)) if saved else cls()


class ShiftedWindows:
    """Generator windows of a data set, each with the expert's audio window of a start at least ``shift_min``
    frames away in the same clip (the generated half of the discriminator's off-sync samples)."""

    def __init__(self, dataset: Dataset, shift_min: int) -> None:
        self.sampler = WindowSampler(dataset)
        self.shift_min = shift_min
        keep = [k for k, (index, t) in enumerate(self.sampler.windows) if len(self.far(int(index), int(t)))]
        self.windows = self.sampler.windows[keep]
        if len(self.windows) == 0:
            raise InputError(f"no clip in {dataset.folder} is long enough for --alternate's shifted audio (a clip "
                             f"needs audio at least --shift-min {shift_min} frames away from a window)",
                             hint="lower --shift-min, or use longer clips")

    def far(self, index: int, t: int) -> npt.NDArray[np.int64]:
        starts = np.arange(self.sampler.clips[index].sync_starts)
        return starts[np.abs(starts - t) >= self.shift_min]

    def sample(self, rng: np.random.Generator, count: int) -> tuple[WindowBatch, npt.NDArray[np.float32]]:
        """``count`` windows and, for each, a shifted audio window (count,1,80,16)."""
        batch = self.sampler.batch(self.windows[rng.integers(len(self.windows), size=count)], rng)
        shifted = np.empty((count, 1, 80, MEL_STEP), np.float32)
        for k, (index, t, _) in enumerate(batch.windows):
            far = self.far(int(index), int(t))
            u = int(far[rng.integers(len(far))])
            mel = self.sampler.clips[int(index)].mel
            shifted[k, 0] = mel[:, mel_start(u) : mel_start(u) + MEL_STEP]
        return batch, shifted


class SyncDiscriminator(SyncNetTrainer):
    """The sync discriminator: a trainable copy of the expert with its own Adam. Between its own steps it is
    frozen (eval mode, no parameter gradients) and serves as the generator's sync judge."""

    def __init__(self, expert: nn.Module, device: str, lr: float, bf16: bool = False) -> None:
        # not SyncNetTrainer.__init__: the model is a copy of the pre-trained expert, not a fresh SyncNet
        self.device = device
        self.bf16 = bf16
        self.original = expert
        self.model = copy.deepcopy(expert).to(device)
        self.freeze()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def freeze(self) -> None:
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)

    def train_step(self, real: PairBatch, generated: torch.Tensor,
                   shifted: npt.NDArray[np.float32]) -> dict[str, float]:
        """One step on real matched pairs and on generated lower-half windows (N,15,48,96) with shifted audio."""
        self.model.train()
        for parameter in self.model.parameters():
            parameter.requires_grad_(True)
        try:
            count = len(real.faces)
            faces = torch.cat([torch.as_tensor(real.faces, device=self.device),
                               torch.as_tensor(real.faces, device=self.device), generated.detach().float()])
            mels = torch.as_tensor(np.concatenate([real.in_sync, real.off_sync, shifted]), device=self.device)
            similarity = self.similarities(mels, faces)
            positive, negative = similarity[:count], similarity[count:]
            loss = 0.5 * (sync_bce(positive, torch.ones_like(positive)) + sync_bce(negative, torch.zeros_like(negative)))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        finally:
            self.freeze()
        return {"sync_disc_loss": float(loss.detach()), "sync_disc_in": float(positive.detach().mean()),
                "sync_disc_off": float(similarity[count : 2 * count].detach().mean()),
                "sync_disc_gen_off": float(similarity[2 * count :].detach().mean())}

    def revert(self) -> None:
        """Back to the original expert's weights."""
        self.model.load_state_dict(self.original.state_dict())
        self.freeze()


class AlternatingDiscriminator:
    """The sync discriminator with its samplers and held-out pairs, as a generator run uses it."""

    def __init__(self, trainer: GeneratorTrainer, train_set: Dataset, heldout_set: Dataset, *, lr: float,
                 shift_min: int, eval_pairs: int, seed: int) -> None:
        if trainer.expert is None:
            raise InputError("--alternate needs the lip-sync expert: pass --expert WEIGHTS")
        self.trainer = trainer
        self.disc = SyncDiscriminator(trainer.expert, trainer.device, lr, trainer.bf16)
        self.pairs = PairSampler(train_set, shift_min)
        self.generated = ShiftedWindows(train_set, shift_min)
        self.heldout = PairSampler(heldout_set, shift_min).fixed(seed + 1, eval_pairs)
        self.calibration = self.pairs.fixed(seed + 2, eval_pairs)
        self.seed = seed

    def step(self, number: int, batch: int) -> dict[str, float]:
        """The discriminator step after generator step ``number``: its batches are a function of the seed and the
        step only (a stream apart from the generator step's), so a resumed run draws what it would have."""
        rng = np.random.default_rng([self.seed, number, 1])
        real = self.pairs.sample(rng, batch)
        windows, shifted = self.generated.sample(rng, batch)
        generated = self.trainer.predict(windows)  # eval mode, no gradient: the generator is frozen
        return self.disc.train_step(real, frames_to_windows(generated), shifted)

    def accuracy(self) -> dict[str, float]:
        """The discriminator's held-out figures on real pairs of held-out clips (``train syncnet``'s)."""
        result = evaluate(self.disc, self.heldout, self.calibration)
        return {"disc_accuracy": result["accuracy"], "disc_pair_accuracy": result["pair_accuracy"],
                "disc_eval_loss": result["eval_loss"]}
