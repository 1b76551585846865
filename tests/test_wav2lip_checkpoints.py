"""Wav2Lip weights: every public container, safe refusals, clear messages, and the local weights store.

Checkpoints are built here from our models with seeded random weights (nothing is downloaded). The big files
(the generator with Adam state in the legacy format is about 436 MB) are written once per module and removed
afterwards; tests about a container rather than a size use the smaller SyncNet or discriminator.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import shutil
import warnings
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import save_file
from torch import nn

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.checkpoints import (
    KINDS,
    CheckpointError,
    build_model,
    expected_tensors,
    load_checkpoint,
    tensors_sha256,
)
from anchorcast_plugins.engines.wav2lip.cli_args import configure_weights
from anchorcast_plugins.engines.wav2lip.models import MODEL_KINDS
from anchorcast_plugins.engines.wav2lip.weights_store import (
    default_name,
    import_weights,
    list_weights,
    resolve_weights,
    run_weights,
    weights_dir,
    weights_id,
)

SHARED_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"  # ../shared beside the checkout
REFERENCE = Path(__file__).resolve().parent / "data" / "wav2lip_keys"
"""Copies of the key manifests from ../shared/reference, so that the check runs on any checkout."""
PORTRAIT = Path(__file__).resolve().parents[1] / "plugins" / "engines" / "assets" / "astronaut.png"
NBT = "num_batches_tracked"


def seeded_model(kind: str, seed: int) -> nn.Module:
    """``kind``'s model with random weights and non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = MODEL_KINDS[kind]().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.num_batches_tracked.fill_(1234)
    return model


def assert_same_tensors(loaded: OrderedDict[str, torch.Tensor], source: dict[str, torch.Tensor]) -> None:
    assert list(loaded) == list(source)
    for key, tensor in source.items():
        assert loaded[key].dtype == tensor.dtype, key
        assert torch.equal(loaded[key], tensor), key


class RunsCode:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture
def tmp_path(tmp_path: Path) -> Iterator[Path]:
    """pytest's tmp_path, emptied after each test: the copies here are tens of MB, too big to keep for
    pytest's last three runs."""
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


@pytest.fixture(scope="module")
def sources() -> dict[str, OrderedDict[str, torch.Tensor]]:
    """The state dicts every file here is made from, one per model kind."""
    return {kind: OrderedDict(seeded_model(kind, seed).state_dict()) for seed, kind in enumerate(KINDS)}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("checkpoints")
    yield path
    shutil.rmtree(path, ignore_errors=True)  # hundreds of MB: do not leave them to pytest's retained temp dirs


@pytest.fixture(scope="module")
def adam_generator(folder: Path, sources: dict[str, OrderedDict[str, torch.Tensor]]) -> tuple[
        Path, OrderedDict[str, torch.Tensor]]:
    """The public generator's container, and the tensors in it: the training dict with Adam state after one
    step, in the legacy format."""
    model = build_model("generator", sources["generator"])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    for parameter in model.parameters():
        parameter.grad = torch.full_like(parameter, 1e-3)
    optimizer.step()
    path = folder / "wav2lip_gan.pth"
    checkpoint = {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(), "global_step": 250_000,
                  "global_epoch": 42}  # fmt: skip
    torch.save(checkpoint, path, _use_new_zipfile_serialization=False)
    return path, OrderedDict(model.state_dict())


@pytest.fixture(scope="module")
def torchscript_generator(folder: Path, sources: dict[str, OrderedDict[str, torch.Tensor]]) -> Path:
    """Like the 2025 re-release: a traced generator saved with torch.jit.save."""
    model = build_model("generator", sources["generator"])
    path = folder / "Wav2Lip-SD-GAN.pt"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(model, (torch.rand(1, 1, 80, 16), torch.rand(1, 6, 96, 96)), check_trace=False)
        torch.jit.save(traced, str(path))
    return path


