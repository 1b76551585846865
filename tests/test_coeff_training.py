"""``anchorcast train coeffs``: a tiny teacher set from a real voice, the loss falls, resume continues exactly,
the figures against the teacher, and clear errors."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from anchorcast.errors import InputError
from anchorcast_plugins.engines.face3d import coeff_model
from anchorcast_plugins.engines.face3d.coeff_model import CoefficientModel
from anchorcast_plugins.engines.face3d.teacher import teacher_coefficients
from anchorcast_plugins.engines.face3d.training import (
    CoeffsConfig,
    CoeffsLoss,
    heldout_l1,
    initial_model,
    load_items,
    train_coeffs,
)
from anchorcast_plugins.engines.face3d.training_data import (
    HELDOUT_VOICE,
    VOICES,
    Item,
    build_dataset,
    load_dataset,
    make_voice,
    speak,
    to_16k,
)
from anchorcast_plugins.engines.face3d.training_eval import compare
from anchorcast_plugins.engines.wav2lip.training.cli_args import configure_train, run_train
from tests.test_livelink import write_take


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def teacher_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three English sentences by eSpeak NG's en voice (the first held out) and the held-out voice."""
    folder = tmp_path_factory.mktemp("teacher")
    voices = [v for v in VOICES if v.name in ("espeak-en", HELDOUT_VOICE)]
    build_dataset(folder, sentences=3, languages=("en",), voices=voices)
    return folder


def config(data: Path, out: Path, **changes: object) -> CoeffsConfig:
    base = CoeffsConfig(out=str(out), data=[str(data)], steps=8, batch=2, lr=3e-3, warmup=2, crop_seconds=1.0,
                        save_every=4, eval_every=4, eval_items=4, seed=3)
    return replace(base, **changes)


def test_the_teacher_set_splits_by_sentence_and_by_voice(teacher_set: Path) -> None:
    manifest = json.loads((teacher_set / "dataset.json").read_text())
    splits = {(e["sentence"], e["voice"]): e["split"] for e in manifest["items"]}
    assert splits == {(0, "espeak-en"): "heldout-sentence", (0, HELDOUT_VOICE): "heldout-voice",
                      (1, "espeak-en"): "train", (2, "espeak-en"): "train"}
    items = load_dataset(teacher_set)
    for item in items:
        # 16 kHz, 25 fps (a last frame the audio ends inside counts: frame_count), over a second
        assert abs(len(item.target) - len(item.audio) / 640) < 1 and len(item.target) > 25
        assert item.target[:, 26].max() > 0.4  # jawOpen opens on every sentence
    assert [i.id for i in load_dataset(teacher_set, ("train",))] == ["en0001-espeak-en", "en0002-espeak-en"]
    # a second build keeps what is there
    again = build_dataset(teacher_set, sentences=3, languages=("en",),
                          voices=[v for v in VOICES if v.name in ("espeak-en", HELDOUT_VOICE)])
    assert again["items"] == manifest["items"]


def test_a_short_run_lowers_the_loss_and_writes_engine_weights(teacher_set: Path, tmp_path: Path) -> None:
    settings = config(teacher_set, tmp_path / "run", steps=30, eval_every=30)
    train, heldout = load_items(settings)
    loss = CoeffsLoss(CoefficientModel().expression_names, settings.mouth_weight, settings.velocity_weight)
    before = heldout_l1(initial_model(settings), train + heldout, settings, loss)
    metrics = train_coeffs(settings)
    assert metrics["finished"] and metrics["completed_steps"] == 30
    trained = CoefficientModel.load(tmp_path / "run" / "coeffs.safetensors")
    after = heldout_l1(trained, train + heldout, settings, loss)
    assert after["eval_loss"] < 0.8 * before["eval_loss"], (before, after)
    assert metrics["evals"][-1]["step"] == 30


