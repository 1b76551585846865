"""Device selection for the Wav2Lip engine: auto order, explicit requests, and the lazy torch_mlu import."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.devices import (
    DeviceChoice,
    TorchDeviceProbe,
    describe_devices,
    parse_request,
    select_device,
    synchronize,
)


@dataclass
class Machine:
    """A machine description answering the DeviceProbe questions (the hardware, not the logic, is faked)."""

    cuda: int = 0
    mlu: int = 0
    mlu_problem: str | None = "torch_mlu is not installed"
    imports: list[str] = field(default_factory=list)

    def cuda_count(self) -> int:
        return self.cuda

    def cuda_name(self, index: int) -> str:
        return f"GPU{index}"

    def mlu_import(self) -> str | None:
        self.imports.append("torch_mlu")
        return self.mlu_problem

    def mlu_count(self) -> int:
        return self.mlu

    def mlu_name(self, index: int) -> str:
        return f"MLU{index}"

    def cpu_description(self) -> str:
        return "test CPU"


def test_auto_prefers_mlu_then_cuda_then_cpu() -> None:
    both = Machine(cuda=2, mlu=1, mlu_problem=None)
    assert select_device("auto", probe=both) == DeviceChoice("mlu:0", "mlu", True, "mlu:0 (MLU0), float16")
    assert select_device("auto", probe=Machine(cuda=2)).device == "cuda:0"
    assert select_device("auto", probe=Machine(cuda=1, mlu=0, mlu_problem=None)).device == "cuda:0"
    broken_sdk = Machine(cuda=1, mlu=4, mlu_problem="torch_mlu failed to import: OSError: libcnrt.so")
    assert select_device("auto", probe=broken_sdk).device == "cuda:0"
    cpu = select_device("auto", probe=Machine())
    assert (cpu.device, cpu.kind, cpu.half, cpu.dtype) == ("cpu", "cpu", False, torch.float32)
    assert "test CPU" in cpu.description


def test_accelerators_run_in_half_precision() -> None:
    for request, machine in (("cuda:1", Machine(cuda=2)), ("mlu:1", Machine(mlu=2, mlu_problem=None))):
        choice = select_device(request, probe=machine)
        assert choice.device == request and choice.half and choice.dtype == torch.float16
        assert choice.index == 1
    assert select_device("cpu", probe=Machine(cuda=8)).half is False


def test_explicit_requests_are_honoured_or_refused_clearly() -> None:
    assert select_device("cuda", probe=Machine(cuda=1)).device == "cuda:0"
    assert select_device(" CUDA:0 ", probe=Machine(cuda=1)).device == "cuda:0"
    assert select_device("cpu", probe=Machine(cuda=1, mlu=1, mlu_problem=None)).device == "cpu"
    assert select_device("cpu:0", probe=Machine()).device == "cpu"

    with pytest.raises(InputError, match=r"^mlu:1 requested but torch_mlu is not installed$") as missing:
        select_device("mlu:1", probe=Machine(cuda=1))
    assert missing.value.hint is not None and "Cambricon" in missing.value.hint
    with pytest.raises(InputError, match=r"cuda:3 requested but only 1 CUDA device \(0-0\)"):
        select_device("cuda:3", probe=Machine(cuda=1))
    with pytest.raises(InputError, match=r"mlu:2 requested but only 2 MLU devices \(0-1\)"):
        select_device("mlu:2", probe=Machine(mlu=2, mlu_problem=None))
    with pytest.raises(InputError, match=r"cuda requested but no CUDA device is available"):
        select_device("cuda", probe=Machine())
    with pytest.raises(InputError, match=r"mlu requested but no MLU device is available"):
        select_device("mlu", probe=Machine(mlu=0, mlu_problem=None))
    with pytest.raises(InputError, match=r"failed to import: OSError"):
        select_device("mlu", probe=Machine(mlu_problem="torch_mlu failed to import: OSError: libcnrt.so"))
    for bad in ("gpu", "cuda:x", "cpu:1", "auto:0", ""):
        with pytest.raises(InputError, match="not one of|takes no device index"):
            parse_request(bad)


def test_mlu_is_only_probed_when_considered() -> None:
    machine = Machine(cuda=1)
    select_device("cpu", probe=machine)
    select_device("cuda", probe=machine)
    assert machine.imports == []
    select_device("auto", probe=machine)
    assert machine.imports == ["torch_mlu"]


def test_describe_devices_names_what_was_found() -> None:
    lines = describe_devices(Machine(cuda=1))
    assert lines[0] == "mlu: unavailable: torch_mlu is not installed"
    assert lines[1] == "cuda: 1 device(s); cuda:0 GPU0"
    assert lines[-1] == "auto -> cuda:0 (GPU0), float16"


def test_real_probe_on_this_machine() -> None:
    choice = select_device("auto")
    if "torch_mlu" not in sys.modules:
        expected = "cuda:0" if torch.cuda.is_available() else "cpu"
        assert choice.device == expected
    synchronize(choice)  # must not fail on whatever was chosen
    synchronize("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="cuda:0 requested but no CUDA device"):
            select_device("cuda:0")


# --- the real lazy-import path, with a stand-in torch_mlu package on sys.path ------------------------------

FAKE_SDK = '''
"""Stands in for Cambricon's torch_mlu: importing it attaches torch.mlu, as the SDK does."""
import types
import torch

