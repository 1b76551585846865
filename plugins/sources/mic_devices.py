"""Input devices for the ``mic`` source: what PortAudio can record from, and the one a profile names.

sounddevice is imported only when a device is looked up, so listing the plugins needs neither it nor PortAudio.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anchorcast.errors import InputError

AUDIO_SETUP_HINT = (
    "on Linux, run a sound server: PulseAudio or PipeWire (apt-get install pulseaudio libasound2-plugins) and "
    "check `pactl list short sources`; plain ALSA devices need the user in the 'audio' group. On Windows and "
    "macOS, plug in or enable a microphone in the system's sound settings"
)

_CHOOSE_HINT = "set device to one of them: its index or part of its name"


# --- devices ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputDevice:
    """A PortAudio device that can capture."""

    index: int
    name: str
    host_api: str
    channels: int
    default_rate: float

    def describe(self) -> str:
        return f"{self.index}: {self.name} ({self.host_api}, {self.channels} in)"


def import_sounddevice() -> Any:
    """sounddevice, or a clear :class:`InputError` when it or the PortAudio library is missing."""
    try:
        import sounddevice
    except ImportError as error:
        raise InputError(
            f"the mic source needs the sounddevice package, which is not installed ({error})",
            hint="pip install sounddevice",
        ) from error
    except OSError as error:  # sounddevice finds no libportaudio at import
        raise InputError(
            f"the mic source needs the PortAudio library, which was not found ({error})",
            hint="on Debian/Ubuntu: sudo apt-get install libportaudio2",
        ) from error
    return sounddevice


def input_devices(sd: Any) -> list[InputDevice]:
    """Every device PortAudio found that has at least one input channel."""
    apis = [api["name"] for api in sd.query_hostapis()]
    return [
        InputDevice(int(d["index"]), str(d["name"]), apis[d["hostapi"]], int(d["max_input_channels"]),
                    float(d["default_samplerate"]))
        for d in sd.query_devices()
        if d["max_input_channels"] > 0
    ]


def describe_devices(devices: list[InputDevice]) -> str:
    return "; ".join(device.describe() for device in devices)


def find_device(sd: Any, wanted: str | int | None) -> InputDevice:
    """The input device a profile names (an index, part of a name, or None for the system default)."""
    devices = input_devices(sd)
    if not devices:
        raise InputError("mic: no audio input device found (PortAudio sees no device that can record)",
                         hint=AUDIO_SETUP_HINT)
    listing = f"available input devices: {describe_devices(devices)}"
    by_index = {device.index: device for device in devices}
    if isinstance(wanted, str) and wanted.strip().isdigit():
        wanted = int(wanted)
    if wanted is None:
        default = sd.default.device[0]
        if default is None or int(default) < 0 or int(default) not in by_index:
            raise InputError(f"mic: there is no default input device; {listing}",
                             hint="set device to one of them (its index or part of its name)")
        return by_index[int(default)]
    if isinstance(wanted, int):
        if wanted not in by_index:
            raise InputError(f"mic: device = {wanted} is not an input device; {listing}", hint=_CHOOSE_HINT)
        return by_index[wanted]
    needle = wanted.strip().lower()
    exact = [device for device in devices if device.name.lower() == needle]
    matches = exact or [device for device in devices if needle in device.name.lower()]
    if not matches:
        raise InputError(f"mic: no input device matches device = {wanted!r}; {listing}", hint=_CHOOSE_HINT)
    if len(matches) > 1:
        raise InputError(
            f"mic: device = {wanted!r} matches {len(matches)} input devices: {describe_devices(matches)}",
            hint="give more of the name, or the device's index",
        )
    return matches[0]
