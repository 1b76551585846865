"""Wav2Lip inference backends: BatchNorm folding, cached face features, the int8 OpenVINO path and its cache,
and the automatic choice. Inputs are realistic: face crops of the bundled astronaut photo and mel windows of
speech-like audio; the int8 accuracy is judged on a generator whose BatchNorm statistics and scales resemble a
trained net's (random init makes activations degenerate and any error look tiny)."""

from __future__ import annotations

import copy
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip import backend_choice as choice
from anchorcast_plugins.engines.wav2lip import backends as wb
from anchorcast_plugins.engines.wav2lip import openvino_build as ovb
from anchorcast_plugins.engines.wav2lip.devices import select_device
from anchorcast_plugins.engines.wav2lip.models import ConvBlock, TransposeBlock, Wav2Lip
from tests.wav2lip_inputs import avatar_faces as shared_avatar_faces

needs_openvino = pytest.mark.skipif(ovb.openvino_available() is not None, reason="openvino is not installed")


# --- realistic inputs and weights ------------------------------------------------------------------------


def avatar_faces(count: int, seed: int = 0) -> np.ndarray:
    """Astronaut face inputs whose brightness also varies per frame (see tests/wav2lip_inputs.py)."""
    return shared_avatar_faces(count, seed, brightness_jitter=0.15)


def speech_like_audio(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """Syllables of a glottal pulse train through random formants, with fricative bursts and pauses."""
    rng = np.random.default_rng(seed)
    n = int(seconds * rate)
    t = np.arange(n) / rate
    f0 = 140 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    source = sum(np.cos(k * phase) / k for k in range(1, 40))
    out = np.zeros(n)
    syllable = int(0.22 * rate)
    for start in range(0, n, syllable):
        size = min(n, start + syllable) - start
        if rng.random() < 0.15:
            continue  # a pause
        freqs = np.fft.rfftfreq(size, 1 / rate)
        formants = ((rng.uniform(300, 900), 90), (rng.uniform(900, 2500), 120), (2900, 200))
        shape = 0.05 + sum(np.exp(-0.5 * ((freqs - f) / width) ** 2) for f, width in formants)
        voiced = np.fft.irfft(np.fft.rfft(source[start : start + size]) * shape, size)
        out[start : start + size] = voiced * np.sin(np.pi * np.arange(size) / size) ** 0.7 * rng.uniform(0.3, 1)
        if rng.random() < 0.4:
            k = size // 3
            hiss = np.fft.rfft(rng.standard_normal(k)) * (np.fft.rfftfreq(k, 1 / rate) > 3500)
            out[start : start + k] += 0.3 * np.fft.irfft(hiss, k)
    return (0.5 * out / np.abs(out).max()).astype(np.float32)


def mel_windows(audio: np.ndarray, fps: int = 25) -> np.ndarray:
    """Per-frame (1, 80, 16) windows of the reference's normalised mel (its STFT and dB normalisation; HTK-style
    filters are close enough for realistic value distributions)."""
    y = np.append(audio[0], audio[1:] - 0.97 * audio[:-1])
    frames = np.lib.stride_tricks.sliding_window_view(np.pad(y, 400, mode="reflect"), 800)[::200]
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(800) / 800)
    magnitude = np.abs(np.fft.rfft(frames * window, axis=1)).T
    to_mel, from_mel = (lambda f: 2595 * np.log10(1 + f / 700)), (lambda m: 700 * (10 ** (m / 2595) - 1))
    edges = from_mel(np.linspace(to_mel(55.0), to_mel(7600.0), 82))
    freqs = np.fft.rfftfreq(800, 1 / 16000)
    rising = (freqs[None] - edges[:-2, None]) / (edges[1:-1] - edges[:-2])[:, None]
    falling = (edges[2:, None] - freqs[None]) / (edges[2:] - edges[1:-1])[:, None]
    basis = np.maximum(0, np.minimum(rising, falling)) * (2 / (edges[2:] - edges[:-2]))[:, None]
    db = 20 * np.log10(np.maximum(1e-5, basis @ magnitude)) - 20
    mel = np.clip(8 * (db + 100) / 100 - 4, -4, 4).astype(np.float32)
    count = int((mel.shape[1] - 16) * fps / 80)
    return np.stack([mel[:, int(i * 80 / fps) : int(i * 80 / fps) + 16] for i in range(count)])[:, None]