@pytest.fixture(scope="module")
def small_files(folder: Path, sources: dict[str, OrderedDict[str, torch.Tensor]]) -> dict[str, Path]:
    """SyncNet and discriminator files in the other containers."""
    syncnet, disc = sources["syncnet"], sources["discriminator"]
    files = {
        "zip-pickle": folder / "lipsync_expert.pth",
        "bare-state-dict": folder / "visual_quality_disc.pth",
        "safetensors": folder / "lipsync_expert.safetensors",
        "legacy-disc": folder / "disc_legacy.pth",
    }
    torch.save({"state_dict": syncnet, "optimizer": None, "global_step": 99, "global_epoch": 3}, files["zip-pickle"])
    torch.save(disc, files["bare-state-dict"])
    save_file(dict(syncnet), files["safetensors"])
    torch.save({"state_dict": disc, "global_step": 5}, files["legacy-disc"], _use_new_zipfile_serialization=False)
    return files


# --- containers ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # builds the 436 MB file: one Adam step on 36 M parameters
def test_legacy_pickle_with_adam_state_loads_strictly(
        adam_generator: tuple[Path, OrderedDict[str, torch.Tensor]]) -> None:
    legacy_generator, tensors = adam_generator
    assert legacy_generator.stat().st_size > 400e6  # like the public ~416 MB files
    with legacy_generator.open("rb") as file:
        assert file.read(2) == b"\x80\x02"  # a pickle, not a zip: the pre-1.6 format
    loaded = load_checkpoint(legacy_generator, "generator")
    assert (loaded.kind, loaded.container, loaded.file_format) == ("generator", "legacy-pickle", "legacy-pickle")
    assert (loaded.global_step, loaded.global_epoch, loaded.has_optimizer_state) == (250_000, 42, True)
    assert_same_tensors(loaded.state_dict, tensors)
    assert "global_step 250000" in loaded.describe() and "optimizer state" in loaded.describe()


@pytest.mark.slow  # traces the generator
@pytest.mark.filterwarnings("ignore:'torch.load' received a zip file that looks like a TorchScript archive")
def test_torchscript_archive_loads_strictly(torchscript_generator: Path,
                                            sources: dict[str, OrderedDict[str, torch.Tensor]]) -> None:
    with pytest.raises(RuntimeError, match="TorchScript"):  # what plain torch.load(weights_only=True) does
        torch.load(torchscript_generator, weights_only=True)
    loaded = load_checkpoint(torchscript_generator, "generator")
    assert (loaded.kind, loaded.container) == ("generator", "torchscript")
    assert_same_tensors(loaded.state_dict, sources["generator"])
    assert not any(t.requires_grad for t in loaded.state_dict.values())


@pytest.mark.parametrize(("container", "kind"), [
    ("zip-pickle", "syncnet"), ("bare-state-dict", "discriminator"), ("safetensors", "syncnet"),
])  # fmt: skip
def test_other_containers_load_strictly(small_files: dict[str, Path], sources: dict[str, OrderedDict[str, torch.Tensor]],
                                        container: str, kind: str) -> None:
    loaded = load_checkpoint(small_files[container])  # no expected kind: identified from the tensors
    assert (loaded.kind, loaded.container) == (kind, container)
    assert_same_tensors(loaded.state_dict, sources[kind])
    model = build_model(kind, loaded.state_dict)
    assert model.training is False
    if kind == "discriminator":  # the verified weights drive the model exactly as the source model does
        source = seeded_model(kind, KINDS.index(kind))
        faces = torch.rand(1, 3, 96, 96)
        with torch.no_grad():
            assert torch.equal(model(faces), source(faces))
    if container == "zip-pickle":
        assert (loaded.global_step, loaded.global_epoch, loaded.has_optimizer_state) == (99, 3, False)


def test_dataparallel_prefix_and_missing_counters(folder: Path,
                                                  sources: dict[str, OrderedDict[str, torch.Tensor]]) -> None:
    syncnet = sources["syncnet"]
    prefixed = {f"module.{key}": value for key, value in syncnet.items() if not key.endswith(NBT)}
    path = folder / "dataparallel.pth"
    torch.save({"state_dict": prefixed, "global_step": 1}, path, _use_new_zipfile_serialization=False)
    loaded = load_checkpoint(path, "syncnet")
    counters = [key for key in syncnet if key.endswith(NBT)]
    assert len(counters) > 20 and list(loaded.state_dict) == list(syncnet)
    for key in counters:
        filled = loaded.state_dict[key]
        assert filled.dtype == torch.int64 and filled.dim() == 0 and int(filled) == 0
    for key in syncnet:
        if not key.endswith(NBT):
            assert torch.equal(loaded.state_dict[key], syncnet[key])
    assert any("module." in note for note in loaded.notes)
    assert any(f"{len(counters)} missing num_batches_tracked" in note for note in loaded.notes)
    path.unlink()


