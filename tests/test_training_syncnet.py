"""`anchorcast train syncnet`: the expert's loss, the three-stage curriculum, metrics, checkpoints, resume, Ctrl-C."""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.training.cli_args import configure_train, run_train
from anchorcast_plugins.engines.wav2lip.training.common import STATE_FILE, TrainingInterrupted
from anchorcast_plugins.engines.wav2lip.training.dataset import Dataset
from anchorcast_plugins.engines.wav2lip.training.syncnet import (
    PairSampler,
    SyncNetConfig,
    SyncNetTrainer,
    best_threshold,
    clip_shifts,
    evaluate_clips,
    train_syncnet,
)
from anchorcast_plugins.engines.wav2lip.training.synth import make_synthetic_dataset
from tests.sync_stand_in import BrightnessExpert, delayed_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "set", clips=3, seconds=1.0, seed=3,
                                  speakers=1)


def config(data: Dataset, out: Path, **changes: object) -> SyncNetConfig:
    base = SyncNetConfig(data=str(data.folder), out=str(out), steps=2, batch=2, eval_every=100, eval_pairs=3,
                         save_every=100, device="cpu", heldout=0.34)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_pairs_are_matched_and_shifted(tiny: Dataset) -> None:
    sampler = PairSampler(tiny, shift_min=5)
    batch = sampler.sample(np.random.default_rng(0), 16)
    for k, (index, t) in enumerate(batch.windows):
        clip = sampler.clips[int(index)]
        starts = [s for s in range(clip.sync_starts)
                  if np.array_equal(clip.mel[:, s * 80 // 25 : s * 80 // 25 + 16], batch.off_sync[k, 0])]
        assert starts and min(abs(s - int(t)) for s in starts) >= 5
        assert np.array_equal(batch.in_sync[k, 0], clip.mel[:, t * 80 // 25 : t * 80 // 25 + 16])


def test_best_threshold_separates_when_it_can() -> None:
    positives = np.array([0.6, 0.7, 0.9], np.float32)
    negatives = np.array([0.1, 0.5, 0.55], np.float32)
    threshold = best_threshold(positives, negatives)
    assert 0.55 <= threshold < 0.6


def test_whole_clip_evaluation_tells_in_sync_clips_from_shifted_ones(tmp_path: Path) -> None:
    calibration = delayed_dataset(tmp_path / "calibration", {f"c{k}": 0 for k in range(3)}, frames=60, seed=10)
    heldout = delayed_dataset(tmp_path / "heldout", {f"h{k}": 0 for k in range(4)}, frames=60, seed=20)
    result = evaluate_clips(BrightnessExpert(), heldout, calibration, shift_min=5)
    assert clip_shifts(5) == (5, -5, 10, -10, 15, -15)
    assert result["clips"] == 4 and result["clip_pairs"] == 4 * 6
    assert result["clip_accuracy"] == 1.0 and result["clip_pair_accuracy"] == 1.0
    assert result["clip_accuracy_by_shift"] == {"5": 1.0, "10": 1.0, "15": 1.0}

    # clips whose audio is really 10 frames late: the "shifted by 10" copy is the one in sync
    late = delayed_dataset(tmp_path / "late", {f"l{k}": 10 for k in range(4)}, frames=60, seed=30)
    judged = evaluate_clips(BrightnessExpert(), late, calibration, shift_min=5)
    assert judged["clip_accuracy"] < 0.75 and judged["clip_pair_accuracy"] <= 5 / 6
    assert judged["clip_accuracy_by_shift"]["10"] <= 0.5


def test_whole_clip_evaluation_skips_clips_too_short_to_shift(tmp_path: Path) -> None:
    calibration = delayed_dataset(tmp_path / "calibration", {"c": 0}, frames=60)
    short = delayed_dataset(tmp_path / "short", {"s": 0}, frames=8)
    assert evaluate_clips(BrightnessExpert(), short, calibration, shift_min=5) == {}


@pytest.mark.slow
def test_loss_falls_on_a_fixed_batch(tiny: Dataset) -> None:
    trainer = SyncNetTrainer("cpu", lr=1e-4, seed=0)
    batch = PairSampler(tiny).sample(np.random.default_rng(0), 2)
    losses = [trainer.step(batch)["loss"] for _ in range(8)]
    assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.05, losses


@pytest.mark.slow
def test_three_stages_end_to_end_then_import_and_resume(tiny: Dataset, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANCHORCAST_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    metrics = train_syncnet(config(tiny, out, stages=3))
    written = json.loads((out / "metrics.json").read_text())
    assert written["finished"] and written["completed_steps"] == 6
    assert [s["name"] for s in written["stages"]] == ["all", "margin", "filtered"]
    assert [s["stage"] for s in written["steps"]] == [1, 1, 2, 2, 3, 3]
    assert all(np.isfinite(s["loss"]) and s["seconds"] > 0 for s in written["steps"])
    margins = [s["margin"] for s in written["steps"] if s["stage"] == 2]
    assert margins == [pytest.approx(0.05), pytest.approx(0.05)]  # grows every 10 steps
    assert all("margin_loss" in s for s in written["steps"] if s["stage"] == 2)
    filtered = written["filter"]
    assert 0 < filtered["kept"] <= filtered["windows"] and written["stages"][2]["windows"] == filtered["kept"]
    for key in ("eval_loss", "accuracy", "pair_accuracy", "threshold", "clip_accuracy", "clip_pair_accuracy"):
        assert written["final"][key] >= 0 and np.isfinite(written["final"][key])
    for stage in written["stages"]:
        assert stage["clips"] == written["data"]["heldout_clips"] and set(stage["clip_accuracy_by_shift"]) <= {"5", "10", "15"}
    assert written["final"] == metrics["final"] and written["seconds_per_step"] > 0

    from anchorcast_plugins.engines.wav2lip.weights_store import import_weights

    stored = import_weights(out / "syncnet.safetensors", "expert", expected_kind="syncnet")
    assert stored.kind == "syncnet" and stored.global_step == 6
    state = torch.load(out / STATE_FILE, map_location="cpu", weights_only=True)
    assert state["step"] == 6 and state["optimizer"]["state"]

    # --resume with more steps per stage: stage 1 is extended from its saved step, not restarted
    longer = train_syncnet(config(tiny, out, stages=1, steps=8, resume=True))
    assert [s["step"] for s in longer["steps"]] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert torch.load(out / STATE_FILE, weights_only=True)["step"] == 8
    with pytest.raises(InputError, match="already holds"):
        train_syncnet(config(tiny, out))


@pytest.mark.slow
def test_ctrl_c_saves_a_loadable_checkpoint_and_resume_continues(tiny: Dataset, tmp_path: Path) -> None:
    out = tmp_path / "run"

    def interrupt(step: int, values: object) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as stopped:
        train_syncnet(config(tiny, out, steps=4), after_step=interrupt)
    assert stopped.value.step == 2
    assert json.loads((out / "metrics.json").read_text())["interrupted_at_step"] == 2
    from anchorcast_plugins.engines.wav2lip.checkpoints import load_checkpoint

    loaded = load_checkpoint(out / "syncnet.safetensors", "syncnet")
    assert loaded.global_step == 2
    resumed = train_syncnet(config(tiny, out, steps=4, resume=True))
    assert [s["step"] for s in resumed["steps"]] == [1, 2, 3, 4] and "interrupted_at_step" not in resumed
    # the resumed weights continue from the interrupted ones
    assert load_checkpoint(out / "syncnet.safetensors", "syncnet").global_step == 4


def test_cli_parses_and_refuses_bad_options(tiny: Dataset, tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    configure_train(parser)
    args = parser.parse_args(["syncnet", "--data", str(tiny.folder), "--out", str(tmp_path / "r"), "--batch", "3"])
    with pytest.raises(InputError, match="--batch"):
        run_train(None, args)
    args = parser.parse_args(["syncnet", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "r")])
    with pytest.raises(InputError, match="does not exist"):
        run_train(None, args)
    single = make_synthetic_dataset(tmp_path / "one", clips=1, seconds=0.8, seed=0, speakers=1)
    with pytest.raises(InputError, match="at least two"):
        train_syncnet(config(single, tmp_path / "r1"))


@pytest.mark.parametrize("names", [("SyncNetDefaults", "syncnet", "SyncNetConfig"),
                                   ("GeneratorDefaults", "generator", "GeneratorConfig")])
def test_cli_defaults_match_the_configs(names: tuple[str, str, str]) -> None:
    import dataclasses
    import importlib

    from anchorcast_plugins.engines.wav2lip.training import cli_args

    defaults = getattr(cli_args, names[0])
    fields = {f.name: f.default for f in dataclasses.fields(
        getattr(importlib.import_module(f"anchorcast_plugins.engines.wav2lip.training.{names[1]}"), names[2]))}
    given = {name: value for name, value in vars(defaults).items() if not name.startswith("_")}
    assert given and all(fields[name] == value for name, value in given.items()), given
    # flags (store_true) and options without a default need no entry
    missing = {name for name, value in fields.items() if name not in given and value not in (dataclasses.MISSING,
               None, False) and name != "stage"}
    assert not missing, missing


def test_the_training_device_names_its_precision() -> None:
    from anchorcast_plugins.engines.wav2lip.training.common import training_device

    device, plain = training_device("cpu")
    _, mixed = training_device("cpu", bf16=True)
    assert device == "cpu" and plain.endswith(", float32") and "bfloat16" not in plain
    assert mixed.count("bfloat16 autocast") == 1 and "float32 weights" in mixed