@torch.no_grad()
def trained_like_generator(seed: int = 0, samples: int = 16) -> Wav2Lip:
    """A generator whose BatchNorm statistics and scales resemble a trained net's: He-initialised convolutions,
    small residual-branch gammas and positive betas (as trained residual nets have), running statistics measured
    on realistic inputs so every layer sees normalised, non-degenerate activations, and output logits scaled to
    span the sigmoid's range (outputs use all of [0, 1])."""
    torch.manual_seed(seed)
    model = Wav2Lip()
    for module in model.modules():
        if isinstance(module, nn.Conv2d | nn.ConvTranspose2d):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.normal_(module.bias, 0.0, 0.02)
        if isinstance(module, ConvBlock | TransposeBlock):
            norm = module.conv_block[1]
            low, high = (0.1, 0.3) if getattr(module, "residual", False) else (0.5, 1.0)
            nn.init.uniform_(norm.weight, low, high)
            nn.init.normal_(norm.bias, 0.2, 0.1)
            norm.reset_running_stats()
            norm.momentum = None  # a cumulative average: one pass sets the statistics exactly
    faces = torch.from_numpy(avatar_faces(samples, seed=seed + 1))
    mels = torch.from_numpy(mel_windows(speech_like_audio(samples * 0.04 + 0.3, seed=seed + 2))[:samples])
    model.train()
    model(mels, faces)
    model.eval()
    logits = model(mels, faces).clamp(1e-6, 1 - 1e-6).logit()
    scale = 1.5 / logits.std()
    final = model.output_block[1]
    final.weight.mul_(scale)
    final.bias.mul_(scale).sub_(logits.mean() * scale)
    return model