def test_legacy_file_saved_on_a_gpu_loads_on_cpu(folder: Path,
                                                 sources: dict[str, OrderedDict[str, torch.Tensor]]) -> None:
    """The public files were saved from CUDA: cuda storages and a 'cuda:0' location in the pickle."""
    buffer = io.BytesIO()
    torch.save(sources["syncnet"], buffer, _use_new_zipfile_serialization=False)
    data = buffer.getvalue()
    for storage in (b"FloatStorage", b"LongStorage"):
        data = data.replace(b"ctorch\n" + storage + b"\n", b"ctorch.cuda\n" + storage + b"\n", 1)
    data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0", 1)
    assert data.count(b"cuda") == 3
    path = folder / "saved_on_gpu.pth"
    path.write_bytes(data)
    loaded = load_checkpoint(path, "syncnet")
    assert_same_tensors(loaded.state_dict, sources["syncnet"])
    path.unlink()


def test_numpy_scalars_in_a_training_dict_are_data(folder: Path,
                                                   sources: dict[str, OrderedDict[str, torch.Tensor]]) -> None:
    path = folder / "numpy_step.pth"
    torch.save({"state_dict": sources["discriminator"], "global_step": np.int64(7), "best": np.float64(0.5)}, path)
    loaded = load_checkpoint(path, "discriminator")
    assert loaded.global_step == 7
    path.unlink()


def test_half_precision_weights_come_back_as_float32(folder: Path,
                                                     sources: dict[str, OrderedDict[str, torch.Tensor]]) -> None:
    disc = sources["discriminator"]
    path = folder / "half.pth"
    torch.save({key: value.half() for key, value in disc.items()}, path)
    loaded = load_checkpoint(path, "discriminator")
    for key, value in disc.items():
        assert loaded.state_dict[key].dtype == torch.float32
        assert torch.equal(loaded.state_dict[key], value.half().float())
    path.unlink()


def test_expected_keys_are_the_manifests() -> None:
    manifests = {"generator": "wav2lip_generator", "syncnet": "wav2lip_syncnet_expert",
                 "discriminator": "wav2lip_visual_quality_disc"}  # fmt: skip
    for kind, stem in manifests.items():
        manifest = json.loads((REFERENCE / f"{stem}.keys.json").read_text())
        assert {key: list(shape) for key, (shape, _) in expected_tensors(kind).items()} == manifest
        if SHARED_REFERENCE.is_dir():  # the copies are still the originals
            assert manifest == json.loads((SHARED_REFERENCE / f"{stem}.keys.json").read_text())


# --- refusals -------------------------------------------------------------------------------------------------


