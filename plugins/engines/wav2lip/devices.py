"""Which torch device the Wav2Lip engine runs on: Cambricon MLU, NVIDIA CUDA or the CPU.

``select_device("auto")`` prefers an MLU (``torch_mlu`` importable and a device present), then CUDA, then the CPU;
an explicit ``"mlu"``, ``"mlu:N"``, ``"cuda"``, ``"cuda:N"`` or ``"cpu"`` is honoured or refused with a clear
:class:`~anchorcast.errors.InputError`. Accelerators run the generator in half precision.

``torch_mlu`` (Cambricon's SDK) is imported only when an MLU is considered, inside a ``try``: an SDK that is missing
or fails to load makes the MLU "unavailable: <reason>", never a crash. Probing goes through a small
:class:`DeviceProbe` so the selection logic is testable without the hardware.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import platform
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

from anchorcast.errors import InputError

if TYPE_CHECKING:  # imported where a device is probed or used: a plain CPU choice needs no torch
    import torch

DeviceKind = Literal["cpu", "cuda", "mlu"]

_REQUEST = re.compile(r"^(auto|cpu|cuda|mlu)(?::(\d+))?$")
_MLU_HINT = "torch_mlu comes with Cambricon's SDK (Cambricon PyTorch); install it to use an MLU"


@dataclass(frozen=True)
class DeviceChoice:
    """The device the engine will use.

    ``device`` is the torch device string (``"cpu"``, ``"cuda:0"``, ``"mlu:0"``); ``half`` says whether the
    generator runs in float16 (on accelerators); ``description`` is a line for logs and ``anchorcast doctor``.
    """

    device: str
    kind: DeviceKind
    half: bool
    description: str

    @property
    def dtype(self) -> torch.dtype:
        import torch

        return torch.float16 if self.half else torch.float32

    @property
    def index(self) -> int | None:
        return int(self.device.split(":")[1]) if ":" in self.device else None


class DeviceProbe(Protocol):
    """What :func:`select_device` asks about the machine."""

    def cuda_count(self) -> int:
        """How many CUDA devices torch sees (0 when CUDA is unusable)."""
        ...

    def cuda_name(self, index: int) -> str: ...

    def mlu_import(self) -> str | None:
        """Imports ``torch_mlu``; ``None`` when it worked, otherwise the reason it is unavailable."""
        ...

    def mlu_count(self) -> int:
        """How many MLUs ``torch.mlu`` sees; only called after a successful :meth:`mlu_import`."""
        ...

    def mlu_name(self, index: int) -> str: ...

    def cpu_description(self) -> str: ...


class TorchDeviceProbe:
    """The real probe: asks torch, and imports ``torch_mlu`` lazily."""

    def __init__(self) -> None:
        self._mlu_status: str | bool | None = False  # False: not tried yet

    def cuda_count(self) -> int:
        import torch

        try:
            return torch.cuda.device_count() if torch.cuda.is_available() else 0
        except Exception:  # a broken driver reads as "no CUDA", never as a crash
            return 0

    def cuda_name(self, index: int) -> str:
        import torch

        try:
            return str(torch.cuda.get_device_name(index))
        except Exception:
            return "CUDA device"

    def mlu_import(self) -> str | None:
        if self._mlu_status is False:
            self._mlu_status = _import_torch_mlu()
        return self._mlu_status  # type: ignore[return-value]

    def mlu_count(self) -> int:
        import torch

        mlu = getattr(torch, "mlu", None)
        if mlu is None:
            return 0
        try:
            return int(mlu.device_count()) if mlu.is_available() else 0
        except Exception:
            return 0

    def mlu_name(self, index: int) -> str:
        import torch

        try:
            return str(torch.mlu.get_device_name(index))  # type: ignore[attr-defined]
        except Exception:
            return "Cambricon MLU"

    def cpu_description(self) -> str:
        import torch

        return _cpu_description(torch.get_num_threads())


def _import_torch_mlu() -> str | None:
    """Imports Cambricon's torch extension; returns why it is unusable, or None."""
    import torch

    try:
        importlib.import_module("torch_mlu")
    except ModuleNotFoundError as error:
        if error.name == "torch_mlu":
            return "torch_mlu is not installed"
        return f"torch_mlu failed to import: {error}"
    except Exception as error:  # a half-installed SDK raises OSError, RuntimeError, ...
        return f"torch_mlu failed to import: {type(error).__name__}: {error}"
    if getattr(torch, "mlu", None) is None:
        return "torch_mlu imported but did not register torch.mlu"
    return None


def parse_request(request: str) -> tuple[str, int | None]:
    """``"cuda:1"`` -> ``("cuda", 1)``; refuses anything that is not auto/cpu/cuda/mlu with an optional index."""
    match = _REQUEST.match(request.strip().lower())
    if match is None:
        raise InputError(
            f"device {request!r} is not one of auto, cpu, cuda, cuda:N, mlu, mlu:N",
            hint='use device = "auto" to pick the best one found',
        )
    kind, index = match.group(1), match.group(2)
    if kind in ("auto", "cpu") and index is not None and not (kind == "cpu" and index == "0"):
        raise InputError(f"device {request!r}: {kind} takes no device index")
    return kind, None if index is None or kind == "cpu" else int(index)


