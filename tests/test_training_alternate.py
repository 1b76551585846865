"""`anchorcast train generator --alternate`: the sync discriminator trained in turn with the generator, its labels,
its collapse guard, checkpoints that keep both models and the phase, an exact resume, and the comparison script."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.training.alternate import Alternation, ShiftedWindows, SyncDiscriminator
from anchorcast_plugins.engines.wav2lip.training.cli_args import configure_train
from anchorcast_plugins.engines.wav2lip.training.common import STATE_FILE, TrainingInterrupted
from anchorcast_plugins.engines.wav2lip.training.generator import GeneratorConfig, train_generator
from anchorcast_plugins.engines.wav2lip.training.losses import frames_to_windows
from anchorcast_plugins.engines.wav2lip.training.syncnet import PairSampler
from anchorcast_plugins.engines.wav2lip.training.synth import make_synthetic_dataset

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "set", clips=2, seconds=1.2, seed=5,
                                  speakers=1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random-weight expert and generator start (what they score does not matter to these tests)."""
    from anchorcast_plugins.engines.wav2lip.models import SyncNet, Wav2Lip

    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    expert, start = folder / "expert.safetensors", folder / "start.safetensors"
    save_file({k: v.contiguous() for k, v in SyncNet().state_dict().items()}, str(expert), {"kind": "syncnet"})
    save_file({k: v.contiguous() for k, v in Wav2Lip().state_dict().items()}, str(start), {"kind": "generator"})
    return expert, start


def config(tiny, weights: tuple[Path, Path], out: Path, **changes: object) -> GeneratorConfig:
    expert, start = weights
    base = GeneratorConfig(out=str(out), stage="generator", data=str(tiny.folder), expert=str(expert),
                           init=str(start), steps=4, batch=1, eval_every=2, eval_windows=2, eval_pairs=6,
                           heldout=0.5, save_every=100, device="cpu", sync_on_below=float("inf"), alternate=True,
                           disc_every=2, disc_lr=1e-3, disc_floor=0.0)
    return replace(base, **changes)  # type: ignore[arg-type]


def test_the_alternation_phase() -> None:
    phase = Alternation(since=3)
    assert [s for s in range(1, 12) if phase.due(s, 3)] == [5, 8, 11]
    assert not Alternation().due(5, 1)  # before the sync term is on
    assert Alternation.restored(phase.saved()) == phase
    assert not Alternation(since=1, paused_at=4).due(6, 1)


