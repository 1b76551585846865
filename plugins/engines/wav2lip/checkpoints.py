"""Load Wav2Lip weights safely from every container the public weights come in.

:func:`load_checkpoint` accepts the training scripts' legacy (pre-1.6, non-zip) pickle dict
``{"state_dict", "optimizer", "global_step", "global_epoch"}``, the zip pickle format, a bare state dict,
"module." prefixes (DataParallel), missing ``num_batches_tracked``, the TorchScript archive of the 2025 re-release
and safetensors. It identifies which of the three models the tensors belong to by their names and shapes, and ends
with a strict load into our model class, so what it returns loads with ``strict=True``.

Safety: pickles are opened only with ``torch.load(weights_only=True)``, which refuses any pickle that would import
code; a plain (non-PyTorch) pickle is never unpickled at all, only disassembled. TorchScript is the one container
that is loaded with its code (``torch.jit.load``), as the reference notes allow: its code is TorchScript, not Python.
Everything a user can get wrong (a truncated download, the discriminator given as the generator, a 288/384 px
fork, a web page saved as ``.pth``) ends in a :class:`CheckpointError` that says which.
"""

from __future__ import annotations

import functools
import hashlib
import io
import pickle
import pickletools
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import nn

from anchorcast.errors import InputError

from .models import MODEL_KINDS

KINDS: tuple[str, ...] = ("generator", "syncnet", "discriminator")

KIND_NAMES = {
    "generator": "the Wav2Lip generator (wav2lip.pth / wav2lip_gan.pth)",
    "syncnet": "the SyncNet lip-sync expert (lipsync_expert.pth)",
    "discriminator": "the visual-quality discriminator (visual_quality_disc.pth)",
}
"""What each kind is, as the public files name it."""

CONTAINERS = ("legacy-pickle", "zip-pickle", "bare-state-dict", "torchscript", "safetensors")
"""``LoadedCheckpoint.container``: a training dict in either pickle format is ``legacy-pickle`` / ``zip-pickle``;
a pickle holding only the tensors (in either format) is ``bare-state-dict``."""

MAX_CHECKPOINT_BYTES = 1 << 30
"""Larger files are refused before a byte is read: the largest real one, wav2lip_gan.pth with its Adam state, is
about 416 MB; a file several times that is not one of these models and would only fill the memory."""

NUM_BATCHES_TRACKED = "num_batches_tracked"
PREFIXES = ("module.", "_orig_mod.")  # DataParallel, torch.compile
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model", "net")

# The first pickle of a legacy torch.save file is its magic number, a 10-byte LONG1 (after PROTO 2, or a FRAME).
LEGACY_MAGIC = b"\x8a\x0a" + (0x1950A86A20F9469CFC6C).to_bytes(10, "little")
LEGACY_PICKLES = 5  # magic, protocol version, sys info, the object, the storage keys; raw storages follow
ZIP_HEADS = (b"PK\x03\x04", b"PK\x05\x06")


@functools.cache
def _numpy_safe_globals() -> list[Any]:
    """numpy scalars in a training dict (a global_step saved as np.int64, say) are data, not code: allow their
    reconstruction under the names numpy 1.x and 2.x pickle them with."""
    scalar = np._core.multiarray.scalar if hasattr(np, "_core") else np.core.multiarray.scalar
    allowed: list[Any] = [(scalar, "numpy.core.multiarray.scalar"), (scalar, "numpy._core.multiarray.scalar"),
                          (np.dtype, "numpy.dtype")]
    for code in "?bBhHiIlLqQefdg":
        dtype_class = type(np.dtype(code))
        allowed.append((dtype_class, f"numpy.dtypes.{dtype_class.__name__}"))
    return allowed


