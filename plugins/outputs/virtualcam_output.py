"""The ``virtualcam`` output: the anchor as a webcam other programs (OBS, Zoom, a browser) can pick, via pyvirtualcam.

The camera's size and frame rate are the stream's. Frames go out as RGB (an RGBA frame loses its alpha). The
output is live, so the host paces the stream on the wall clock; pyvirtualcam's own pacing
(``sleep_until_next_frame``) is off unless ``pace = true`` (for embedding without the host's clock).

A virtual camera needs a device: v4l2loopback on Linux, OBS Studio's Virtual Camera on Windows and macOS.
Without one, opening the output is one clear error saying how to get it.
"""

from __future__ import annotations

import platform
import time
from typing import TYPE_CHECKING, Any

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import InputError
from anchorcast.media import AudioChunk, StreamFormat, VideoFrame

if TYPE_CHECKING:
    from anchorcast.host import Host

SETTINGS: dict[str, Setting] = {
    "device": Setting(str, None, 'the virtual camera to use, e.g. "/dev/video10" (Linux) or '
                                 '"OBS Virtual Camera"; default: the first one available'),
    "backend": Setting(str, None, 'pyvirtualcam backend: "v4l2loopback" (Linux), "obs" (Windows, macOS), '
                                  '"unitycapture" (Windows); default: the first that works'),
    "pace": Setting(bool, False, "also pace frames with pyvirtualcam's own timer (the host already paces live "
                                 "outputs: leave off)"),
}


def device_hint(system: str | None = None) -> str:
    """How to get a virtual camera device on this operating system."""
    system = system or platform.system()
    linux = (
        "on Linux, install and load v4l2loopback: sudo apt-get install v4l2loopback-dkms, then "
        "sudo modprobe v4l2loopback devices=1 exclusive_caps=1 (it makes /dev/videoN; set device to choose one)"
    )
    obs = (
        "on Windows and macOS, install OBS Studio (28 or newer) and start its Virtual Camera once "
        "(Controls > Start Virtual Camera); then close OBS or stop the camera there"
    )
    if system == "Linux":
        return linux
    if system in ("Windows", "Darwin"):
        return obs
    return f"{linux}; {obs}"


class VirtualCamOutput:
    """An :class:`~anchorcast.components.Output` that sends every frame to a pyvirtualcam ``Camera``.

    ``camera`` is the open ``pyvirtualcam.Camera`` (None when closed); ``frames_sent`` and ``last_send_ms`` (the
    time the last :meth:`write` took) are for metrics.
    """

    live = True

    def __init__(self, device: str | None = None, *, backend: str | None = None, pace: bool = False) -> None:
        self.device = device
        self.backend = backend
        self.pace = pace
        self.camera: Any = None
        self.frames_sent = 0
        self.last_send_ms = 0.0
        self._shape: tuple[int, int] = (0, 0)
        self._rgb: Any = None  # reused for RGBA frames
        self._cv2: Any = None

    def open(self, fmt: StreamFormat) -> None:
        self.close()
        try:
            import pyvirtualcam
        except ImportError as error:
            raise InputError(f"the virtualcam output needs the pyvirtualcam package ({error})",
                             hint="pip install pyvirtualcam") from error
        from pyvirtualcam.camera import BACKENDS

        if self.backend is not None and self.backend not in BACKENDS:
            known = ", ".join(sorted(BACKENDS)) or "none on this system"
            raise InputError(f"virtualcam: unknown backend = {self.backend!r}; available: {known}",
                             hint="leave backend out to use the first one that works")
        try:
            self.camera = pyvirtualcam.Camera(
                fmt.width, fmt.height, float(fmt.fps), fmt=pyvirtualcam.PixelFormat.RGB,
                device=self.device, backend=self.backend,
            )
        except RuntimeError as error:  # pyvirtualcam: every backend failed, one line each
            where = f"device {self.device!r}" if self.device else "a virtual camera device"
            raise InputError(f"virtualcam: could not open {where} ({_one_line(error)})",
                             hint=device_hint()) from error
        except ValueError as error:  # a backend refusing the size or rate
            raise InputError(f"virtualcam: the camera refused {fmt.width}x{fmt.height} at {float(fmt.fps):g} fps "
                             f"({_one_line(error)})", hint="choose another [stream] size or fps") from error
        import cv2

        self._cv2 = cv2
        self._shape = (fmt.height, fmt.width)
        self._rgb = None
        self.frames_sent = 0

    def write(self, frame: VideoFrame, audio: AudioChunk) -> None:
        """Sends the frame (the audio is not the camera's: a virtual camera has none)."""
        camera = self.camera
        if camera is None:
            raise RuntimeError("VirtualCamOutput.write() called before open()")
        started = time.perf_counter()
        image = frame.image
        if image.shape[:2] != self._shape:
            raise ValueError(f"virtualcam: frame {frame.index} is {image.shape[1]}x{image.shape[0]}, the camera "
                             f"{self._shape[1]}x{self._shape[0]}")
        if image.ndim == 3 and image.shape[2] == 4:
            # OpenCV drops the alpha 40 times faster than numpy's strided copy (0.2 vs 10 ms at 720p).
            self._rgb = self._cv2.cvtColor(image, self._cv2.COLOR_RGBA2RGB, dst=self._rgb)
            image = self._rgb
        camera.send(image)
        self.frames_sent += 1
        self.last_send_ms = (time.perf_counter() - started) * 1000
        if self.pace:
            camera.sleep_until_next_frame()

    def close(self) -> None:
        camera, self.camera = self.camera, None
        if camera is not None:
            camera.close()


def _one_line(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


def _make_output(host: Host, settings: dict[str, Any]) -> VirtualCamOutput:
    return VirtualCamOutput(settings["device"], backend=settings["backend"], pace=settings["pace"])


@hookimpl
def anchorcast_register_outputs(host: Host, register: Any) -> None:
    register("virtualcam", _make_output, settings=SETTINGS,
             summary="a virtual webcam (v4l2loopback, OBS Virtual Camera) showing the anchor, via pyvirtualcam")