def select_device(request: str = "auto", *, probe: DeviceProbe | None = None) -> DeviceChoice:
    """The device for ``request`` (auto, cpu, cuda[:N], mlu[:N]); raises InputError when it cannot be had."""
    probe = probe or TorchDeviceProbe()
    kind, index = parse_request(request)
    if kind == "cpu":
        return _cpu(probe)
    if kind == "auto":
        if probe.mlu_import() is None and probe.mlu_count() > 0:
            return _mlu(probe, 0)
        if probe.cuda_count() > 0:
            return _cuda(probe, 0)
        return _cpu(probe)
    wanted = f"{kind}:{index}" if index is not None else kind
    if kind == "mlu":
        reason = probe.mlu_import()
        if reason is not None:
            raise InputError(f"{wanted} requested but {reason}", hint=_MLU_HINT)
        count = probe.mlu_count()
        _check_index(wanted, "MLU", index or 0, count, 'check cnmon, or use device = "auto"')
        return _mlu(probe, index or 0)
    count = probe.cuda_count()
    hint = "install a CUDA build of torch 2.13 and check nvidia-smi" if count == 0 else "check nvidia-smi"
    _check_index(wanted, "CUDA", index or 0, count, hint)
    return _cuda(probe, index or 0)


def cpu_without_probing(request: str = "auto") -> DeviceChoice | None:
    """The CPU, chosen without importing torch, when ``request`` is ``cpu``, or ``auto`` on a machine with no trace
    of an accelerator (no ``torch_mlu`` installed, no NVIDIA or AMD GPU device nodes); otherwise None: ask
    :func:`select_device`. Lets a warm start that runs on OpenVINO skip importing torch (about 2 s)."""
    kind, _ = parse_request(request)
    if kind == "auto" and _accelerator_traces():
        return None
    if kind not in ("auto", "cpu"):
        return None
    from anchorcast_plugins.engines.wav2lip.backends import cpu_cores

    return _cpu_choice(_cpu_description(cpu_cores()))  # the threads every CPU backend is given


def _accelerator_traces() -> bool:
    if importlib.util.find_spec("torch_mlu") is not None:
        return True
    dev = Path("/dev")
    return any(dev.glob("nvidia[0-9]*")) or (dev / "kfd").exists() or (dev / "dxg").exists() or any(
        dev.glob("cambricon*")
    )


def _check_index(wanted: str, label: str, index: int, count: int, hint: str) -> None:
    if count == 0:
        raise InputError(f"{wanted} requested but no {label} device is available", hint=hint)
    if index >= count:
        plural = "device" if count == 1 else "devices"
        raise InputError(f"{wanted} requested but only {count} {label} {plural} (0-{count - 1})", hint=hint)


def _cpu(probe: DeviceProbe) -> DeviceChoice:
    return _cpu_choice(probe.cpu_description())


def _cpu_choice(description: str) -> DeviceChoice:
    return DeviceChoice("cpu", "cpu", False, f"cpu ({description}), float32")


def _cpu_description(threads: int) -> str:
    name = platform.processor() or platform.machine() or "CPU"
    return f"{name}, {threads} threads of {os.cpu_count() or 1} cores"


def _cuda(probe: DeviceProbe, index: int) -> DeviceChoice:
    return DeviceChoice(f"cuda:{index}", "cuda", True, f"cuda:{index} ({probe.cuda_name(index)}), float16")


def _mlu(probe: DeviceProbe, index: int) -> DeviceChoice:
    return DeviceChoice(f"mlu:{index}", "mlu", True, f"mlu:{index} ({probe.mlu_name(index)}), float16")


def describe_devices(probe: DeviceProbe | None = None) -> list[str]:
    """One line per kind of device, for ``anchorcast doctor``: what was found and what ``auto`` picks."""
    probe = probe or TorchDeviceProbe()
    reason = probe.mlu_import()
    if reason is None:
        count = probe.mlu_count()
        mlu = f"mlu: {count} device(s)" + "".join(f"; mlu:{i} {probe.mlu_name(i)}" for i in range(count))
    else:
        mlu = f"mlu: unavailable: {reason}"
    count = probe.cuda_count()
    cuda = f"cuda: {count} device(s)" + "".join(f"; cuda:{i} {probe.cuda_name(i)}" for i in range(count))
    if count == 0:
        cuda = "cuda: unavailable: no CUDA device"
    return [
        mlu,
        cuda,
        f"cpu: {probe.cpu_description()}",
        f"auto -> {select_device('auto', probe=probe).description}",
    ]


def synchronize(device: str | torch.device | DeviceChoice) -> None:
    """Waits for queued work on an accelerator (call before reading a clock); a no-op on the CPU."""
    name = device.device if isinstance(device, DeviceChoice) else str(device)
    if name.startswith(("cuda", "mlu")):
        import torch
    if name.startswith("cuda"):
        torch.cuda.synchronize(name)
    elif name.startswith("mlu"):
        torch.mlu.synchronize(name)  # type: ignore[attr-defined]