@functools.cache
def _allowed_global_names() -> frozenset[str]:
    """The globals ``weights_only`` allows (to name only the others in a refusal)."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        names = set(_get_allowed_globals())
    except (ImportError, AttributeError):  # a private helper: only the message loses detail without it
        names = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch.FloatStorage"}
    return frozenset(names | {name for _, name in _numpy_safe_globals()})


_PICKLE_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING", "BINSTRING",
                      "STRING"}  # fmt: skip
_TRUNCATION_SIGNS = ("unexpected eof", "wrong byte size", "central directory", "ran out of input", "truncated",
                     "incomplete")  # fmt: skip
_RE_DOWNLOAD = "the file looks truncated or incomplete: re-download it (and check its size against the source)"
_SIZE_HINT = "compare its size with the source: the public wav2lip.pth and wav2lip_gan.pth are about 416 MB"


class CheckpointError(InputError):
    """A weights file that cannot be used, with one message saying why.

    ``reason`` is one of ``missing``, ``not-a-checkpoint``, ``truncated``, ``unsafe``, ``wrong-model``,
    ``other-architecture``, ``damaged``; ``actual_kind`` names the model found for ``wrong-model`` and
    ``other-architecture``.
    """

    def __init__(self, message: str, *, reason: str, hint: str | None = None, actual_kind: str | None = None):
        super().__init__(message, hint=hint)
        self.reason = reason
        self.actual_kind = actual_kind


@dataclass(eq=False)
class LoadedCheckpoint:
    """Verified weights: ``state_dict`` holds exactly ``kind``'s keys, in the model's order, as CPU tensors
    (floating point as float32), and loads into :func:`build_model` with ``strict=True``."""

    kind: str
    state_dict: OrderedDict[str, torch.Tensor]
    container: str
    path: Path
    file_format: str
    """``legacy-pickle``, ``zip-pickle``, ``torchscript`` or ``safetensors``: how the file itself is encoded."""
    global_step: int | None = None
    global_epoch: int | None = None
    has_optimizer_state: bool = False
    notes: tuple[str, ...] = ()
    """What was repaired on the way: a stripped prefix, filled ``num_batches_tracked`` counters."""
    metadata: dict[str, str] = field(default_factory=dict)
    """A safetensors file's metadata (the weights store records kind, hashes and source there)."""
    _sha256: str | None = field(default=None, repr=False)

    @property
    def tensors_sha256(self) -> str:
        """The sha256 of the tensors (names, dtypes, shapes, bytes): the same weights give the same hash in any
        container."""
        if self._sha256 is None:
            self._sha256 = tensors_sha256(self.state_dict)
        return self._sha256

    def describe(self) -> str:
        """One line for people: what was found and in which container."""
        formats = {"legacy-pickle": "legacy (pre-1.6) PyTorch pickle", "zip-pickle": "PyTorch zip pickle",
                   "torchscript": "TorchScript archive", "safetensors": "safetensors file"}  # fmt: skip
        layout = "a bare state dict" if self.container == "bare-state-dict" else "weights"
        if self.container in ("legacy-pickle", "zip-pickle"):
            layout = "a training checkpoint" + (" with optimizer state" if self.has_optimizer_state else "")
        details = [f"global_step {self.global_step}"] if self.global_step is not None else []
        details += [f"epoch {self.global_epoch}"] if self.global_epoch is not None else []
        count = sum(t.numel() for k, t in self.state_dict.items() if not k.endswith(NUM_BATCHES_TRACKED))
        details.append(f"{count / 1e6:.1f} M parameters")
        return f"{KIND_NAMES[self.kind]}: {layout} in a {formats[self.file_format]} ({', '.join(details)})"


def tensors_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over the tensors in key order: each key, dtype and shape, then the raw bytes."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


@functools.cache
def expected_tensors(kind: str) -> OrderedDict[str, tuple[tuple[int, ...], torch.dtype]]:
    """``kind``'s state-dict keys in model order, each with its shape and dtype (built on the meta device, so no
    memory is allocated; cached per process)."""
    with torch.device("meta"):
        model = MODEL_KINDS[kind]()
    return OrderedDict((key, (tuple(t.shape), t.dtype)) for key, t in model.state_dict().items())


