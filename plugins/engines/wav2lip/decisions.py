"""Stored backend decisions: what ``backend = "auto"`` chose, kept with the weights so later runs skip measuring.

Measuring the candidate backends takes seconds; its outcome only changes when something it depends on changes.
A decision is stored under a *key* of all of that: the weights, the avatar (its source and prepared crops), the
CPU (model, instruction sets, usable cores, ``ONEDNN_MAX_CPU_ISA``), the library versions, the tolerance, the
candidates, the device, the batch size, the inference streams and :data:`~.backends.BACKEND_VERSION`.

One JSON file per weights, ``<weights folder>/decisions/<weights_id>.json``, holds several entries (one per key,
the newest :data:`MAX_ENTRIES`), each with its key fields, so a miss can say which of them changed. It is
written atomically; a damaged file is ignored with a warning and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from anchorcast_plugins.engines.wav2lip.backends import BACKEND_VERSION, cpu_cores
from anchorcast_plugins.engines.wav2lip.measurement import BackendReport, PredictionError
from anchorcast_plugins.engines.wav2lip.openvino_build import BuildInfo

log = logging.getLogger(__name__)

DECISIONS_FORMAT = "anchorcast-wav2lip-decisions/1"
MAX_ENTRIES = 32
LIBRARIES = ("torch", "openvino", "onnxruntime", "numpy")
CPU_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")
"""The instruction sets OpenVINO's and oneDNN's kernels choose between."""

_LABELS = {
    "weights": "the weights", "avatar": "the avatar", "cpu": "the CPU", "libraries": "the library versions",
    "tolerance": "the tolerance", "candidates": "the candidate backends", "device": "the device",
    "batch_size": "the batch size", "streams": "the inference streams", "backend_version": "the backend version",
}  # fmt: skip


# --- the key ---------------------------------------------------------------------------------------------


def machine_facts() -> dict[str, Any]:
    """The environment a measurement depends on: ``{"cpu": ..., "libraries": ...}`` (tests replace this)."""
    model, flags = _cpuinfo()
    cpu = {"model": model, "flags": list(flags), "cores": cpu_cores(),
           "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA")}
    return {"cpu": cpu, "libraries": _library_versions()}


@cache
def _cpuinfo() -> tuple[str, tuple[str, ...]]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        import platform

        return platform.processor() or platform.machine(), ()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags_line = next((line.split(":", 1)[1] for line in text.splitlines() if line.startswith("flags")), "")
    present = set(flags_line.split())
    return model, tuple(flag for flag in CPU_FLAGS if flag in present)


@cache
def _library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def avatar_fingerprint(avatar: Any) -> dict[str, Any]:
    """The avatar as a measurement sees it: its source file's sha256 and a hash of its prepared 96x96 crops."""
    crops = np.ascontiguousarray(avatar.crops)
    return {
        "source_sha256": str(getattr(avatar, "source_sha256", None) or ""),
        "crops_sha256": hashlib.sha256(crops.data).hexdigest()[:32],
        "frames": len(crops),
    }


def decision_key(
    *, weights_id: str, avatar: Any, device: str, candidates: Sequence[str], tolerance: Mapping[str, float],
    batch_size: int, streams: int,
) -> dict[str, Any]:
    """Everything a stored decision depends on, as JSON-ready fields."""
    facts = machine_facts()
    return {
        "weights": weights_id,
        "avatar": avatar_fingerprint(avatar),
        "cpu": facts["cpu"],
        "libraries": facts["libraries"],
        "tolerance": dict(tolerance),
        "candidates": list(candidates),
        "device": device,
        "batch_size": int(batch_size),
        "streams": int(streams),
        "backend_version": BACKEND_VERSION,
    }


