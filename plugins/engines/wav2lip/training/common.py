"""Infrastructure every training stage shares: the run folder, its ``metrics.json``, resumable checkpoints, seeds
and the step loop with rich progress that saves on Ctrl-C.

A run folder holds:

- ``metrics.json``: the stage, its config, the device, every step's losses and seconds, evaluations and a summary;
  rewritten atomically (temporary file + rename) as training goes, so it is always complete JSON;
- ``<kind>.safetensors``: the model's weights (a Wav2Lip ``kind``: generator, syncnet, discriminator), with
  ``kind`` and ``global_step`` in the metadata; ``anchorcast weights import RUN/<kind>.safetensors`` reads it;
- ``<companion>.safetensors``: a second model trained alongside (the GAN stage's ``discriminator``), same format;
- ``training_state.pt``: optimizer state(s), step, stage and RNG states, as plain tensors, dicts, lists and strings
  so ``torch.load(..., weights_only=True)`` reads it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from anchorcast.errors import InputError

METRICS_FILE = "metrics.json"
STATE_FILE = "training_state.pt"
STATE_FORMAT = "anchorcast-training-state/1"


Companions = Mapping[str, tuple[nn.Module, torch.optim.Optimizer]]
"""Models trained alongside a run's own, by Wav2Lip kind, each with its optimizer."""


class TrainingInterrupted(Exception):
    """Raised by :func:`run_steps` after Ctrl-C once the checkpoint is saved; ``step`` is the last completed one."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training interrupted after step {step}; the checkpoint is saved")
        self.step = step


def set_seeds(seed: int) -> None:
    """Seeds Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_rng(seed: int, step: int) -> np.random.Generator:
    """The sampling generator of one step: a function of the seed and the step only, so a resumed run draws the
    same batches as one that never stopped."""
    return np.random.default_rng([seed, step])


def write_json_atomically(path: Path, data: Any) -> None:
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        temporary.write_text(json.dumps(data, indent=1) + "\n")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