calls = []
mlu = types.ModuleType("torch.mlu")
mlu.is_available = lambda: True
mlu.device_count = lambda: 2
mlu.get_device_name = lambda index=0: f"MLU370-X8 #{index}"
mlu.synchronize = lambda device=None: calls.append(str(device))
torch.mlu = mlu
'''

BROKEN_SDK = 'raise OSError("libcnrt.so: cannot open shared object file: No such file or directory")\n'


@pytest.fixture
def sdk_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder on sys.path for a stand-in torch_mlu; undoes the import and torch.mlu afterwards."""
    assert "torch_mlu" not in sys.modules and not hasattr(torch, "mlu")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("torch_mlu", None)
    if hasattr(torch, "mlu"):
        delattr(torch, "mlu")


def _install(folder: Path, source: str) -> None:
    package = folder / "torch_mlu"
    package.mkdir()
    (package / "__init__.py").write_text(source)


def test_lazy_import_of_an_installed_sdk(sdk_folder: Path) -> None:
    _install(sdk_folder, FAKE_SDK)
    probe = TorchDeviceProbe()
    assert "torch_mlu" not in sys.modules
    assert select_device("cpu", probe=probe).device == "cpu"
    assert "torch_mlu" not in sys.modules  # not imported unless an MLU is considered

    choice = select_device("auto", probe=probe)
    assert "torch_mlu" in sys.modules
    assert choice == DeviceChoice("mlu:0", "mlu", True, "mlu:0 (MLU370-X8 #0), float16")
    assert select_device("mlu:1").description == "mlu:1 (MLU370-X8 #1), float16"
    with pytest.raises(InputError, match=r"mlu:2 requested but only 2 MLU devices"):
        select_device("mlu:2")
    assert describe_devices()[0] == "mlu: 2 device(s); mlu:0 MLU370-X8 #0; mlu:1 MLU370-X8 #1"

    synchronize(choice)
    assert sys.modules["torch_mlu"].calls == ["mlu:0"]


def test_an_sdk_that_fails_to_import_is_unavailable_not_a_crash(sdk_folder: Path) -> None:
    _install(sdk_folder, BROKEN_SDK)
    choice = select_device("auto")
    assert choice.kind in ("cpu", "cuda")
    with pytest.raises(InputError, match=r"^mlu:0 requested but torch_mlu failed to import: OSError: libcnrt\.so"):
        select_device("mlu:0")
    assert describe_devices()[0].startswith("mlu: unavailable: torch_mlu failed to import: OSError")


def test_an_sdk_that_does_not_register_torch_mlu(sdk_folder: Path) -> None:
    _install(sdk_folder, "VERSION = '0'\n")
    with pytest.raises(InputError, match="did not register torch.mlu"):
        select_device("mlu")
