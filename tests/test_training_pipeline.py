"""The whole training pipeline at small scale, through the `anchorcast train` commands: prepare -> syncnet (three
stages) -> generator -> finetune -> gan. Each stage's loss must fall and its weights must load into the engine."""

from __future__ import annotations

import argparse
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from anchorcast.errors import InputError
from anchorcast.media import StreamFormat
from anchorcast_plugins.engines.wav2lip.training.cli_args import configure_train, run_train
from anchorcast_plugins.engines.wav2lip.training.common import STATE_FILE
from anchorcast_plugins.engines.wav2lip.training.generator import (
    GeneratorConfig,
    GeneratorTrainer,
    LossWeights,
    WindowSampler,
    train_generator,
)
from anchorcast_plugins.engines.wav2lip.training.losses import mouth_jitter, mouth_motion, ms_ssim
from anchorcast_plugins.engines.wav2lip.training.synth import (
    SENTENCES,
    SPEAKERS,
    SyntheticTalker,
    make_synthetic_dataset,
)
from tests.mp4 import write_video

FMT = StreamFormat(640, 360, Fraction(25), 16000)


def train(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    configure_train(parser)
    return run_train(None, parser.parse_args([str(a) for a in argv]))


def metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def falls(steps: list[dict], key: str = "loss", edge: int = 3) -> tuple[float, float]:
    values = [s[key] for s in steps]
    return float(np.mean(values[:edge])), float(np.mean(values[-edge:]))


def render_videos(folder: Path, speaker_index: int, takes: int, seconds: float, first_sentence: int) -> None:
    talker = SyntheticTalker(SPEAKERS[speaker_index], size=256)
    folder.mkdir(parents=True)
    for k in range(takes):
        sentences = [SENTENCES[(first_sentence + 2 * k + i) % len(SENTENCES)] for i in range(2)]
        clip = talker.speak(sentences, seconds=seconds)
        write_video(folder / f"take{k}.mp4", clip.frames, 25, clip.audio)


def render_frame(weights: Path) -> np.ndarray:
    """One frame of the wav2lip engine with these weights, on a speech-like tone."""
    from anchorcast.components import FrameJob
    from anchorcast_plugins.engines.wav2lip.audio import LOOKBEHIND_SAMPLES, lookahead_samples
    from anchorcast_plugins.engines.wav2lip.engine import Wav2LipEngine

    engine = Wav2LipEngine({"weights": str(weights), "avatar": None, "face_box": None, "device": "cpu",
                            "backend": "torch", "max_batch": 2})
    engine.open(FMT)
    try:
        behind, ahead = LOOKBEHIND_SAMPLES, lookahead_samples(FMT.fps)
        t = np.arange(behind + 640 + ahead) / 16000
        audio = (0.3 * np.sin(2 * np.pi * 180 * t)).astype(np.float32)
        frame = engine.render([FrameJob(0, 0.0, audio, behind, 640, 1.0)])[0]
        assert np.any(frame != engine.idle(0))  # the generator's mouth is pasted in
        return frame
    finally:
        engine.close()


@pytest.mark.slow
def native_bf16() -> bool:
    """Whether this CPU has bfloat16 arithmetic of its own (Linux's flags for AVX512-BF16 and AMX-BF16)."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16"})


@pytest.mark.slow  # 2 minutes: the file-order pass runs it, the random-order pass of fast tests does not
def test_prepare_syncnet_generator_finetune_gan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANCHORCAST_HOME", str(tmp_path / "home"))
    videos, data = tmp_path / "videos", tmp_path / "data"
    render_videos(videos / "anna", 0, takes=3, seconds=2.0, first_sentence=0)
    assert train("prepare", videos, "--out", data, "--max-seconds", 2.0) == 0
    assert len(json.loads((data / "dataset.json").read_text())["clips"]) == 3

    expert = tmp_path / "expert"
    assert train("syncnet", "--data", data, "--out", expert, "--stages", 3, "--steps", 6, "--batch", 4,
                 "--lr", 1e-3, "--eval-every", 100, "--eval-pairs", 8, "--heldout", 0.34, "--device", "cpu") == 0
    synced = metrics(expert)
    assert [s["name"] for s in synced["stages"]] == ["all", "margin", "filtered"]
    # 18 steps of batch 4 are too few for a held-out fall to show every time (CI saw 0.777, 0.726, 0.789 and
    # 0.762, 0.834, 0.871): the expert's learning is checked in tests/test_training_syncnet.py; here the pipeline
    # must not diverge (a NaN, or a loss half as large again).
    evals = [stage["eval_loss"] for stage in synced["stages"]]
    assert all(np.isfinite(evals)) and max(evals) < 1.5 * evals[0], evals
    assert all(np.isfinite(s["loss"]) for s in synced["steps"])

    expert_bytes = (expert / "syncnet.safetensors").read_bytes()
    common = ("--batch", 2, "--eval-every", 100, "--eval-windows", 4, "--heldout", 0.34, "--device", "cpu",
              "--expert", expert / "syncnet.safetensors", "--sync-on-below", "inf")
    generator = tmp_path / "generator"
    assert train("generator", "--data", data, "--out", generator, "--steps", 8, "--lr", 1e-3, *common) == 0
    made = metrics(generator)
    first, last = falls(made["steps"])
    assert last < first, (first, last)
    assert all(s["sync_on"] and {"sync", "perceptual", "msssim", "l1"} <= set(s) for s in made["steps"])
    # Held-out L1 after 8 steps at lr 1e-3 moves by noise (seen: 0.2278 -> 0.2299, 0.2279 -> 0.2542 under
    # another random seed, a fall on others): the training loss's fall above is the learning check; this catches
    # a generator that diverges on unseen windows (a NaN, or an L1 that doubles).
    assert made["final"]["eval_l1"] < 1.5 * made["initial"]["eval_l1"], (made["initial"], made["final"])

    presenter = tmp_path / "presenter"
    render_videos(presenter, 1, takes=1, seconds=4.0, first_sentence=7)
    tuned = tmp_path / "finetune"
    assert train("finetune", "--video", presenter / "take0.mp4", "--clip-seconds", 2.0, "--out", tuned,
                 "--from", generator / "generator.safetensors", "--steps", 8, "--lr", 1e-3, *common) == 0
    adapted = metrics(tuned)
    first, last = falls(adapted["steps"])
    assert last < first, (first, last)
    assert adapted["prepared"]["clips"] == 2 and adapted["data"]["heldout_clips"] == 1
    for key in ("mouth_jitter", "real_mouth_motion"):
        assert adapted["initial"][key] > 0 and adapted["final"][key] > 0
    # the real motion is the video's own; the output's jitter moved with training
    assert adapted["initial"]["real_mouth_motion"] == adapted["final"]["real_mouth_motion"]
    assert adapted["initial"]["mouth_jitter"] != adapted["final"]["mouth_jitter"]
    _only_the_face_encoder_changed(generator / "generator.safetensors", tuned / "generator.safetensors")

    gan = tmp_path / "gan"
    # bfloat16 autocast where the CPU computes in it (AVX512-BF16, AMX); elsewhere it is emulated, about 50 times
    # slower than float32 (AVX2 EPYC: the GAN stage alone ran past 10 minutes), and the stage runs in float32
    precision = ["--bf16"] if native_bf16() else []
    assert train("gan", "--data", data, "--out", gan, "--from", generator / "generator.safetensors", "--steps", 8,
                 "--lr", 1e-4, *precision, *common) == 0
    refined = metrics(gan)
    first, last = falls(refined["steps"], "l1")
    assert last < first, (first, last)
    assert all(np.isfinite(s["disc_loss"]) and "adversarial" in s for s in refined["steps"])
    assert (gan / "discriminator.safetensors").is_file()
    assert ("bfloat16" in refined["device"]) == bool(precision), refined["device"]
    assert (expert / "syncnet.safetensors").read_bytes() == expert_bytes  # the expert stayed frozen

    from anchorcast_plugins.engines.wav2lip.checkpoints import load_checkpoint
    from anchorcast_plugins.engines.wav2lip.weights_store import import_weights

    assert import_weights(expert / "syncnet.safetensors", "our-expert", expected_kind="syncnet").global_step == 18
    assert load_checkpoint(gan / "discriminator.safetensors", "discriminator").global_step == 8
    for run in (generator, tuned, gan):
        stored = import_weights(run / "generator.safetensors", f"anchor-{run.name}", expected_kind="generator")
        assert stored.global_step == 8
        frame = render_frame(run / "generator.safetensors")
        assert frame.shape == (FMT.height, FMT.width, 3)


def _only_the_face_encoder_changed(before: Path, after: Path) -> None:
    from safetensors.torch import load_file

    old, new = load_file(str(before)), load_file(str(after))
    changed = {k for k in old if not torch.equal(old[k], new[k])}
    assert changed and all(k.startswith("face_encoder_blocks.") for k in changed), sorted(changed)[:5]
    assert any(k.startswith("face_encoder_blocks.") and k.endswith("running_mean") for k in changed)


# --- pieces ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "set", clips=2, seconds=1.2, seed=5,
                                  speakers=1)


def test_windows_hold_masked_targets_references_and_centred_mels(tiny) -> None:
    sampler = WindowSampler(tiny)
    batch = sampler.sample(np.random.default_rng(0), 6)
    for k, (index, t, u) in enumerate(batch.windows):
        clip = sampler.clips[int(index)]
        assert u != t
        real = clip.faces[t : t + 5].astype(np.float32).transpose(3, 0, 1, 2) / 255
        assert np.allclose(batch.targets[k], real)
        assert np.allclose(batch.faces[k, :3, :, :48], real[:, :, :48]) and not batch.faces[k, :3, :, 48:].any()
        assert np.allclose(batch.references[k], clip.faces[u : u + 5].astype(np.float32).transpose(3, 0, 1, 2) / 255)
        for i in range(5):
            # the reference: frames numbered from 1 (get_frame_id + 1), then crop_audio_window(number - 2)
            number = int(t) + i + 1
            start = int(80.0 * ((number - 2) / 25.0))
            assert np.array_equal(batch.mels[k, i, 0], clip.mel[:, start : start + 16])
        assert np.array_equal(batch.sync_mels[k, 0], clip.mel[:, t * 80 // 25 : t * 80 // 25 + 16])


def test_ms_ssim_and_mouth_measures() -> None:
    rng = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 96, 96, generator=rng)
    assert float(ms_ssim(image, image)) == pytest.approx(1.0, abs=1e-5)
    noisy = (image + 0.2 * torch.randn(image.shape, generator=rng)).clamp(0, 1)
    assert 0 < float(ms_ssim(image, noisy)) < 0.9
    still = image[:1].expand(4, -1, -1, -1)
    moving = still.clone()
    moving[1::2, :, 60:88, 24:72] += 0.1  # the mouth opens and closes every frame
    assert mouth_motion(still) == 0 and mouth_motion(moving) == pytest.approx(0.1, rel=1e-5)
    assert mouth_jitter(moving, moving) == 0
    assert mouth_jitter(still, moving) == pytest.approx(0.1, rel=1e-5)
    moving_elsewhere = still.clone()
    moving_elsewhere[1::2, :, :20] += 0.1  # motion outside the mouth box does not count
    assert mouth_jitter(moving_elsewhere, still) == 0


def test_finetune_freezes_the_audio_encoder_and_decoder_statistics(tiny) -> None:
    from anchorcast_plugins.engines.wav2lip.models import SyncNet

    expert = SyncNet().eval()
    trainer = GeneratorTrainer(expert, "cpu", lr=1e-3, trainable="face_encoder")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.step(WindowSampler(tiny).sample(np.random.default_rng(1), 2), LossWeights(), sync_on=True)
    after = trainer.model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("face_encoder_blocks.") for k in changed)
    assert not [k for k in changed if not k.startswith("face_encoder_blocks.")]
    assert all(not p.requires_grad for p in expert.parameters())


def test_bad_options_are_one_clear_message(tiny, tmp_path: Path) -> None:
    base = GeneratorConfig(out=str(tmp_path / "run"), data=str(tiny.folder), expert="none", device="cpu")
    with pytest.raises(InputError, match="add up to less than 1"):
        train_generator(GeneratorConfig(**{**base.__dict__, "sync_weight": 0.5, "msssim_weight": 0.5}))
    with pytest.raises(InputError, match="--from"):
        train_generator(GeneratorConfig(**{**base.__dict__, "stage": "gan"}))
    with pytest.raises(InputError, match="syncnet|weights"):
        train_generator(base)  # "none" is neither a stored name nor a file
    assert not (tmp_path / "run").exists()  # nothing is made before the inputs are checked


@pytest.mark.slow
def test_gan_resumes_after_ctrl_c_with_its_discriminator_and_sync_state(tiny, tmp_path: Path) -> None:
    from anchorcast_plugins.engines.wav2lip.checkpoints import load_checkpoint
    from anchorcast_plugins.engines.wav2lip.models import SyncNet, Wav2Lip
    from anchorcast_plugins.engines.wav2lip.training.common import TrainingInterrupted

    torch.manual_seed(0)
    expert, start = tmp_path / "expert.safetensors", tmp_path / "start.safetensors"
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in SyncNet().state_dict().items()}, str(expert), {"kind": "syncnet"})
    save_file({k: v.contiguous() for k, v in Wav2Lip().state_dict().items()}, str(start), {"kind": "generator"})
    out = tmp_path / "gan"
    config = GeneratorConfig(out=str(out), stage="gan", data=str(tiny.folder), expert=str(expert), init=str(start),
                             steps=4, batch=1, eval_every=100, eval_windows=2, heldout=0.5, save_every=100,
                             device="cpu", sync_on_below=100.0)

    def interrupt(step: int, values: object) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as stopped:
        train_generator(config, after_step=interrupt)
    assert stopped.value.step == 2
    saved_disc = load_checkpoint(out / "discriminator.safetensors", "discriminator")
    assert saved_disc.global_step == 2
    with pytest.raises(InputError, match="holds a gan run"):
        train_generator(GeneratorConfig(**{**config.__dict__, "stage": "generator", "resume": True}))
    resumed = train_generator(GeneratorConfig(**{**config.__dict__, "resume": True}))
    assert [s["step"] for s in resumed["steps"]] == [1, 2, 3, 4]
    # the sync term was switched on at the first evaluation and stays on after the resume
    assert [s["sync_on"] for s in resumed["steps"]] == [True] * 4
    assert load_checkpoint(out / "discriminator.safetensors", "discriminator").global_step == 4
    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["step"] == 4 and state["companion_optimizers"]["discriminator"]["state"]


def test_ctrl_c_inside_a_step_lets_the_step_finish_then_saves_it(tmp_path: Path) -> None:
    import os
    import signal

    from rich.console import Console

    from anchorcast_plugins.engines.wav2lip.training.common import RunFolder, TrainingInterrupted, run_steps

    run = RunFolder.open(tmp_path / "run", "generator", "test", {}, resume=False)
    finished, saved = [], []

    def step(number: int) -> dict[str, float]:
        if number == 3:
            os.kill(os.getpid(), signal.SIGINT)  # arrives mid-step
        finished.append(number)
        return {"loss": 1.0 / number}

    with pytest.raises(TrainingInterrupted) as stopped:
        run_steps(run, label="test", first=1, last=6, step=step, save=saved.append, console=Console(quiet=True),
                  save_every=100)
    assert finished == [1, 2, 3] and stopped.value.step == 3 and saved == [3]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["completed_steps"] == 3


@pytest.mark.slow
def test_a_resumed_run_trains_on_the_batches_a_run_never_stopped_would(tiny, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    from anchorcast_plugins.engines.wav2lip.models import SyncNet, Wav2Lip
    from anchorcast_plugins.engines.wav2lip.training.common import TrainingInterrupted

    torch.manual_seed(0)
    expert, start = tmp_path / "expert.safetensors", tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in SyncNet().state_dict().items()}, str(expert), {"kind": "syncnet"})
    save_file({k: v.contiguous() for k, v in Wav2Lip().state_dict().items()}, str(start), {"kind": "generator"})
    seen: list[list[list[int]]] = []  # per training step: the (clip, frame, reference) of each sample
    real_sample = WindowSampler.sample

    def sample(self: WindowSampler, rng: np.random.Generator, count: int):
        batch = real_sample(self, rng, count)
        seen.append(batch.windows.tolist())
        return batch

    monkeypatch.setattr(WindowSampler, "sample", sample)

    def config(out: Path, resume: bool = False) -> GeneratorConfig:
        return GeneratorConfig(out=str(out), stage="generator", data=str(tiny.folder), expert=str(expert),
                               init=str(start), steps=4, batch=2, eval_every=100, eval_windows=2, heldout=0.5,
                               save_every=100, device="cpu", resume=resume)

    train_generator(config(tmp_path / "whole"))
    whole, seen[:] = list(seen), []

    def interrupt(step: int, values: object) -> None:
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train_generator(config(tmp_path / "stopped"), after_step=interrupt)
    train_generator(config(tmp_path / "stopped", resume=True))
    assert len(whole) == 4 and len({str(b) for b in whole}) > 1  # the batches differ from step to step
    assert seen == whole  # steps 3 and 4 after the resume draw what steps 3 and 4 drew in the run never stopped