@dataclass
class RunFolder:
    """A training run's output folder and its metrics (see the module docstring)."""

    path: Path
    kind: str
    """The Wav2Lip model kind this run trains; the weights are ``<kind>.safetensors``."""
    metrics: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, path: Path | str, kind: str, stage: str, config: Mapping[str, Any], *, resume: bool) -> RunFolder:
        """Creates the folder, or with ``resume`` reopens it (keeping its metrics). Without ``resume`` a folder that
        already holds a checkpoint is refused, so a run is never overwritten by accident."""
        folder = Path(path).expanduser()
        run = cls(folder, kind)
        if folder.exists() and not folder.is_dir():
            raise InputError(f"--out {folder} is a file, not a folder")
        if resume:
            if not run.has_checkpoint:
                raise InputError(f"--resume: {folder} holds no checkpoint ({kind}.safetensors and {STATE_FILE})",
                                 hint="start a new run without --resume")
            try:
                run.metrics = json.loads(run.metrics_path.read_text())
            except (OSError, ValueError):
                run.metrics = {}
            if run.metrics.get("stage", stage) != stage:
                raise InputError(f"--resume: {folder} holds a {run.metrics['stage']} run, not {stage}",
                                 hint=f"continue it with `anchorcast train {run.metrics['stage']} --resume`, or "
                                      "choose another --out folder")
        elif run.has_checkpoint:
            raise InputError(f"{folder} already holds a {kind} training run",
                             hint="pass --resume to continue it, or choose another --out folder")
        folder.mkdir(parents=True, exist_ok=True)
        run.metrics.setdefault("stage", stage)
        run.metrics["config"] = dict(config)
        run.metrics.setdefault("steps", [])
        run.metrics.setdefault("evals", [])
        run.metrics.setdefault("started_at", datetime.now(UTC).isoformat(timespec="seconds"))
        run.save_metrics()
        return run

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def weights_path(self) -> Path:
        return self.path / f"{self.kind}.safetensors"

    @property
    def state_path(self) -> Path:
        return self.path / STATE_FILE

    @property
    def has_checkpoint(self) -> bool:
        return self.weights_path.is_file() and self.state_path.is_file()

    def record_step(self, step: int, seconds: float, values: Mapping[str, float], **extra: Any) -> None:
        """Adds one training step's losses (kept in memory; :meth:`save_metrics` writes them)."""
        self.metrics["steps"].append({"step": step, "seconds": round(seconds, 4),
                                      **{k: float(v) for k, v in values.items()}, **extra})

    def record_eval(self, step: int, values: Mapping[str, Any]) -> None:
        self.metrics["evals"].append({"step": step, **values})

    def save_metrics(self) -> None:
        steps = self.metrics.get("steps", [])
        if steps:
            seconds = [s["seconds"] for s in steps]
            self.metrics["completed_steps"] = steps[-1]["step"]
            # the first step includes warm-up (allocations, kernel selection): leave it out when there are more
            typical = seconds[1:] if len(seconds) > 1 else seconds
            self.metrics["seconds_per_step"] = round(float(np.mean(typical)), 4)
        self.metrics["updated_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        write_json_atomically(self.metrics_path, self.metrics)

    def save_checkpoint(self, model: nn.Module, optimizer: torch.optim.Optimizer, step: int,
                        extra: Mapping[str, Any] | None = None, companions: Companions | None = None) -> None:
        """Writes the weights (and each companion's, ``{kind: (model, optimizer)}``) and the training state, each
        to a temporary name then renamed; the state is renamed last, so a checkpoint is complete when it is."""
        from safetensors.torch import save_file

        companions = companions or {}
        metadata = {"global_step": str(step), "trained_by": "anchorcast train"}
        state = {
            "format": STATE_FORMAT,
            "step": step,
            "optimizer": _to_cpu(optimizer.state_dict()),
            "companion_optimizers": {kind: _to_cpu(opt.state_dict()) for kind, (_, opt) in companions.items()},
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": _numpy_state(),
            "python_rng": json.dumps(random.getstate()),
            "extra": json.dumps(dict(extra or {})),
        }
        models = {self.kind: model, **{kind: module for kind, (module, _) in companions.items()}}
        written = {kind: self.path / f".{kind}.safetensors.partial" for kind in models}
        state_tmp = self.path / f".{STATE_FILE}.partial"
        try:
            for kind, module in models.items():
                tensors = {key: value.detach().to("cpu").contiguous() for key, value in module.state_dict().items()}
                save_file(tensors, str(written[kind]), {"kind": kind, **metadata})
            torch.save(state, state_tmp)
            for kind, temporary in written.items():
                os.replace(temporary, self.path / f"{kind}.safetensors")
            os.replace(state_tmp, self.state_path)
        finally:
            for temporary in (*written.values(), state_tmp):
                temporary.unlink(missing_ok=True)

    def load_checkpoint(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: str,
                        companions: Companions | None = None) -> tuple[int, dict]:
        """Restores weights, optimizer and RNG states (and the companions'); returns ``(step, extra)`` as saved."""
        from anchorcast_plugins.engines.wav2lip.checkpoints import load_checkpoint

        loaded = load_checkpoint(self.weights_path, self.kind)
        model.load_state_dict(loaded.state_dict, strict=True)
        model.to(device)
        companions = companions or {}
        for kind, (module, _) in companions.items():
            path = self.path / f"{kind}.safetensors"
            if not path.is_file():
                raise InputError(f"--resume: {self.path} has no {path.name}", hint="start a new run")
            module.load_state_dict(load_checkpoint(path, kind).state_dict, strict=True)
            module.to(device)
        try:
            state = torch.load(self.state_path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise InputError(f"cannot read {self.state_path}: {error}",
                             hint="the run folder is damaged: start a new run") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise InputError(f"{self.state_path} is not an anchorcast training state")
        if loaded.global_step is not None and loaded.global_step != state["step"]:
            raise InputError(f"{self.weights_path} is at step {loaded.global_step} but {self.state_path} at step "
                             f"{state['step']}: the run stopped while saving", hint="start a new run")
        mismatch = InputError(f"--resume: the optimizer state in {self.state_path} does not fit this run's "
                              "model (another stage or trained parts)", hint="start a new run in another folder")
        try:
            optimizer.load_state_dict(state["optimizer"])
            for kind, (_, companion_optimizer) in companions.items():
                saved = state.get("companion_optimizers", {}).get(kind)
                if saved is None:
                    raise mismatch
                companion_optimizer.load_state_dict(saved)
        except (ValueError, KeyError) as error:
            raise mismatch from error
        torch.set_rng_state(state["torch_rng"])
        numpy_state = state["numpy_rng"]
        np.random.set_state(("MT19937", numpy_state["key"].numpy().astype(np.uint32), int(numpy_state["pos"]),
                             int(numpy_state["has_gauss"]), float(numpy_state["gauss"])))
        python_state = json.loads(state["python_rng"])
        random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))
        return int(state["step"]), json.loads(state["extra"])