def test_generated_windows_get_audio_shifted_far_enough(tiny) -> None:
    windows = ShiftedWindows(tiny, shift_min=5)
    batch, shifted = windows.sample(np.random.default_rng(0), 12)
    for k, (index, t, _) in enumerate(batch.windows):
        mel = windows.sampler.clips[int(index)].mel
        starts = [u for u in range(windows.sampler.clips[int(index)].sync_starts)
                  if np.array_equal(mel[:, u * 80 // 25 : u * 80 // 25 + 16], shifted[k, 0])]
        assert starts and min(abs(u - int(t)) for u in starts) >= 5


def test_a_discriminator_step_trains_the_copy_not_the_expert(tiny) -> None:
    from anchorcast_plugins.engines.wav2lip.models import SyncNet

    torch.manual_seed(0)
    expert = SyncNet().eval()
    original = {k: v.clone() for k, v in expert.state_dict().items()}
    disc = SyncDiscriminator(expert, "cpu", lr=1e-3)
    real = PairSampler(tiny, 5).sample(np.random.default_rng(0), 2)
    batch, shifted = ShiftedWindows(tiny, 5).sample(np.random.default_rng(1), 2)
    generated = torch.as_tensor(batch.targets) * 0.9  # stands in for the generator's output
    values = disc.train_step(real, frames_to_windows(generated), shifted)
    assert {"sync_disc_loss", "sync_disc_in", "sync_disc_off", "sync_disc_gen_off"} <= set(values)
    assert all(np.isfinite(v) for v in values.values())
    changed = [k for k, v in disc.model.state_dict().items() if not torch.equal(v, original[k])]
    assert changed
    assert all(torch.equal(v, original[k]) for k, v in expert.state_dict().items())
    # between its own steps it is frozen: the generator's sync loss flows through it, not into it
    assert not disc.model.training and all(not p.requires_grad for p in disc.model.parameters())
    disc.revert()
    assert all(torch.equal(v, original[k]) for k, v in disc.model.state_dict().items())


def _tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)


@pytest.mark.slow
def test_an_interrupted_alternating_run_resumes_to_the_uninterrupted_one(tiny, weights, tmp_path: Path) -> None:
    from anchorcast_plugins.engines.wav2lip.checkpoints import load_checkpoint

    whole = train_generator(config(tiny, weights, tmp_path / "whole"))
    # the sync term is on from the first evaluation, so the alternation starts at step 1: with --disc-every 2 the
    # discriminator steps follow generator steps 2 and 4
    assert [("sync_disc_loss" in s, s["disc_steps"]) for s in whole["steps"]] == [
        (False, 0), (True, 1), (False, 1), (True, 2)]
    assert whole["alternation"] == {"since": 1, "disc_steps": 2, "paused_at": None, "paused_accuracy": None}
    assert [e["step"] for e in whole["evals"]] == [0, 2, 4]
    assert all(0 <= e["disc_accuracy"] <= 1 and "eval_sync_disc" in e for e in whole["evals"][1:])
    assert {"eval_sync", "eval_sync_similarity", "disc_accuracy", "mouth_l1"} <= set(whole["final"])
    expert_tensors = _tensors(weights[0])
    trained = _tensors(tmp_path / "whole" / "syncnet.safetensors")
    assert _close(trained, expert_tensors) > 1e-4  # the discriminator moved; the expert file did not
    assert load_checkpoint(tmp_path / "whole" / "syncnet.safetensors", "syncnet").global_step == 4

    def interrupt(step: int, values: object) -> None:
        if step == 3:
            raise KeyboardInterrupt

    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted):
        train_generator(config(tiny, weights, stopped), after_step=interrupt)
    state = torch.load(stopped / STATE_FILE, weights_only=True)
    assert state["step"] == 3 and json.loads(state["extra"])["alternation"]["disc_steps"] == 1
    assert state["companion_optimizers"]["syncnet"]["state"]  # the discriminator's Adam moments are kept
    with pytest.raises(InputError, match="--alternate"):
        train_generator(config(tiny, weights, stopped, alternate=False, resume=True))
    resumed = train_generator(config(tiny, weights, stopped, resume=True))
    assert [s["disc_steps"] for s in resumed["steps"]] == [0, 1, 1, 2]
    for name in ("generator.safetensors", "syncnet.safetensors"):
        assert _close(_tensors(stopped / name), _tensors(tmp_path / "whole" / name)) < 1e-6, name
    assert resumed["final"]["disc_accuracy"] == whole["final"]["disc_accuracy"]
    assert resumed["final"]["mouth_l1"] == pytest.approx(whole["final"]["mouth_l1"], abs=1e-5)


@pytest.mark.slow
def test_a_collapsed_discriminator_is_reverted_and_stops(tiny, weights, tmp_path: Path) -> None:
    # a random expert is right about half the time: under a floor of 0.99 the first check after a
    # discriminator step finds it collapsed
    out = tmp_path / "run"
    done = train_generator(config(tiny, weights, out, steps=3, eval_every=1, disc_every=1, disc_floor=0.99))
    assert done["alternation"]["paused_at"] == 1 and done["alternation"]["disc_steps"] == 1
    assert done["alternation"]["paused_accuracy"] < 0.99
    assert [("sync_disc_loss" in s) for s in done["steps"]] == [True, False, False]
    assert [e.get("disc_reverted", False) for e in done["evals"]] == [False, True, False, False]
    assert _close(_tensors(out / "syncnet.safetensors"), _tensors(weights[0])) == 0.0


@pytest.mark.slow
def test_the_gan_stage_alternates_beside_its_visual_discriminator(tiny, weights, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from anchorcast_plugins.engines.wav2lip.checkpoints import load_checkpoint
    from anchorcast_plugins.engines.wav2lip.weights_store import import_weights

    out = tmp_path / "gan"
    done = train_generator(config(tiny, weights, out, stage="gan", steps=2, disc_every=1, eval_every=100))
    assert all({"disc_loss", "sync_disc_loss", "adversarial"} <= set(s) for s in done["steps"])
    assert load_checkpoint(out / "discriminator.safetensors", "discriminator").global_step == 2
    assert load_checkpoint(out / "syncnet.safetensors", "syncnet").global_step == 2
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert set(state["companion_optimizers"]) == {"discriminator", "syncnet"}
    monkeypatch.setenv("ANCHORCAST_HOME", str(tmp_path / "home"))  # the weights tools take the trained expert
    assert import_weights(out / "syncnet.safetensors", "alternated", expected_kind="syncnet").global_step == 2


def test_bad_alternation_options_are_one_clear_message(tiny, weights, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--disc-lr"):
        train_generator(config(tiny, weights, tmp_path / "a", disc_lr=0.0))
    with pytest.raises(InputError, match="--disc-every"):
        train_generator(config(tiny, weights, tmp_path / "b", disc_every=0))
    with pytest.raises(InputError, match="--alternate is for"):
        train_generator(config(tiny, weights, tmp_path / "c", stage="finetune", video="x.mp4"))
    assert not any((tmp_path / name).exists() for name in "abc")
    parser = argparse.ArgumentParser()
    configure_train(parser)
    args = parser.parse_args(["gan", "--data", "d", "--out", "o", "--expert", "e", "--from", "g", "--alternate",
                              "--disc-every", "3"])
    assert args.alternate and args.disc_every == 3 and args.disc_lr == 1e-4
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "--video", "v.mp4", "--out", "o", "--alternate"])


@pytest.mark.slow
def test_the_comparison_script_runs_short(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "eval_alternate.py"), "--short",
                             "--work", str(tmp_path), "--json", str(tmp_path / "table.json")],
                            capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads((tmp_path / "table.json").read_text())["arms"]
    assert [row["arm"] for row in rows] == ["frozen", "alternating"]
    for row in rows:
        for key in ("mouth_l1", "expert_sync_similarity", "expert_sync_loss", "disc_accuracy", "seconds"):
            assert np.isfinite(row[key]), (row["arm"], key)
    assert rows[1]["disc_steps"] > 0 and rows[0]["disc_steps"] == 0
    assert "alternating" in result.stdout and "mouth L1" in result.stdout