def build_model(kind: str, state_dict: Mapping[str, torch.Tensor], *, share_memory: bool = False) -> nn.Module:
    """``kind``'s model with ``state_dict`` loaded strictly, in eval mode, on the CPU.

    The model is built on the meta device and takes the tensors as they are (no random initialisation first); by
    default they are copied, so changing the model in place (folding BatchNorm, say) leaves ``state_dict`` intact.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; expected one of {', '.join(KINDS)}")
    tensors = {k: (v if share_memory else v.clone()) for k, v in state_dict.items()}
    with torch.device("meta"):
        model = MODEL_KINDS[kind]()
    try:
        model.load_state_dict(tensors, strict=True, assign=True)
    except RuntimeError as error:
        raise CheckpointError(f"the weights do not load into {KIND_NAMES[kind]}: {_first_line(error)}",
                              reason="other-architecture", actual_kind=kind) from None
    return model.eval()


def load_checkpoint(path: str | Path, expected_kind: str | None = None) -> LoadedCheckpoint:
    """Read, identify and verify the weights in ``path``.

    ``expected_kind`` (``generator``, ``syncnet`` or ``discriminator``) makes a file of another model an error
    that names the model it actually holds; ``None`` accepts any of the three.
    """
    if expected_kind is not None and expected_kind not in KINDS:
        raise ValueError(f"unknown model kind {expected_kind!r}; expected one of {', '.join(KINDS)}")
    path = Path(path).expanduser()
    if not path.exists():
        raise CheckpointError(f"weights file not found: {path}", reason="missing")
    if not path.is_file():
        raise CheckpointError(f"{path} is a folder, not a weights file", reason="missing")
    raw = _read_container(path)
    tensors, notes = _strip_prefixes(raw.tensors, path)
    kind = _identify(path, tensors, expected_kind)
    state_dict, filled = _complete(path, tensors, kind)
    if filled:
        notes.append(f"filled {filled} missing num_batches_tracked counters")
    build_model(kind, state_dict, share_memory=True)  # the final word: a strict load into our model
    return LoadedCheckpoint(
        kind=kind, state_dict=state_dict, container=raw.container, path=path, file_format=raw.file_format,
        global_step=raw.global_step, global_epoch=raw.global_epoch, has_optimizer_state=raw.has_optimizer_state,
        notes=tuple(notes), metadata=raw.metadata,
    )


# --- containers ---------------------------------------------------------------------------------------------


@dataclass
class _RawWeights:
    tensors: dict[str, torch.Tensor]
    container: str
    file_format: str
    global_step: int | None = None
    global_epoch: int | None = None
    has_optimizer_state: bool = False
    metadata: dict[str, str] = field(default_factory=dict)


def _read_container(path: Path) -> _RawWeights:
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(f"{path} is empty (0 bytes): not a checkpoint", reason="not-a-checkpoint",
                              hint="the download probably failed; download the weights again")
    if size > MAX_CHECKPOINT_BYTES:
        raise CheckpointError(f"{path} is {size / (1 << 30):.1f} GiB: too large for a Wav2Lip, SyncNet or "
                              f"discriminator checkpoint (at most {MAX_CHECKPOINT_BYTES >> 30} GiB); not opened",
                              reason="not-a-checkpoint", hint=_SIZE_HINT)
    with path.open("rb") as file:
        head = file.read(64)
    if head.startswith(ZIP_HEADS):
        return _read_zip(path)
    if _looks_like_safetensors(head):
        return _read_safetensors(path, head, size)
    if head.startswith(b"\x80") and LEGACY_MAGIC in head[:32]:
        return _unwrap(path, _torch_load(path, "legacy-pickle"), "legacy-pickle")
    if size < 14 and (b"\x80\x02" + LEGACY_MAGIC).startswith(head):
        raise CheckpointError(f"{path} holds only the first {size} bytes of a PyTorch checkpoint: {_RE_DOWNLOAD}",
                              reason="truncated", hint=_SIZE_HINT)
    _refuse_other_file(path, head)
    raise AssertionError("unreachable")


def _read_zip(path: Path) -> _RawWeights:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError):
        raise CheckpointError(f"{path} is an incomplete zip archive (no central directory): {_RE_DOWNLOAD}",
                              reason="truncated", hint=_SIZE_HINT) from None
    if any(name.endswith("/constants.pkl") or "/code/" in name for name in names):
        return _read_torchscript(path)
    if any(name.endswith("/data.pkl") or name == "data.pkl" for name in names):
        return _unwrap(path, _torch_load(path, "zip-pickle"), "zip-pickle")
    raise CheckpointError(f"{path} is a zip archive but not a PyTorch checkpoint (it holds {', '.join(names[:3])}"
                          f"{', ...' if len(names) > 3 else ''})", reason="not-a-checkpoint")


def _read_torchscript(path: Path) -> _RawWeights:
    # The one code-bearing load: TorchScript archives (the 2025 re-release) carry TorchScript, not Python.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the only reader of this format
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as error:
        raise CheckpointError(f"{path} is a TorchScript archive that could not be loaded: {_first_line(error)}",
                              reason="damaged", hint="download the file again") from None
    tensors = {key: value.detach() for key, value in module.state_dict().items()}
    return _RawWeights(tensors, "torchscript", "torchscript")


def _looks_like_safetensors(head: bytes) -> bool:
    header_size = int.from_bytes(head[:8], "little")
    return len(head) > 8 and 2 <= header_size < 1 << 27 and head[8:9] == b"{"


def _read_safetensors(path: Path, head: bytes, size: int) -> _RawWeights:
    from safetensors import SafetensorError

    if 8 + int.from_bytes(head[:8], "little") > size:
        raise CheckpointError(f"{path} is a safetensors file cut short in its header: {_RE_DOWNLOAD}",
                              reason="truncated")
    try:
        tensors, metadata = _read_safetensors_tensors(path)
    except SafetensorError as error:
        if any(sign in str(error).lower() for sign in ("incomplete", "not fully covered", "out of bounds")):
            raise CheckpointError(f"{path} is a safetensors file whose data is cut short: {_RE_DOWNLOAD}",
                                  reason="truncated") from None
        raise CheckpointError(f"{path} is a damaged safetensors file: {_first_line(error)}",
                              reason="damaged") from None
    return _RawWeights(tensors, "safetensors", "safetensors", global_step=_as_int(metadata.get("global_step")),
                       global_epoch=_as_int(metadata.get("global_epoch")), metadata=metadata)


def _read_safetensors_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors in memory of their own: memory-mapped ones would break (SIGBUS) if the file were rewritten,
    as re-importing weights under the same name does."""
    from safetensors import safe_open

    try:
        opened = safe_open(str(path), framework="pt", device="cpu", backend="pread")
        owned = True
    except TypeError:  # safetensors < 0.8 has only memory maps
        opened, owned = safe_open(str(path), framework="pt", device="cpu"), False
    with opened as file:
        metadata = dict(file.metadata() or {})
        tensors = {key: file.get_tensor(key) for key in file.keys()}  # noqa: SIM118 (not a dict)
    return (tensors if owned else {key: value.clone() for key, value in tensors.items()}), metadata