def key_hash(key: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """Which key fields differ, for a log line: ``the CPU changed (was AMD EPYC, avx2 fma, 2 cores)``."""
    changes = []
    for field, label in _LABELS.items():
        before, after = old.get(field), new.get(field)
        if before == after:
            continue
        if field == "libraries" and isinstance(before, dict) and isinstance(after, dict):
            moved = [f"{name} {before.get(name)} -> {after.get(name)}" for name in sorted(set(before) | set(after))
                     if before.get(name) != after.get(name)]
            changes.append(f"{label} changed ({', '.join(moved)})")
        elif field == "cpu" and isinstance(before, dict):
            cores = before.get("cores")
            changes.append(f"{label} changed (was {before.get('model') or 'unknown'}, "
                           f"{' '.join(before.get('flags') or []) or 'no listed flags'}, {cores} cores"
                           + (f", ONEDNN_MAX_CPU_ISA={before['onednn_max_cpu_isa']}"
                              if before.get("onednn_max_cpu_isa") else "") + ")")
        elif field == "avatar" and isinstance(before, dict) and isinstance(after, dict):
            how = "another source" if before.get("source_sha256") != after.get("source_sha256") else "prepared again"
            changes.append(f"{label} changed ({how})")
        else:
            changes.append(f"{label} changed (was {json.dumps(before)})")
    return "; ".join(changes) or "nothing recorded differs"


# --- decisions -------------------------------------------------------------------------------------------


@dataclass
class Decision:
    """A stored choice: the backend, the measurements it was made from, when, and under which key."""

    backend: str
    reports: list[BackendReport]
    measured_at: str
    key: dict[str, Any]

    def chosen_report(self) -> BackendReport | None:
        return next((r for r in self.reports if r.chosen), None)

    def summary(self) -> str:
        """``openvino-int8 as decided on 2026-12-06 (28.3 frames/s; --remeasure to measure again)``."""
        report = self.chosen_report()
        rate = f"{report.frames_per_s:.1f} frames/s; " if report and report.frames_per_s else ""
        return f"{self.backend} as decided on {self.measured_at[:10]} ({rate}--remeasure to measure again)"


def report_to_json(report: BackendReport) -> dict[str, Any]:
    error = None
    if report.error is not None:
        error = {"max_abs": _finite(report.error.max_abs), "mean_abs": _finite(report.error.mean_abs),
                 "psnr_db": _finite(report.error.psnr_db)}
    build = None
    if report.build is not None:
        build = {"cached": report.build.cached, "seconds": round(report.build.seconds, 3), "path": report.build.path,
                 "key": report.build.key}
    return {"name": report.name, "frames_per_s": report.frames_per_s, "error": error, "build": build,
            "chosen": report.chosen, "skipped": report.skipped}


def report_from_json(data: Mapping[str, Any]) -> BackendReport:
    error = data.get("error")
    build = data.get("build")
    return BackendReport(
        name=str(data["name"]),
        frames_per_s=None if data.get("frames_per_s") is None else float(data["frames_per_s"]),
        error=PredictionError(_infinite(error["max_abs"]), _infinite(error["mean_abs"]), _infinite(error["psnr_db"]))
        if error else None,
        build=BuildInfo(str(data["name"]), str(build.get("path", "")), bool(build["cached"]), float(build["seconds"]),
                        str(build.get("key", ""))) if build else None,
        chosen=bool(data.get("chosen")),
        skipped=data.get("skipped"),
    )


def _finite(value: float) -> float | None:
    """JSON has no infinity: None stands for it (an exact match's PSNR)."""
    return None if math.isinf(value) else float(value)


def _infinite(value: float | None) -> float:
    return math.inf if value is None else float(value)


class DecisionStore:
    """The decisions of one weights id, in ``folder`` (default: the weights folder's ``decisions``)."""

    def __init__(self, weights_id: str, folder: Path | None = None) -> None:
        if folder is None:
            from anchorcast_plugins.engines.wav2lip.weights_store import weights_dir

            folder = weights_dir() / "decisions"
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", weights_id).strip("._")[:96] or "weights"
        self.path = Path(folder) / f"{safe}.json"
        self.weights_id = weights_id

    def lookup(self, key: Mapping[str, Any]) -> tuple[Decision | None, str]:
        """The decision stored under ``key``, or None and why none applies (which key fields changed)."""
        entries = self._read()
        entry = entries.get(key_hash(key))
        if entry is not None:
            try:
                return self._decision(entry), ""
            except (KeyError, TypeError, ValueError) as error:
                log.warning("ignoring a damaged entry of %s (%s)", self.path, error)
                return None, "the stored decision was damaged"
        if not entries:
            return None, "no decision is stored for these weights yet"
        closest = min(entries.values(), key=lambda item: (_distance(item.get("key", {}), key),
                                                            _negated(item.get("measured_at", ""))))
        return None, describe_change(closest.get("key", {}), key)

    def store(self, key: Mapping[str, Any], backend: str, reports: Sequence[BackendReport]) -> Decision:
        """Records a decision (replacing one under the same key); a folder that cannot be written is a warning."""
        measured_at = datetime.now(UTC).isoformat(timespec="seconds")
        entry = {"key": dict(key), "backend": backend, "measured_at": measured_at,
                 "reports": [report_to_json(report) for report in reports]}
        entries = self._read()
        entries[key_hash(key)] = entry
        newest = sorted(entries.items(), key=lambda item: item[1].get("measured_at", ""), reverse=True)
        self._write(dict(newest[:MAX_ENTRIES]))
        return self._decision(entry)

    def build_seconds(self, backend: str) -> float | None:
        """How long ``backend`` took to build when it was last built (not loaded) here, for an estimate."""
        times = [(entry.get("measured_at", ""), report["build"]["seconds"])
                 for entry in self._read().values() for report in entry.get("reports", [])
                 if isinstance(report, dict) and report.get("name") == backend and isinstance(report.get("build"), dict)
                 and report["build"].get("cached") is False]
        return float(max(times)[1]) if times else None

    def _decision(self, entry: Mapping[str, Any]) -> Decision:
        return Decision(str(entry["backend"]), [report_from_json(r) for r in entry["reports"]],
                        str(entry["measured_at"]), dict(entry["key"]))

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            log.warning("ignoring the backend decisions file %s: it cannot be read (%s); it will be rewritten",
                        self.path, error)
            return {}
        entries = data.get("entries") if isinstance(data, dict) and data.get("format") == DECISIONS_FORMAT else None
        if not isinstance(entries, dict):
            log.warning("ignoring the backend decisions file %s: not a decisions file of this version; "
                        "it will be rewritten", self.path)
            return {}
        return {k: v for k, v in entries.items() if isinstance(v, dict)}

    def _write(self, entries: dict[str, dict[str, Any]]) -> None:
        data = {"format": DECISIONS_FORMAT, "weights_id": self.weights_id, "entries": entries}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".partial", dir=self.path.parent)
            try:
                with os.fdopen(handle, "w") as file:
                    json.dump(data, file, indent=1, sort_keys=True)
                os.replace(temporary, self.path)
            finally:
                Path(temporary).unlink(missing_ok=True)
        except OSError as error:
            log.warning("could not store the backend decision in %s (%s): the next run measures again",
                        self.path, error.strerror or error)


def _distance(old: Any, new: Mapping[str, Any]) -> int:
    if not isinstance(old, Mapping):
        return len(_LABELS)
    return sum(old.get(field) != new.get(field) for field in _LABELS)


def _negated(text: str) -> tuple[int, ...]:
    """Sorts newer timestamps first under ``min``."""
    return tuple(-ord(c) for c in text)
