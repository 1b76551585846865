"""The local weights folder: verified safetensors copies of Wav2Lip weights, named so profiles can use them.

``anchorcast weights import FILE`` verifies a checkpoint in any container :func:`~.checkpoints.load_checkpoint`
accepts and stores ``<name>.safetensors`` with its model kind, hashes and source in the file's metadata;
``anchorcast weights list`` shows what is stored; ``anchorcast weights bench NAME`` measures the backends for them
and an avatar and stores the choice (:mod:`.weights_bench`, :mod:`.decisions`). A profile names weights by store name or by path
(:func:`resolve_weights`). The folder is ``$ANCHORCAST_HOME/weights`` when ``ANCHORCAST_HOME`` is set, else
``$XDG_DATA_HOME/anchorcast/weights`` (``~/.local/share/anchorcast/weights``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import secrets
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table
from safetensors import SafetensorError, safe_open

from anchorcast.errors import InputError
from anchorcast.storage import anchorcast_home, file_sha256

if TYPE_CHECKING:  # torch loads with the checkpoint: a warm start on cached OpenVINO models never needs it
    import torch

    from .checkpoints import LoadedCheckpoint

log = logging.getLogger(__name__)

WEIGHTS_FORMAT = "anchorcast-wav2lip-weights/1"
SUFFIX = ".safetensors"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
WEIGHTS_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".tar", ".safetensors", ".pkl")
STORED_KINDS = ("generator", "syncnet", "discriminator")
"""What a stored file may hold (checkpoints.KINDS, which tests keep equal; that module imports torch)."""
IMPORT_HINT = "import weights with `anchorcast weights import FILE [--name NAME]`"


@dataclasses.dataclass(frozen=True)
class StoredWeights:
    """One entry of the weights folder, as its metadata records it."""

    name: str
    kind: str
    sha256: str
    """sha256 of the tensors (:func:`~.checkpoints.tensors_sha256`), the same for the same weights in any container."""
    size: int
    path: Path
    source: str
    source_sha256: str = ""
    container: str = ""
    imported_at: str = ""
    global_step: int | None = None
    already_stored: bool = dataclasses.field(default=False, compare=False)
    """Set by :func:`import_weights` when the same tensors were already stored under this name."""

    @property
    def weights_id(self) -> str:
        return self.sha256[:16]


def weights_dir() -> Path:
    """The weights folder (not created here)."""
    return anchorcast_home() / "weights"


def weights_id(weights: LoadedCheckpoint | StoredWeights | Mapping[str, torch.Tensor]) -> str:
    """A stable short id of the tensors (the first 16 hex digits of their sha256), for keying cached features."""
    from .checkpoints import LoadedCheckpoint

    if isinstance(weights, StoredWeights):
        return weights.weights_id
    if isinstance(weights, LoadedCheckpoint):
        return weights.tensors_sha256[:16]
    from .checkpoints import tensors_sha256

    return tensors_sha256(weights)[:16]


def default_name(path: str | Path) -> str:
    """A store name from a file name: its stem with anything but letters, digits, '.', '_' and '-' replaced."""
    stem = Path(path).name
    for suffix in WEIGHTS_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-._")[:64].rstrip("-._")
    return name or "weights"


def import_weights(path: str | Path, name: str | None = None, *, overwrite: bool = False,
                   expected_kind: str | None = None) -> StoredWeights:
    """Verify ``path`` and store its tensors as ``<name>.safetensors`` in the weights folder.

    The file is written to a temporary name and renamed, so the folder never holds half a file. A name already
    holding other tensors is refused unless ``overwrite``; the same tensors again are left as they are.
    """
    source = Path(path).expanduser()
    name = _check_name(name) if name is not None else default_name(source)
    from .checkpoints import load_checkpoint

    loaded = load_checkpoint(source, expected_kind)
    tensors = {key: value.contiguous() for key, value in loaded.state_dict.items()}
    sha256 = loaded.tensors_sha256
    folder = weights_dir()
    target = folder / f"{name}{SUFFIX}"
    existing = _read_entry(target) if target.exists() else None
    if existing is not None and existing.sha256 == sha256:
        return dataclasses.replace(existing, already_stored=True)
    if target.exists() and not overwrite:
        what = f"{existing.kind} weights (sha256 {existing.sha256[:12]})" if existing else "an unreadable file"
        raise InputError(f"the weights name {name!r} is taken by other {what}: {target}",
                         hint="choose another --name, or pass --overwrite to replace them")
    metadata = {
        "format": WEIGHTS_FORMAT,
        "kind": loaded.kind,
        "sha256": sha256,
        "source": source.name,
        "source_sha256": file_sha256(source),
        "container": loaded.container,
        "imported_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    if loaded.global_step is not None:
        metadata["global_step"] = str(loaded.global_step)
    if loaded.global_epoch is not None:
        metadata["global_epoch"] = str(loaded.global_epoch)
    _write_atomically(folder, target, tensors, metadata)
    entry = _read_entry(target)
    if entry is None:
        raise InputError(f"{target} was written but cannot be read back", hint="check the weights folder's disk")
    return entry


def list_weights() -> list[StoredWeights]:
    """The stored weights, by name. Files that are not readable stored weights are skipped with a warning."""
    folder = weights_dir()
    if not folder.is_dir():
        return []
    entries = []
    for path in sorted(folder.glob(f"*{SUFFIX}")):
        if path.name.startswith("."):
            continue
        entry = _read_entry(path)
        if entry is None:
            log.warning("skipping %s: not a readable stored weights file", path)
        else:
            entries.append(entry)
    return entries


def stored_generator_id(name: str) -> str | None:
    """The weights id of generator weights stored under ``name``, from the stored file's header (neither its
    tensors nor torch are loaded: a warm start whose models are all cached uses nothing else); None when ``name``
    is a path, is not stored, or its header records no hash. :func:`resolve_weights` verifies the tensors when the
    weights are loaded."""
    text = str(name).strip()
    if not NAME_PATTERN.fullmatch(text):
        return None
    stored = weights_dir() / f"{text}{SUFFIX}"
    entry = _read_entry(stored) if stored.is_file() else None
    if entry is None or entry.kind != "generator" or len(entry.sha256) < 16:
        return None
    return entry.weights_id


def resolve_weights(name_or_path: str | Path, expected_kind: str | None = "generator") -> LoadedCheckpoint:
    """The verified weights a profile names: a store name (see :func:`list_weights`) or a path to a file in any
    supported container. A stored file whose tensors no longer match their recorded hash is refused."""
    from .checkpoints import CheckpointError, load_checkpoint

    text = str(name_or_path).strip()
    if not text:
        raise InputError("no weights given", hint=IMPORT_HINT)
    if not isinstance(name_or_path, Path) and NAME_PATTERN.fullmatch(text):
        stored = weights_dir() / f"{text}{SUFFIX}"
        if stored.is_file():
            loaded = load_checkpoint(stored, expected_kind)
            recorded = loaded.metadata.get("sha256")
            if recorded and recorded != loaded.tensors_sha256:
                raise CheckpointError(f"the stored weights {text!r} ({stored}) no longer match their recorded "
                                      "sha256: the file was changed or damaged", reason="damaged",
                                      hint="import the original file again with --overwrite")
            return loaded
    path = Path(text).expanduser()
    if path.exists() or _looks_like_path(text):
        return load_checkpoint(path, expected_kind)
    names = [entry.name for entry in list_weights()]
    known = f"stored: {', '.join(names)}" if names else "none are stored yet"
    raise InputError(f"no weights named {text!r} in {weights_dir()} ({known}), and no such file",
                     hint=IMPORT_HINT)


# --- CLI ----------------------------------------------------------------------------------------------------


def run_weights(host: Any, args: argparse.Namespace, console: Console | None = None) -> int:
    """Run ``anchorcast weights ...``; user mistakes raise :class:`InputError` for the CLI to print."""
    out = console or Console()
    if args.weights_action == "import":
        return _run_import(out, args)
    if args.weights_action == "list":
        return _run_list(out)
    if args.weights_action == "bench":
        from .weights_bench import run_bench

        return run_bench(out, args)
    raise InputError(f"unknown weights action {args.weights_action!r}", hint="use `import`, `list` or `bench`")


def _run_import(out: Console, args: argparse.Namespace) -> int:
    entry = import_weights(args.file, args.name, overwrite=args.overwrite)
    step = f", global_step {entry.global_step}" if entry.global_step is not None else ""
    from .checkpoints import KIND_NAMES

    out.print(f"found {KIND_NAMES[entry.kind]} in {args.file} (container {entry.container}{step})",
              highlight=False)
    verb = "already stored as" if entry.already_stored else "stored as"
    out.print(f"[green]{verb}[/] [bold]{entry.name}[/]: {entry.path} ({entry.size / 1e6:.1f} MB, "
              f"sha256 {entry.sha256[:16]})", highlight=False)
    if entry.kind == "generator":
        out.print(f"use it in a profile's engine table: weights = \"{entry.name}\"", highlight=False)
    else:
        out.print("[yellow]note:[/] the lip engine runs the generator; this model is only used for training",
                  highlight=False)
    return 0


def _run_list(out: Console) -> int:
    entries = list_weights()
    if not entries:
        out.print(f"no weights in {weights_dir()}; {IMPORT_HINT}", highlight=False)
        return 0
    table = Table(title=f"weights in {weights_dir()}", header_style="bold")
    for column, justify in (("name", "left"), ("kind", "left"), ("sha256", "left"), ("MB", "right"),
                            ("source", "left")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for entry in entries:
        table.add_row(entry.name, entry.kind, entry.sha256[:12], f"{entry.size / 1e6:.1f}", entry.source)
    out.print(table)
    return 0


# --- files --------------------------------------------------------------------------------------------------


def _check_name(name: str) -> str:
    name = name.strip()
    if name.lower().endswith(SUFFIX):
        name = name[: -len(SUFFIX)]
    if not NAME_PATTERN.fullmatch(name):
        raise InputError(f"invalid weights name {name!r}: use up to 64 letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit", hint=f"for example --name {default_name(name)}")
    return name


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.startswith("~") or text.lower().endswith(WEIGHTS_SUFFIXES)


def _read_entry(path: Path) -> StoredWeights | None:
    """A stored file's record from its safetensors metadata (the tensors are not read)."""
    try:
        with safe_open(str(path), framework="numpy") as file:
            metadata = dict(file.metadata() or {})
    except (SafetensorError, OSError):
        return None
    if metadata.get("format") != WEIGHTS_FORMAT or metadata.get("kind") not in STORED_KINDS:
        return None
    step = metadata.get("global_step", "")
    return StoredWeights(
        name=path.name[: -len(SUFFIX)], kind=metadata["kind"], sha256=metadata.get("sha256", ""),
        size=path.stat().st_size, path=path, source=metadata.get("source", ""),
        source_sha256=metadata.get("source_sha256", ""), container=metadata.get("container", ""),
        imported_at=metadata.get("imported_at", ""), global_step=int(step) if step.lstrip("-").isdigit() else None,
    )


def _write_atomically(folder: Path, target: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the weights folder {folder}: {error.strerror or error}",
                         hint="set ANCHORCAST_HOME to a writable folder") from None
    # A hidden name that list_weights skips; created by save_file, so the file gets the usual permissions.
    temporary = folder / f".{target.stem}.{secrets.token_hex(6)}.partial"
    try:
        from safetensors.torch import save_file

        save_file(tensors, temporary, metadata)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise InputError(f"could not write {target}: {error.strerror or error}",
                             hint="check the free space and permissions of the weights folder") from None
        raise