def _torch_load(path: Path, file_format: str) -> Any:
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise _explain_load_failure(path, file_format, error) from None


def _explain_load_failure(path: Path, file_format: str, error: Exception) -> CheckpointError:
    """Why ``torch.load(weights_only=True)`` failed: a file cut short, a pickle that needs code, or damage. The
    pickles are disassembled (never run) to tell a truncated file from one that imports code."""
    complete, globals_ = _scan_torch_pickles(path, file_format)
    message = str(error)
    if not complete or isinstance(error, EOFError) or any(s in message.lower() for s in _TRUNCATION_SIGNS):
        return CheckpointError(f"{path} is incomplete ({_first_line(error)}): {_RE_DOWNLOAD}", reason="truncated",
                               hint=_SIZE_HINT)
    if isinstance(error, pickle.UnpicklingError) and "weights only load failed" in message.lower():
        named = globals_ + re.findall(r"GLOBAL ([\w.]+)", message)
        detail = re.search(r"WeightsUnpickler error:\s*(.+)", message)
        return _unsafe(path, [name for name in named if name not in _allowed_global_names()],
                       detail.group(1).strip() if detail else _first_line(error))
    return CheckpointError(f"{path} could not be read as a checkpoint: {_first_line(error)}", reason="damaged",
                           hint="download the file again")


