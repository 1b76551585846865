"""The ``virtualcam`` output through pyvirtualcam's own ``Camera`` code.

No video device can exist here (no kernel modules), so the tests register a pyvirtualcam backend that keeps
what it is sent; everything between the output and that backend (the Camera's checks, reshaping and the backend
protocol) is the real pyvirtualcam. The no-device path uses pyvirtualcam's real default backend.
"""

from __future__ import annotations

import glob
import platform
import subprocess
import sys
import time
from fractions import Fraction
from typing import Any, ClassVar

import numpy as np
import pytest

from anchorcast.errors import InputError
from anchorcast.host import Host
from anchorcast.media import AudioChunk, StreamFormat, VideoFrame
from anchorcast.plugin_manager import PluginPolicy
from anchorcast_plugins.outputs import virtualcam_output
from anchorcast_plugins.outputs.virtualcam_output import VirtualCamOutput
from tests.components import RecordingPlugin
from tests.conftest import make_profile

pyvirtualcam = pytest.importorskip("pyvirtualcam")

BACKEND = "anchorcast-test-recorder"


class RecordingBackend:
    """A pyvirtualcam backend (the interface of ``pyvirtualcam.camera.Backend``) that keeps copies of the frames
    it is sent, as a real device would copy them out."""

    opened: ClassVar[list[RecordingBackend]] = []

    def __init__(self, *, width: int, height: int, fps: float, fourcc: int, device: str | None, **kw: Any) -> None:
        self.width, self.height, self.fps, self.fourcc = width, height, fps, fourcc
        self._device = device or "/dev/video-test"
        self.frames: list[np.ndarray] = []
        self.closed = False
        self.keep = True
        self._buffer: np.ndarray | None = None
        RecordingBackend.opened.append(self)

    def send(self, frame: np.ndarray) -> None:
        assert not self.closed
        if self.keep:
            self.frames.append(frame.copy())
        else:  # copied into one buffer, as a device's driver does
            if self._buffer is None or self._buffer.shape != frame.shape:
                self._buffer = np.empty_like(frame)
            np.copyto(self._buffer, frame)

    def close(self) -> None:
        self.closed = True

    def device(self) -> str:
        return self._device

    def native_fourcc(self) -> int | None:
        return self.fourcc


@pytest.fixture
def recorder() -> Any:
    """The recording backend, registered for one test (a test without it sees only pyvirtualcam's own)."""
    pyvirtualcam.register_backend(BACKEND, RecordingBackend)
    RecordingBackend.opened.clear()
    yield RecordingBackend
    pyvirtualcam.camera.BACKENDS.pop(BACKEND, None)
    RecordingBackend.opened.clear()


def frame(index: int, width: int = 64, height: int = 48, channels: int = 3) -> VideoFrame:
    """A frame whose pixels encode its index and position, so order and layout can be checked."""
    y, x = np.mgrid[0:height, 0:width]
    image = np.stack([np.full_like(x, index), x, y, np.full_like(x, 200)][:channels], axis=-1)
    return VideoFrame((image % 256).astype(np.uint8), index, Fraction(25))


def silence(index: int) -> AudioChunk:
    return AudioChunk(np.zeros(640, np.float32), 16000, index * 640)