def test_resume_continues_exactly(teacher_set: Path, tmp_path: Path) -> None:
    whole = train_coeffs(config(teacher_set, tmp_path / "whole"))
    stopped = train_coeffs(config(teacher_set, tmp_path / "parts", minutes=0.0))  # stops after step 1
    assert stopped["stopped_at_step"] == 1 and "finished" not in stopped
    with pytest.raises(InputError, match="already holds"):
        train_coeffs(config(teacher_set, tmp_path / "parts"))
    resumed = train_coeffs(config(teacher_set, tmp_path / "parts", resume=True))
    assert resumed["finished"] and [s["step"] for s in resumed["steps"]] == list(range(1, 9))
    assert [s["loss"] for s in resumed["steps"]] == pytest.approx([s["loss"] for s in whole["steps"]], rel=1e-5)
    a = CoefficientModel.load(tmp_path / "whole" / "coeffs.safetensors").state_dict()
    b = CoefficientModel.load(tmp_path / "parts" / "coeffs.safetensors").state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)


def test_figures_against_the_teacher(teacher_set: Path) -> None:
    items = load_dataset(teacher_set, ("heldout-sentence", "heldout-voice"))
    torch.manual_seed(0)
    figures = compare(CoefficientModel().eval(), items)
    assert figures["teacher"].mouth_l1 == 0 and figures["teacher"].best_lag in (-1, 0, 1)
    assert figures["teacher"].envelope_correlation > 0.3
    baseline = figures["viseme (audio)"]
    assert 0 < baseline.mouth_l1 < 0.2 and baseline.envelope_correlation > 0.5
    assert np.isfinite(figures["model"].mouth_l1)


def test_the_cli_refuses_missing_data_clearly(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    configure_train(parser)
    args = parser.parse_args(["coeffs", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run")])
    with pytest.raises(InputError, match=r"data folder .*none not found"):
        run_train(None, args)
    (tmp_path / "empty").mkdir()
    args = parser.parse_args(["coeffs", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run")])
    with pytest.raises(InputError, match=r"empty is not a teacher data set: it has no dataset\.json"):
        run_train(None, args)
    args = parser.parse_args(["coeffs", "--out", str(tmp_path / "run")])
    with pytest.raises(InputError, match="needs data"):
        run_train(None, args)
    args = parser.parse_args(["coeffs-data", "--out", str(tmp_path / "set"), "--languages", "fr"])
    with pytest.raises(InputError, match="en and zh, not fr"):
        run_train(None, args)


def test_live_link_takes_train_alongside_the_teacher(teacher_set: Path, tmp_path: Path) -> None:
    for k in range(3):
        write_take(tmp_path / "takes" / "anna", f"take{k:02d}", seconds=1.5)
    settings = config(teacher_set, tmp_path / "run", livelink=[str(tmp_path / "takes" / "anna")], steps=2)
    train, heldout = load_items(settings)
    assert {item.voice for item in train} == {"espeak-en", "livelink-anna"}
    assert "livelink-anna" in {item.voice for item in heldout}
    assert train_coeffs(settings)["finished"]


def test_the_shipped_weights_beat_the_viseme_engine_on_an_unseen_sentence_and_voice() -> None:
    weights = Path(coeff_model.__file__).parent / "assets" / "coeffs.safetensors"
    assert weights.stat().st_size <= 20 * 1024 * 1024
    model = CoefficientModel.load(weights)
    spec = next(v for v in VOICES if v.name == HELDOUT_VOICE)
    items = []
    for language, text in (("en", "Heavy rain flooded the old market square, but the shops will open tomorrow."),
                           ("zh", "今天下午，上海的地铁因为暴雨暂停了半个小时。")):
        audio, rate, phonemes = speak(make_voice(spec, language), text, language)
        audio16 = to_16k(audio, rate)
        frames = len(audio16) // 640
        target = teacher_coefficients(phonemes, audio, rate, frames, 25)
        items.append(Item(language, audio16, target, spec.name, "heldout-voice", language, text))
    figures = compare(model, items)
    assert figures["model"].mouth_l1 < figures["viseme (audio)"].mouth_l1, figures
    assert abs(figures["model"].best_lag) <= 1 and figures["model"].envelope_correlation > 0.4, figures