def _unsafe(path: Path, imports: list[str], detail: str = "") -> CheckpointError:
    hint = "get the weights from a trusted source; never load this file with weights_only=False"
    if not imports:
        return CheckpointError(f"{path} cannot be opened safely ({detail}), so it was not opened. Weights files "
                               "hold only tensors", reason="unsafe", hint=hint)
    return CheckpointError(f"{path} would run code when loaded (it calls {', '.join(dict.fromkeys(imports))}), so "
                           "it was not opened. Weights files hold only tensors", reason="unsafe", hint=hint)


def _unwrap(path: Path, obj: Any, file_format: str) -> _RawWeights:
    """The tensors of a training dict or a bare state dict."""
    if isinstance(obj, Mapping) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return _RawWeights(dict(obj), "bare-state-dict", file_format)
    if isinstance(obj, Mapping):
        for key in STATE_DICT_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return _RawWeights(
                    dict(inner), file_format, file_format, global_step=_as_int(obj.get("global_step")),
                    global_epoch=_as_int(obj.get("global_epoch")),
                    has_optimizer_state=bool(obj.get("optimizer") or obj.get("optimizer_state_dict")),
                )
        keys = ", ".join(repr(k) for k in list(obj)[:5])
        raise CheckpointError(f"{path} is a PyTorch file without model weights: a dict with {keys}"
                              f"{', ...' if len(obj) > 5 else ''} but no state_dict of tensors",
                              reason="not-a-checkpoint")
    raise CheckpointError(f"{path} is a PyTorch file without model weights (it holds a {type(obj).__name__})",
                          reason="not-a-checkpoint")


# --- pickles, disassembled but never run -------------------------------------------------------------------


def _scan_torch_pickles(path: Path, file_format: str) -> tuple[bool, list[str]]:
    """Whether the pickles of a torch file are complete, and the globals they import."""
    try:
        if file_format == "zip-pickle":
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                return True, _pickle_globals(io.BytesIO(archive.read(name)))
        globals_: list[str] = []
        with path.open("rb") as file:
            for _ in range(LEGACY_PICKLES):
                globals_ += _pickle_globals(file)
        return True, globals_
    except (ValueError, EOFError, OSError, zipfile.BadZipFile, StopIteration):
        return False, []


def _pickle_globals(stream: IO[bytes]) -> list[str]:
    """The ``module.name`` of every global one pickle imports, read with :mod:`pickletools` (which disassembles
    and runs nothing). Raises ValueError when the pickle is cut short or is not a pickle."""
    found: list[str] = []
    strings: list[str] = []
    memo: dict[int, Any] = {}
    top: Any = None
    for opcode, arg, _ in pickletools.genops(stream):
        name = opcode.name
        if name in ("GLOBAL", "INST"):
            module, _, qualname = str(arg).partition(" ")
            found.append(f"{module}.{qualname}")
        elif name == "STACK_GLOBAL" and len(strings) >= 2:
            found.append(f"{strings[-2]}.{strings[-1]}")
        value = None
        if name in _PICKLE_STRING_OPS:
            value = arg.decode("latin-1") if isinstance(arg, bytes) else str(arg)
        elif name in ("GET", "BINGET", "LONG_BINGET"):
            value = memo.get(int(arg))
        elif name == "MEMOIZE":
            memo[len(memo)] = top
            continue
        elif name in ("PUT", "BINPUT", "LONG_BINPUT"):
            memo[int(arg)] = top
            continue
        top = value if isinstance(value, str) else None
        if top is not None:
            strings.append(top)
    return found