def randomise_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters, so that folding changes every weight."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                size = module.num_features
                module.running_mean.copy_(torch.randn(size, generator=generator) * 0.5)
                module.running_var.copy_(torch.rand(size, generator=generator) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(size, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(size, generator=generator) * 0.2)
    return model.eval()


# --- fast tests ------------------------------------------------------------------------------------------


def test_fold_batchnorm_is_equivalent_and_leaves_no_batchnorm() -> None:
    torch.manual_seed(0)
    model = randomise_batchnorm(Wav2Lip())
    before = copy.deepcopy(model.state_dict())
    folded = wb.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    faces = torch.from_numpy(avatar_faces(3))
    mels = torch.randn(3, 1, 80, 16).clamp(-4, 4)
    with torch.no_grad():
        expected, got = model(mels, faces), folded(mels, faces)
        # the pre-sigmoid decoder features are the sensitive part: compare them too, not only the squashed output
        deep_expected = model.face_decoder_blocks[0](model.audio_encoder(mels))
        deep_got = folded.face_decoder_blocks[0](folded.audio_encoder(mels))
    assert (expected - got).abs().max().item() < 1e-4
    assert (deep_expected - deep_got).abs().max().item() < 1e-4 * max(1.0, deep_expected.abs().max().item())


def test_fold_batchnorm_into_a_transposed_convolution_exactly() -> None:
    torch.manual_seed(1)
    block = randomise_batchnorm(nn.Sequential(nn.ConvTranspose2d(8, 5, 3, 2, 1, 1), nn.BatchNorm2d(5)))
    folded = wb.fold_batchnorm(block)
    x = torch.randn(2, 8, 6, 6)
    with torch.no_grad():
        assert torch.allclose(block(x), folded(x), atol=1e-5)
    assert isinstance(folded[1], nn.Identity)


@pytest.mark.slow
def test_cached_features_decode_equals_the_full_forward() -> None:
    model = trained_like_generator(seed=3, samples=4)
    faces = avatar_faces(4, seed=9)
    mels = mel_windows(speech_like_audio(1.0, seed=4))[:4]
    with torch.no_grad():
        full = model(torch.from_numpy(mels), torch.from_numpy(faces)).numpy()
    features = wb.encode_features(model, faces, dtype=np.float32, batch_size=4)
    assert [f.shape[1:] for f in features] == list(wb.FEATURE_SHAPES)
    with torch.no_grad():
        cached = model.decode(torch.from_numpy(mels), [torch.from_numpy(f) for f in features]).numpy()
    assert np.array_equal(cached, full)  # same module, same batch, same arithmetic: bit-identical
    in_threes = wb.encode_features(model, faces, dtype=np.float32, batch_size=3)
    with torch.no_grad():
        regrouped = model.decode(torch.from_numpy(mels), [torch.from_numpy(f) for f in in_threes]).numpy()
    assert np.abs(regrouped - full).max() < 1e-5  # other batch sizes may pick other kernels: rounding only

    backend = wb.TorchBackend(model)
    assert backend.name == "torch-fp32"
    folded = backend.predict(mels, features)
    assert folded.dtype == np.float32 and folded.shape == (4, 3, 96, 96)
    assert np.abs(folded - full).max() < 1e-4

    half = wb.encode_features(model, faces, dtype=np.float16)
    assert sum(f[0].nbytes for f in half) == wb.feature_bytes_per_frame(np.float16) == 581_632
    assert wb.feature_bytes_per_frame(np.float32) == 2 * 581_632
    error = choice.prediction_error(full, backend.predict(mels, half))
    assert error.mean_abs < 2e-3 and error.psnr_db > 45, error  # float16 storage costs next to nothing


def test_selecting_frames_and_making_a_calibration_set() -> None:
    features = [np.arange(5 * np.prod(s), dtype=np.float32).reshape(5, *s) for s in wb.FEATURE_SHAPES]
    picked = wb.select_frames(features, [4, 0, 4])
    assert [p.shape[0] for p in picked] == [3] * 7 and np.array_equal(picked[0][1], features[0][0])
    mels = np.random.default_rng(0).normal(size=(40, 80, 16)).astype(np.float32)
    calibration = wb.make_calibration(mels, features, count=12, batch_size=4)
    assert len(calibration) == 3
    for mel, feats in calibration:
        assert mel.shape == (4, 1, 80, 16) and [f.shape[1:] for f in feats] == list(wb.FEATURE_SHAPES)
    used = np.concatenate([mel for mel, _ in calibration])
    assert np.array_equal(used[0, 0], mels[0]) and np.array_equal(used[-1, 0], mels[-1])  # spread over all windows


def test_prediction_error_measures() -> None:
    reference = np.full((1, 3, 96, 96), 100 / 255)
    same = choice.prediction_error(reference, reference.copy())
    assert same.max_abs == 0 and same.mean_abs == 0 and same.psnr_db == float("inf")
    shifted = reference.copy()
    shifted[0, 0] += 4 / 255  # one channel of three, 4 levels off
    error = choice.prediction_error(reference, shifted)
    assert error.max_abs == pytest.approx(4 / 255) and error.mean_abs == pytest.approx(4 / 255 / 3)
    assert error.psnr_db == pytest.approx(10 * np.log10(255**2 / (16 / 3)), abs=1e-6)
    broken = choice.prediction_error(reference, reference * np.nan)
    assert not choice.Tolerance().accepts(broken)


def test_missing_openvino_is_a_clear_error_and_choose_backend_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    torch.manual_seed(0)
    model = Wav2Lip().eval()
    with pytest.raises(InputError, match="backend openvino-int8 needs OpenVINO") as error:
        ovb.build_openvino_backend(model, "openvino-int8", cache_dir=Path("unused"), weights_id="w")
    assert error.value.hint is not None and "openvino" in error.value.hint
    features = wb.encode_features(model, avatar_faces(2))
    calibration = wb.make_calibration(np.zeros((4, 80, 16), np.float32), features, count=2)
    chosen, reports = choice.choose_backend(
        model, calibration, device=select_device("cpu"), cache_dir=Path("unused"), batch_size=1, repeats=1
    )
    assert chosen.name == "torch-fp32"
    assert [(r.name, r.chosen) for r in reports] == [
        ("torch-fp32", True), ("openvino-fp32", False), ("openvino-int8", False),
    ]  # fmt: skip
    assert all(r.skipped is not None and "needs OpenVINO" in r.skipped for r in reports[1:])


# --- OpenVINO: export, quantisation, cache (slow) --------------------------------------------------------


@pytest.fixture(scope="module")
def avatar() -> dict[str, object]:
    """A trained-like generator, an avatar's cached features, a speech calibration set and a held-out test set."""
    model = trained_like_generator(seed=0)
    features = wb.encode_features(model, avatar_faces(12, seed=5), dtype=np.float16)
    mels = mel_windows(speech_like_audio(12.0, seed=7))
    calibration = wb.make_calibration(mels[:150], [f[:8] for f in features], count=24)
    held_out = wb.make_calibration(mels[150:], [f[8:] for f in features], count=24, batch_size=4, seed=1)
    return {"model": model, "calibration": calibration, "held_out": held_out}


@pytest.fixture(scope="module")
def int8_cache(avatar: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A cache folder holding the int8 model of the trained-like generator, built (cold) here whichever test
    asks first: ``dir``, the ``cold`` backend and its build ``info``."""
    folder = tmp_path_factory.mktemp("w2l-cache")
    cold, info = ovb.build_openvino_backend(avatar["model"], "openvino-int8", cache_dir=folder,
                                           weights_id="w-trained-like", avatar_id="astronaut",
                                           calibration=avatar["calibration"])
    yield {"dir": folder, "cold": cold, "info": info}
    cold.close()


def _predict_all(backend: wb.Backend, pairs: wb.Calibration) -> np.ndarray:
    return np.concatenate([backend.predict(mel, features) for mel, features in pairs])


# Measured on this trained-like generator with 24 calibration samples: max 0.06, mean 0.007, PSNR 40 dB (held-out
# speech and frames). The bounds leave room for other CPUs' kernels.
INT8_TOLERANCE = choice.Tolerance(mean_abs=0.012, max_abs=0.2, psnr_db=35.0)


@pytest.mark.slow
@needs_openvino
def test_int8_matches_fp32_within_tolerance_and_is_cached(avatar: dict, int8_cache: dict) -> None:
    model, calibration, held_out = avatar["model"], avatar["calibration"], avatar["held_out"]
    options = {
        "cache_dir": int8_cache["dir"],
        "weights_id": "w-trained-like",
        "avatar_id": "astronaut",
        "calibration": calibration,
    }
    cold, cold_info = int8_cache["cold"], int8_cache["info"]
    assert not cold_info.cached and cold_info.details["calibration"] == len(calibration)
    assert Path(cold_info.path).is_file() and Path(cold_info.path).with_suffix(".bin").is_file()

    reference = _predict_all(wb.TorchBackend(model), held_out)
    cold_out = _predict_all(cold, held_out)
    error = choice.prediction_error(reference, cold_out)
    assert INT8_TOLERANCE.accepts(error), error
    assert error.max_abs > 0  # it really is a different (quantised) model

    started = time.perf_counter()
    warm, warm_info = ovb.build_openvino_backend(model, "openvino-int8", **options)
    warm_seconds = time.perf_counter() - started
    assert warm_info.cached and warm_info.path == cold_info.path
    assert warm_seconds < cold_info.seconds / 2
    np.testing.assert_array_equal(_predict_all(warm, held_out), cold_out)

    # another avatar or other weights are another entry; a new backend version invalidates all of them
    settings = ovb.QuantisationSettings()
    key = ovb.cache_key("openvino-int8", "w-trained-like", "astronaut", settings)
    assert key == cold_info.key
    assert ovb.cache_key("openvino-int8", "w-trained-like", "someone-else", settings) != key
    assert ovb.cache_key("openvino-int8", "w-other", "astronaut", settings) != key
    assert ovb.cache_key("openvino-fp32", "w", "a", settings) == ovb.cache_key("openvino-fp32", "w", "b", settings)

    # two inference streams: same numbers, whether one batch is split across them or batches are submitted
    streamed, _ = ovb.build_openvino_backend(model, "openvino-int8", streams=2, **options)
    assert streamed.streams == 2 and "2 streams" in streamed.describe()
    mel, features = held_out[0]
    np.testing.assert_allclose(streamed.predict(mel, features), cold_out[: len(mel)], atol=1e-6)
    futures = [streamed.submit(m, f) for m, f in held_out[:3]]
    np.testing.assert_allclose(np.concatenate([f.result() for f in futures]), cold_out[: 3 * len(mel)], atol=1e-6)
    for backend in (warm, streamed):
        backend.close()


@pytest.mark.slow
@needs_openvino
def test_choose_backend_picks_a_fast_backend_within_tolerance(avatar: dict, int8_cache: dict) -> None:
    model, calibration, held_out = avatar["model"], avatar["calibration"], avatar["held_out"]
    common = {"device": select_device("cpu"), "cache_dir": int8_cache["dir"], "weights_id": "w-trained-like",
              "avatar_id": "astronaut", "batch_size": 2, "repeats": 3, "candidates": ("torch-fp32", "openvino-int8")}  # fmt: skip
    chosen, reports = choice.choose_backend(
        model, calibration, tolerance=INT8_TOLERANCE, evaluation=held_out, **common
    )
    by_name = {r.name: r for r in reports}
    assert set(by_name) == {"torch-fp32", "openvino-int8"}
    int8 = by_name["openvino-int8"]
    assert int8.build is not None and int8.build.cached  # loaded, not rebuilt
    assert int8.error is not None and INT8_TOLERANCE.accepts(int8.error)
    assert [r.chosen for r in reports].count(True) == 1
    winner = next(r for r in reports if r.chosen)
    assert chosen.name == winner.name
    assert winner.frames_per_s == max(r.frames_per_s for r in reports if r.frames_per_s is not None)
    assert "frames/s" in str(int8) and "PSNR" in str(int8)
    mel, features = calibration[0]
    assert chosen.predict(mel, features).shape == (len(mel), 3, 96, 96)

    # a backend whose error is over tolerance is never chosen, however fast
    strict = choice.Tolerance(mean_abs=1e-6, max_abs=1e-5, psnr_db=90.0)
    chosen, reports = choice.choose_backend(model, calibration, tolerance=strict, evaluation=held_out[:2], **common)
    assert chosen.name == "torch-fp32"
    assert reports[1].skipped == "error against fp32 over tolerance" and not reports[1].chosen


@pytest.mark.slow
@needs_openvino
def test_fp32_and_int8_on_random_weights(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Wav2Lip().eval()
    features = wb.encode_features(model, avatar_faces(6, seed=2), dtype=np.float32)
    mels = mel_windows(speech_like_audio(4.0, seed=3))
    calibration = wb.make_calibration(mels[:50], [f[:4] for f in features], count=8)
    held_out = wb.make_calibration(mels[50:], [f[4:] for f in features], count=8, batch_size=4, seed=1)
    reference = _predict_all(wb.TorchBackend(model), held_out)
    options = {
        "cache_dir": tmp_path,
        "weights_id": "random-0",
        "avatar_id": "astronaut",
        "calibration": calibration,
    }
    fp32, info = ovb.build_openvino_backend(model, "openvino-fp32", **options)
    assert np.abs(_predict_all(fp32, held_out) - reference).max() < 1e-4
    weights = Path(info.path).with_suffix(".bin")
    weights.write_bytes(weights.read_bytes()[:1000])  # a damaged cache entry is built again, not an error
    rebuilt, rebuilt_info = ovb.build_openvino_backend(model, "openvino-fp32", **options)
    assert not rebuilt_info.cached and weights.stat().st_size > 1000
    assert np.abs(_predict_all(rebuilt, held_out) - reference).max() < 1e-4
    int8, _ = ovb.build_openvino_backend(model, "openvino-int8", **options)
    error = choice.prediction_error(reference, _predict_all(int8, held_out))
    # random init squeezes every output towards 0.5, so the error is tiny; measured: max 3e-4, mean 4e-5
    assert error.max_abs < 5e-3 and error.mean_abs < 1e-3, error


# --- the engine's entry point ----------------------------------------------------------------------------


class PreparedAvatar:
    """What backend_for_avatar reads from a prepared avatar folder: crops, the features path and the folder."""

    def __init__(self, folder: Path, faces: np.ndarray, source_sha256: str = "astronaut") -> None:
        self.folder = folder
        self.crops = np.clip(np.rint(faces[:, 3:].transpose(0, 2, 3, 1) * 255), 0, 255).astype(np.uint8)
        self.source_sha256 = source_sha256

    def features_path(self, weights_id: str) -> Path:
        return self.folder / "features" / f"{weights_id}.npy"


def test_generator_faces_masks_the_lower_half_and_keeps_the_reference() -> None:
    crops = np.random.default_rng(0).integers(0, 256, size=(2, 96, 96, 3), dtype=np.uint8)
    faces = choice.generator_faces(crops)
    assert faces.shape == (2, 6, 96, 96) and faces.dtype == np.float32
    np.testing.assert_allclose(faces[:, 3:], crops.transpose(0, 3, 1, 2) / 255.0, atol=1e-7)
    assert np.array_equal(faces[:, :3, :48], faces[:, 3:, :48]) and not faces[:, :3, 48:].any()


def test_backend_for_avatar_caches_features_and_predicts_by_frame_index(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = randomise_batchnorm(Wav2Lip())
    avatar = PreparedAvatar(tmp_path, avatar_faces(3, seed=4))
    mels = mel_windows(speech_like_audio(1.2, seed=1))
    device = select_device("cpu")
    bound = choice.backend_for_avatar(model, device, avatar, "w1", request="torch", calibration_mels=mels)
    path = avatar.features_path("w1")
    assert path.is_file() and np.load(path, mmap_mode="r").shape == (
        3,
        wb.feature_bytes_per_frame(np.float16) // 2,
    )
    assert bound.name == "torch-fp32" and [r.name for r in bound.reports] == ["torch-fp32"]
    frames = [2, 0, 2]
    with torch.no_grad():
        expected = model(
            torch.from_numpy(mels[:3]), torch.from_numpy(choice.generator_faces(avatar.crops[frames]))
        ).numpy()
    error = choice.prediction_error(expected, bound.predict(mels[:3], frames))
    assert error.max_abs < 5e-3 and error.psnr_db > 50, error  # float16 features; otherwise the same model

    stamp = path.stat().st_mtime_ns
    again = choice.backend_for_avatar(model, device, avatar, "w1", request="torch", calibration_mels=mels)
    assert path.stat().st_mtime_ns == stamp  # read back, not encoded again
    np.testing.assert_array_equal(again.predict(mels[:3], frames), bound.predict(mels[:3], frames))

    with pytest.raises(InputError, match="backend 'tensorrt' is not one of auto, torch"):
        choice.backend_for_avatar(model, device, avatar, "w1", request="tensorrt", calibration_mels=mels)


@pytest.mark.slow
@needs_openvino
def test_backend_for_avatar_reuses_the_int8_model_on_disk(avatar: dict, int8_cache: dict, tmp_path: Path) -> None:
    prepared = PreparedAvatar(tmp_path, avatar_faces(4, seed=5))
    mels = mel_windows(speech_like_audio(3.0, seed=11))
    bound = choice.backend_for_avatar(
        avatar["model"], select_device("cpu"), prepared, "w-trained-like", request="openvino-int8",
        calibration_mels=mels, cache_dir=int8_cache["dir"],
    )  # fmt: skip
    assert bound.name == "openvino-int8"
    (report,) = bound.reports
    assert report.build is not None and report.build.cached and report.error is not None
    assert INT8_TOLERANCE.accepts(report.error), report.error
    assert bound.predict(mels[:2], [3, 1]).shape == (2, 3, 96, 96)
    bound.close()