def _numpy_state() -> dict[str, Any]:
    """numpy's global generator state as a tensor and numbers (what ``weights_only`` loading accepts)."""
    _, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)  # type: ignore[misc]
    return {"key": torch.from_numpy(np.asarray(key, np.int64)), "pos": int(pos), "has_gauss": int(has_gauss),
            "gauss": float(gauss)}


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu")
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_cpu(v) for v in value)
    return value


def training_device(request: str = "auto", bf16: bool = False) -> tuple[str, str]:
    """``(torch device, description)`` for ``--device`` (auto: MLU, then CUDA, then CPU). Training keeps float32
    weights everywhere, whatever precision the engine would use for inference on that device; ``bf16`` (the
    ``--bf16`` autocast) is named in the description."""
    from anchorcast_plugins.engines.wav2lip.devices import select_device

    choice = select_device(request)
    precision = "float32 weights, bfloat16 autocast" if bf16 else "float32"
    return choice.device, choice.description.rsplit(",", 1)[0] + ", " + precision


def mixed_precision(device: str, enabled: bool) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast on ``device`` when ``enabled`` (``--bf16``): convolutions run in bfloat16 (AMX or
    AVX512-BF16 CPUs, recent GPUs: 1.5-3x faster steps), weights, optimizer state and losses stay float32."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)


StepFunction = Callable[[int], Mapping[str, float]]
"""Runs one training step given its 1-based global step number; returns the losses to show and record."""


def run_steps(run: RunFolder, *, label: str, first: int, last: int, step: StepFunction,
              save: Callable[[int], None], console: Console, save_every: int = 50,
              after_step: Callable[[int, Mapping[str, float]], None] | None = None,
              record_extra: Callable[[int], Mapping[str, Any]] | None = None,
              evaluate: Callable[[int], Mapping[str, float]] | None = None) -> None:
    """Runs global steps ``first..last`` (1-based, inclusive) with a progress bar showing the losses.

    After each step its losses are recorded (with ``record_extra(step)``), ``evaluate(step)`` may add held-out
    figures to the progress line (it runs outside the step, so its time is not the step's), metrics are written,
    and ``save(step)`` runs every ``save_every`` steps and after the last. Ctrl-C during a step lets the step finish
    first, so a checkpoint never holds half a step; then (also when ``after_step`` or ``evaluate`` raise
    ``KeyboardInterrupt``) the last completed step is saved and :class:`TrainingInterrupted` raised.
    """
    if last < first:
        return
    done = first - 1
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[losses]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    try:
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task(label, total=last - first + 1, losses="")
            for number in range(first, last + 1):
                started = time.perf_counter()
                with _sigint_deferred() as interrupted:
                    values = step(number)
                seconds = time.perf_counter() - started
                done = number
                run.record_step(number, seconds, values, **(record_extra(number) if record_extra else {}))
                if interrupted:
                    raise KeyboardInterrupt
                shown = dict(values)
                if evaluate is not None:
                    shown.update(evaluate(number))
                run.save_metrics()
                progress.update(task, advance=1, losses="  ".join(f"{k} {v:.4f}" for k, v in shown.items()))
                if number % save_every == 0 or number == last:
                    save(number)
                if after_step is not None:
                    after_step(number, values)
    except KeyboardInterrupt:
        if done >= first:
            save(done)
        run.metrics["interrupted_at_step"] = done
        run.save_metrics()
        raise TrainingInterrupted(done) from None


@contextmanager
def _sigint_deferred() -> Iterator[list[int]]:
    """Holds Ctrl-C (SIGINT) back for the block; yields the list of signals that arrived meanwhile (the caller
    raises ``KeyboardInterrupt`` when it is not empty). A no-op outside the main thread, where Python delivers no
    signals."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield received
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def evaluation(model: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the duration, then back to the previous mode."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)