def _refuse_other_file(path: Path, head: bytes) -> None:
    """Not a PyTorch, TorchScript or safetensors file: a plain pickle (refused, never unpickled) or something
    else entirely, named as well as the first bytes allow."""
    if (head[:1] == b"\x80" and len(head) > 1 and 2 <= head[1] <= 5) or head[:1] in (b"c", b"("):
        try:
            with path.open("rb") as file:
                imports = _pickle_globals(file)
        except ValueError:
            imports = None
        if imports:
            raise _unsafe(path, [name for name in imports if name != "collections.OrderedDict"] or imports)
        if imports is not None:
            raise CheckpointError(f"{path} is a plain Python pickle without tensors, not a checkpoint",
                                  reason="not-a-checkpoint")
    what = _sniff(head)
    hint = "Wav2Lip weights are PyTorch .pth/.pt files or .safetensors; check that the download is the model itself"
    if what == "an HTML page":
        hint = "the download saved a web page instead of the weights: download the file itself"
    elif what == "a Git LFS pointer":
        hint = "fetch the real file with `git lfs pull`"
    elif what == "only zero bytes":
        hint = "the download did not finish: download the weights again"
    raise CheckpointError(f"{path} is not a checkpoint: it looks like {what}", reason="not-a-checkpoint",
                          hint=hint)