def test_the_plugin_registers_virtualcam_without_importing_pyvirtualcam() -> None:
    code = ("import sys; from anchorcast.host import Host; from anchorcast.plugin_manager import PluginPolicy; "
            "from anchorcast_plugins.outputs import virtualcam_output; "
            "host = Host.create(PluginPolicy(), entry_points=False, extra_plugins=(virtualcam_output,)); "
            "assert host.plugins.component('output', 'virtualcam') is not None; "
            "assert 'pyvirtualcam' not in sys.modules and 'cv2' not in sys.modules; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "ok", result.stderr


def test_frames_reach_the_camera_in_order_with_their_size_and_content(recorder: Any) -> None:
    output = VirtualCamOutput(backend=BACKEND)
    output.open(StreamFormat(64, 48, Fraction(25), 16000))
    [backend] = RecordingBackend.opened
    assert (backend.width, backend.height, backend.fps) == (64, 48, 25.0)
    assert pyvirtualcam.util.decode_fourcc(backend.fourcc) == pyvirtualcam.PixelFormat.RGB.value
    assert output.camera.device == "/dev/video-test"

    sent = [frame(i, channels=4 if i == 3 else 3) for i in range(6)]
    for item in sent:
        output.write(item, silence(item.index))
    output.close()

    assert backend.closed and output.camera is None
    assert len(backend.frames) == len(sent) == output.frames_sent
    for received, item in zip(backend.frames, sent, strict=True):
        assert received.dtype == np.uint8 and received.ndim == 1  # pyvirtualcam hands backends flat C arrays
        np.testing.assert_array_equal(received.reshape(48, 64, 3), item.image[..., :3])


def test_frames_of_another_size_are_refused_with_the_sizes(recorder: Any) -> None:
    output = VirtualCamOutput(backend=BACKEND)
    output.open(StreamFormat(64, 48, Fraction(25), 16000))
    with pytest.raises(ValueError, match="32x48.*64x48"):
        output.write(frame(0, width=32), silence(0))
    output.close()


def test_the_host_streams_every_frame_to_the_camera_at_the_stream_size(recorder: Any) -> None:
    plugin = RecordingPlugin()
    host = Host.create(PluginPolicy(), entry_points=False, extra_plugins=(plugin, virtualcam_output))
    raw = make_profile(outputs={"camera": {"use": "virtualcam", "backend": BACKEND},
                                "collect": {"use": "test-collect"}})
    report = host.run(host.load_profile(None, raw=raw))

    [backend] = RecordingBackend.opened
    [collected] = plugin.outputs
    assert (backend.width, backend.height, backend.fps) == (64, 48, 25.0)
    assert len(backend.frames) == report["frames"] == len(collected.indices) > 0
    means = [float(f.mean()) for f in backend.frames]
    assert means == pytest.approx(collected.values)  # the same frames, in the same order
    assert backend.closed
    assert report["wall_seconds"] >= 0.9 * report["media_seconds"]  # live: paced on the wall clock


def test_without_a_device_the_error_says_how_to_get_one() -> None:
    if platform.system() == "Linux" and glob.glob("/dev/video*"):
        pytest.skip("this machine has video devices: the default backend may find a real virtual camera")
    output = VirtualCamOutput()
    with pytest.raises(InputError) as caught:
        output.open(StreamFormat(64, 48, Fraction(25), 16000))
    assert "virtual camera" in str(caught.value)
    hint = caught.value.hint or ""
    if platform.system() == "Linux":
        assert "sudo modprobe v4l2loopback devices=1 exclusive_caps=1" in hint
    else:
        assert "OBS" in hint and "Virtual Camera" in hint


def test_a_named_device_that_does_not_exist_is_named_in_the_error() -> None:
    if platform.system() != "Linux":
        pytest.skip("device files are Linux's")
    output = VirtualCamOutput("/dev/video-anchorcast-missing")
    with pytest.raises(InputError, match="/dev/video-anchorcast-missing") as caught:
        output.open(StreamFormat(64, 48, Fraction(25), 16000))
    assert "modprobe v4l2loopback" in (caught.value.hint or "")


def test_an_unknown_backend_lists_the_available_ones(recorder: Any) -> None:
    with pytest.raises(InputError, match=f"unknown backend = 'obs-typo'.*{BACKEND}"):
        VirtualCamOutput(backend="obs-typo").open(StreamFormat(64, 48, Fraction(25), 16000))


def test_hints_name_the_way_to_a_device_on_each_system() -> None:
    assert "v4l2loopback" in virtualcam_output.device_hint("Linux")
    assert "OBS" in virtualcam_output.device_hint("Windows") and "OBS" in virtualcam_output.device_hint("Darwin")


def test_send_cost_per_frame_at_1280x720(recorder: Any) -> None:
    """Measured, not asserted tightly: the output's own share of a 720p frame (checks, alpha drop, the copy a
    device makes)."""
    output = VirtualCamOutput(backend=BACKEND)
    output.open(StreamFormat(1280, 720, Fraction(25), 16000))
    [backend] = RecordingBackend.opened
    backend.keep = False
    costs = {}
    for channels in (3, 4):
        item = frame(0, 1280, 720, channels)
        timings = []
        for _ in range(50):
            started = time.perf_counter()
            output.write(item, silence(0))
            timings.append((time.perf_counter() - started) * 1000)
        costs["RGB" if channels == 3 else "RGBA"] = float(np.median(timings))
    output.close()
    print(f"\nvirtualcam write at 1280x720 (median of 50, recording backend): "
          f"RGB {costs['RGB']:.3f} ms, RGBA {costs['RGBA']:.3f} ms")
    assert costs["RGB"] < 40  # a frame lasts 40 ms at 25 fps