def test_the_code_running_payload_is_real(tmp_path: Path) -> None:
    """Unpickled the ordinary way, the payload used below does run (so the refusals prove something)."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(RunsCode(marker)))
    assert marker.exists()


@pytest.mark.parametrize("how", ["zip", "legacy", "pickle-protocol-4", "pickle-protocol-0"])
def test_a_pickle_that_would_run_code_is_refused_unopened(tmp_path: Path, how: str) -> None:
    marker = tmp_path / "ran"
    payload = {"state_dict": {"w": torch.zeros(3)}, "global_step": RunsCode(marker)}
    path = tmp_path / "wav2lip.pth"
    if how == "zip":
        torch.save(payload, path)
    elif how == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(how[-1])))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, "generator")
    assert caught.value.reason == "unsafe"
    message = str(caught.value)
    assert "would run code when loaded" in message and "not opened" in message and "system" in message
    assert isinstance(caught.value, InputError)
    assert not marker.exists()


def test_truncated_zip_checkpoint(small_files: dict[str, Path], tmp_path: Path) -> None:
    data = small_files["zip-pickle"].read_bytes()
    path = tmp_path / "lipsync_expert.pth"
    path.write_bytes(data[: int(len(data) * 0.85)])
    with pytest.raises(CheckpointError, match="truncated or incomplete.*re-download") as caught:
        load_checkpoint(path)
    assert caught.value.reason == "truncated"


@pytest.mark.parametrize("cut", [0.85, 0.3, 1500, 200, 10])
def test_truncated_legacy_checkpoint(small_files: dict[str, Path], tmp_path: Path, cut: float) -> None:
    """Cut in the tensor data (fractions of the file) or inside the pickle before them (byte counts)."""
    source = small_files["legacy-disc"]
    with source.open("rb") as file:
        data = file.read(int(cut * source.stat().st_size if cut < 1 else cut))
    path = tmp_path / "wav2lip.pth"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="truncated or incomplete.*re-download") as caught:
        load_checkpoint(path, "generator")
    assert caught.value.reason == "truncated"


def test_truncated_safetensors_and_torchscript(small_files: dict[str, Path], torchscript_generator: Path,
                                               tmp_path: Path) -> None:
    for source in (small_files["safetensors"], torchscript_generator):
        with source.open("rb") as file:
            data = file.read(int(source.stat().st_size * 0.85))
        path = tmp_path / source.name
        path.write_bytes(data)
        with pytest.raises(CheckpointError, match="truncated or incomplete") as caught:
            load_checkpoint(path)
        assert caught.value.reason == "truncated"
        path.unlink()


@pytest.mark.parametrize(("given", "actual", "words"), [
    ("bare-state-dict", "discriminator", "visual-quality discriminator"),
    ("zip-pickle", "syncnet", "SyncNet lip-sync expert"),
])  # fmt: skip
def test_another_model_given_as_the_generator(small_files: dict[str, Path], given: str, actual: str,
                                              words: str) -> None:
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(small_files[given], "generator")
    assert (caught.value.reason, caught.value.actual_kind) == ("wrong-model", actual)
    assert f"holds the {words}" in str(caught.value) and "not the Wav2Lip generator" in str(caught.value)


@pytest.mark.parametrize("change", ["extra-blocks", "prelu", "shapes"])
def test_a_288_or_384_fork_is_a_different_architecture(tmp_path: Path,
                                                       sources: dict[str, OrderedDict[str, torch.Tensor]],
                                                       change: str) -> None:
    fork = dict(sources["generator"])
    if change == "extra-blocks":  # one more downsampling stage for bigger faces
        fork["face_encoder_blocks.7.0.conv_block.0.weight"] = torch.zeros(512, 512, 3, 3)
        fork["face_encoder_blocks.7.0.conv_block.0.bias"] = torch.zeros(512)
    elif change == "prelu":
        for key in [k for k in fork if k.endswith("conv_block.0.weight")][:10]:
            fork[key.replace("conv_block.0.weight", "act.weight")] = torch.full((1,), 0.25)
    else:
        fork["face_encoder_blocks.0.0.conv_block.0.weight"] = torch.zeros(32, 6, 7, 7)
        fork["output_block.1.weight"] = torch.zeros(3, 32, 3, 3)
    path = tmp_path / "wav2lip_288.pth"
    torch.save(fork, path)
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(path, "generator")
    message = str(caught.value)
    assert (caught.value.reason, caught.value.actual_kind) == ("other-architecture", "generator")
    assert "different architecture" in message and "cannot load" in message and "288 or 384" in message
    assert ("PReLU" in message) == (change == "prelu")
    if change == "shapes":
        assert "2 with other shapes" in message and "[32, 6, 7, 7] instead of [16, 6, 7, 7]" in message
    path.unlink()


@pytest.mark.parametrize(("content", "words"), [
    (b"", "empty"),
    (b"Wav2Lip weights: see the README\n", "a text file"),
    (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title>", "an HTML page"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 435817233\n", "a Git LFS pointer"),
    (b"\0" * 4096, "only zero bytes"),
    (np.random.default_rng(0).bytes(4096), "unrecognised binary data"),
    ("png", "a PNG image"),
    ("zip", "not a PyTorch checkpoint"),
    ("tensors", "match none of the Wav2Lip models"),
])  # fmt: skip
def test_things_that_are_not_checkpoints(tmp_path: Path, content: bytes | str, words: str) -> None:
    path = tmp_path / "wav2lip.pth"
    if content == "png":
        path = PORTRAIT
    elif content == "zip":
        shutil.make_archive(str(tmp_path / "archive"), "zip", PORTRAIT.parent)
        path = tmp_path / "archive.zip"
    elif content == "tensors":
        torch.save({"fc.weight": torch.zeros(10, 4), "fc.bias": torch.zeros(10)}, path)
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a (Wav2Lip )?checkpoint|not a PyTorch checkpoint") as caught:
        load_checkpoint(path, "generator")
    assert caught.value.reason == "not-a-checkpoint"
    assert words in str(caught.value)


def test_a_2_gb_file_is_refused_by_its_size_before_it_is_read(small_files: dict[str, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    big = tmp_path / "wav2lip_huge.pth"
    big.write_bytes(small_files["legacy-disc"].read_bytes()[:4096])  # a real checkpoint's start...
    with big.open("r+b") as file:
        file.truncate(2 << 30)  # ...grown to 2 GiB (sparse: nothing is written)
    opened: list[Any] = []
    monkeypatch.setattr(torch, "load", lambda *args, **kwargs: opened.append(args))
    with pytest.raises(CheckpointError) as caught:
        load_checkpoint(big, "generator")
    assert "2.0 GiB" in str(caught.value) and "not opened" in str(caught.value), caught.value
    assert caught.value.reason == "not-a-checkpoint" and not opened


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found") as caught:
        load_checkpoint(tmp_path / "nope.pth")
    assert caught.value.reason == "missing"
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)


# --- the weights store ------------------------------------------------------------------------------------------


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("ANCHORCAST_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_weights_folder_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANCHORCAST_HOME", str(tmp_path / "anchor"))
    assert weights_dir() == tmp_path / "anchor" / "weights"
    monkeypatch.delenv("ANCHORCAST_HOME")
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert weights_dir() == tmp_path / ".local" / "share" / "anchorcast" / "weights"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert weights_dir() == tmp_path / "data" / "anchorcast" / "weights"


@pytest.mark.slow  # uses the two big generator files
def test_import_list_resolve_round_trip(home: Path, adam_generator: tuple[Path, OrderedDict[str, torch.Tensor]],
                                        torchscript_generator: Path,
                                        sources: dict[str, OrderedDict[str, torch.Tensor]]) -> None:
    legacy_generator, tensors = adam_generator
    assert list_weights() == []
    stored = import_weights(legacy_generator)
    assert stored.name == "wav2lip_gan" and stored.kind == "generator" and stored.global_step == 250_000
    assert stored.path == home / "weights" / "wav2lip_gan.safetensors"
    assert stored.sha256 == tensors_sha256(tensors) and stored.source == "wav2lip_gan.pth"
    assert 140e6 < stored.size < 150e6  # the tensors only: no optimizer state
    assert [entry.name for entry in home.joinpath("weights").iterdir()] == ["wav2lip_gan.safetensors"]

    by_name = resolve_weights("wav2lip_gan")
    assert (by_name.kind, by_name.container, by_name.global_step) == ("generator", "safetensors", 250_000)
    assert_same_tensors(by_name.state_dict, tensors)
    assert weights_id(by_name) == weights_id(stored) == stored.sha256[:16]

    other = import_weights(torchscript_generator, "sd-gan")
    assert other.name == "sd-gan" and other.container == "torchscript"
    by_path = resolve_weights(torchscript_generator)
    assert by_path.container == "torchscript"
    assert weights_id(by_path) == weights_id(other) == weights_id(sources["generator"]) != weights_id(stored)
    assert [(e.name, e.kind) for e in list_weights()] == [("sd-gan", "generator"), ("wav2lip_gan", "generator")]


def test_the_same_weights_in_any_container_have_one_id(small_files: dict[str, Path]) -> None:
    zipped = load_checkpoint(small_files["zip-pickle"])
    as_safetensors = load_checkpoint(small_files["safetensors"])
    assert weights_id(zipped) == weights_id(as_safetensors) == weights_id(zipped.state_dict)
    assert len(weights_id(zipped)) == 16


def test_overwrite_protection(home: Path, small_files: dict[str, Path]) -> None:
    first = import_weights(small_files["bare-state-dict"], "mine")
    assert first.kind == "discriminator" and not first.already_stored
    again = import_weights(small_files["bare-state-dict"], "mine")
    assert again.already_stored and again.sha256 == first.sha256
    with pytest.raises(InputError, match="'mine' is taken") as caught:
        import_weights(small_files["zip-pickle"], "mine")
    assert "--overwrite" in (caught.value.hint or "")
    assert resolve_weights("mine", "discriminator").kind == "discriminator"
    replaced = import_weights(small_files["zip-pickle"], "mine", overwrite=True)
    assert replaced.kind == "syncnet" and replaced.sha256 != first.sha256
    assert [e.kind for e in list_weights()] == ["syncnet"]


def test_a_failed_write_leaves_no_half_file(home: Path, small_files: dict[str, Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    first = import_weights(small_files["bare-state-dict"], "mine")
    before = first.path.read_bytes()

    def disk_full(tensors: dict[str, torch.Tensor], filename: str, metadata: dict[str, str]) -> None:
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    import safetensors.torch

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)  # the writer the store calls
    with pytest.raises(InputError, match="could not write .*No space left"):
        import_weights(small_files["zip-pickle"], "mine", overwrite=True)
    assert [p.name for p in first.path.parent.iterdir()] == ["mine.safetensors"]
    assert first.path.read_bytes() == before


def test_stored_weights_that_were_changed_are_refused(home: Path, small_files: dict[str, Path]) -> None:
    stored = import_weights(small_files["bare-state-dict"], "disc")
    loaded = load_checkpoint(stored.path)
    tensors = dict(loaded.state_dict)
    tensors["binary_pred.0.bias"] = tensors["binary_pred.0.bias"] + 1
    save_file(tensors, stored.path, loaded.metadata)  # same recorded sha256, other tensors
    with pytest.raises(CheckpointError, match="no longer match") as caught:
        resolve_weights("disc", "discriminator")
    assert caught.value.reason == "damaged"


def test_unknown_names_and_paths(home: Path, small_files: dict[str, Path]) -> None:
    with pytest.raises(InputError, match="no weights named 'wav2lip_gan'.*none are stored yet") as caught:
        resolve_weights("wav2lip_gan")
    assert "anchorcast weights import FILE" in (caught.value.hint or "")
    import_weights(small_files["zip-pickle"], "expert")
    with pytest.raises(InputError, match="stored: expert"):
        resolve_weights("wav2lip_gan")
    with pytest.raises(CheckpointError, match="not found"):
        resolve_weights("weights/wav2lip_gan.pth")
    with pytest.raises(CheckpointError, match="SyncNet lip-sync expert"):
        resolve_weights("expert")  # a generator is expected by default
    with pytest.raises(InputError, match="invalid weights name"):
        import_weights(small_files["zip-pickle"], "../escape")


def test_default_names() -> None:
    assert default_name("downloads/wav2lip_gan.pth") == "wav2lip_gan"
    assert default_name("Wav2Lip SD (GAN).pt") == "Wav2Lip-SD-GAN"
    assert default_name("model.safetensors") == "model"
    assert default_name("...pth") == "weights"


def test_cli_import_and_list(home: Path, small_files: dict[str, Path]) -> None:
    parser = argparse.ArgumentParser(prog="anchorcast")
    configure_weights(parser.add_subparsers(dest="command").add_parser("weights"))
    output = io.StringIO()
    console = Console(file=output, width=200)

    args = parser.parse_args(["weights", "list"])
    assert run_weights(None, args, console) == 0
    assert "no weights in" in output.getvalue() and "anchorcast weights import FILE" in output.getvalue()

    args = parser.parse_args(["weights", "import", str(small_files["zip-pickle"]), "--name", "expert"])
    assert run_weights(None, args, console) == 0
    printed = output.getvalue()
    assert "SyncNet lip-sync expert" in printed and "container zip-pickle, global_step 99" in printed
    assert "stored as expert" in printed and str(home / "weights" / "expert.safetensors") in printed

    output.truncate(0)
    assert run_weights(None, parser.parse_args(["weights", "list"]), console) == 0
    stored = list_weights()[0]
    listing = output.getvalue()
    for cell in ("expert", "syncnet", stored.sha256[:12], f"{stored.size / 1e6:.1f}", "lipsync_expert.pth"):
        assert cell in listing

    with pytest.raises(InputError, match="'expert' is taken"):
        run_weights(None, parser.parse_args(["weights", "import", str(small_files["bare-state-dict"]),
                                             "--name", "expert"]), console)
    with pytest.raises(CheckpointError, match="not found"):
        run_weights(None, parser.parse_args(["weights", "import", str(home / "missing.pth")]), console)
    with pytest.raises(SystemExit):
        parser.parse_args(["weights"])  # an action is required