_MAGIC = (
    (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
    (b"%PDF", "a PDF document"), (b"\x1f\x8b", "a gzip archive"), (b"\x7fELF", "a program (ELF)"),
    (b"RIFF", "a RIFF file (WAV/AVI/WebP)"), (b"ID3", "an MP3 file"), (b"\x08\x01\x12", "an ONNX model"),
    (b"version https://git-lfs", "a Git LFS pointer"),
)  # fmt: skip


def _sniff(head: bytes) -> str:
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[4:8] == b"ftyp":
        return "an MP4/MOV video"
    if not head.strip(b"\0"):
        return "only zero bytes"
    stripped = head.lstrip().lower()
    if stripped.startswith((b"<!doctype html", b"<html", b"<head", b"<!--")):
        return "an HTML page"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        # a multi-byte character cut at the end of the head is still text
        text = head[:-3].decode("utf-8", errors="replace")
    if text and sum(c.isprintable() or c.isspace() for c in text) >= 0.95 * len(text):
        return "JSON" if stripped.startswith((b"{", b"[")) else "a text file"
    return "unrecognised binary data"


# --- identification ---------------------------------------------------------------------------------------


def _strip_prefixes(tensors: Mapping[str, torch.Tensor], path: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    notes = []
    out: dict[str, torch.Tensor] = {}
    for prefix in PREFIXES:
        if tensors and all(key.startswith(prefix) for key in tensors):
            tensors = {key[len(prefix) :]: value for key, value in tensors.items()}
            notes.append(f"removed the {prefix!r} prefix")
    for key, value in tensors.items():
        if value.is_sparse or value.is_quantized:
            raise CheckpointError(f"{path} holds a sparse or quantized tensor ({key}); Wav2Lip weights are dense",
                                  reason="other-architecture")
        out[key] = value.detach().cpu()
    return out, notes


def _diff(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> tuple[
        list[str], list[str], list[str]]:
    """(extra keys, missing keys other than counters, keys with other shapes)."""
    extra = [k for k in found if k not in expected]
    missing = [k for k in expected if k not in found and not k.endswith(NUM_BATCHES_TRACKED)]
    reshaped = [k for k in found if k in expected and found[k] != expected[k]]
    return extra, missing, reshaped


def _identify(path: Path, tensors: Mapping[str, torch.Tensor], expected_kind: str | None) -> str:
    found = {key: tuple(value.shape) for key, value in tensors.items()}
    candidates: dict[str, tuple[list[str], list[str], list[str]]] = {}
    for kind in KINDS:
        expected = {key: shape for key, (shape, _) in expected_tensors(kind).items()}
        candidates[kind] = _diff(found, expected)
    exact = [kind for kind, diff in candidates.items() if not any(diff)]
    if exact:
        kind = exact[0]
        if expected_kind is not None and kind != expected_kind:
            raise CheckpointError(f"{path} holds {KIND_NAMES[kind]}, not {KIND_NAMES[expected_kind]}",
                                  reason="wrong-model", actual_kind=kind,
                                  hint=f"give the {expected_kind}'s weights here")
        return kind

    def share(kind: str) -> float:
        expected = expected_tensors(kind)
        return len(found.keys() & expected.keys()) / len(found.keys() | expected.keys())

    closest = max(KINDS, key=share)
    if share(closest) < 0.5:
        sample = ", ".join(list(found)[:3])
        raise CheckpointError(f"{path} holds {len(found)} tensors ({sample}, ...) that match none of the Wav2Lip "
                              f"models ({', '.join(KINDS)}): not a Wav2Lip checkpoint", reason="not-a-checkpoint")
    extra, missing, reshaped = candidates[closest]
    expected = expected_tensors(closest)
    parts = []
    if extra:
        prelu = " (PReLU activations among them)" if any(k.endswith(("act.weight", "prelu.weight")) for k in extra) else ""
        parts.append(f"{len(extra)} tensors the original does not have{prelu}, e.g. {extra[0]}")
    if reshaped:
        key = reshaped[0]
        parts.append(f"{len(reshaped)} with other shapes, e.g. {key} {list(found[key])} instead of "
                     f"{list(expected[key][0])}")
    if missing:
        parts.append(f"{len(missing)} missing, e.g. {missing[0]}")
    wanted = "" if expected_kind in (None, closest) else f" (and {KIND_NAMES[expected_kind]} was expected)"
    raise CheckpointError(
        f"{path} is a different architecture from {KIND_NAMES[closest]}{wanted}: {'; '.join(parts)}. It looks like "
        "a fork (for example one for 288 or 384 px faces) and cannot load these weights into the 96 px Wav2Lip",
        reason="other-architecture", actual_kind=closest,
        hint="use the original Wav2Lip weights (wav2lip.pth, wav2lip_gan.pth or the Wav2Lip-SD-*.pt re-release)",
    )


def _complete(path: Path, tensors: Mapping[str, torch.Tensor], kind: str) -> tuple[
        OrderedDict[str, torch.Tensor], int]:
    """The tensors in model order, floats as float32, missing counters filled with 0."""
    state_dict: OrderedDict[str, torch.Tensor] = OrderedDict()
    filled = 0
    for key, (_, dtype) in expected_tensors(kind).items():
        tensor = tensors.get(key)
        if tensor is None:
            tensor = torch.zeros((), dtype=torch.int64)
            filled += 1
        elif dtype.is_floating_point != tensor.is_floating_point():
            raise CheckpointError(f"{path}: {key} holds {str(tensor.dtype).removeprefix('torch.')} values where "
                                  f"{str(dtype).removeprefix('torch.')} is expected", reason="damaged")
        else:
            tensor = tensor.to(dtype)
        state_dict[key] = tensor
    return state_dict, filled


# --- small helpers ----------------------------------------------------------------------------------------


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, np.integer)) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    return None


def _first_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0][:300] if lines else type(error).__name__
