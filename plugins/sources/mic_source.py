"""The ``mic`` source: a microphone (any PortAudio input device) straight onto the timeline, live.

Audio is captured with sounddevice in blocks of 20 ms, mono float32, at 16 kHz unless set otherwise. PortAudio's
callback only queues each block (a bounded queue: when the reader falls behind, the oldest blocks are dropped
and counted); :meth:`MicSource.items` resamples when the device cannot capture at the wanted rate and yields
:class:`~anchorcast.media.AudioChunk` objects whose ``start`` counts samples on the microphone's own clock. When
PortAudio reports an input overflow (samples were lost), the gap is filled with silence of the estimated length,
so the media clock never slips behind the wall clock. Block bookkeeping lives in :mod:`.mic_blocks`.

With ``denoise = true`` every chunk goes through RNNoise (:class:`~.noise_suppression.StreamingDenoiser`) before
it leaves: the sound then leaves :attr:`MicSource.added_latency_s` later (24.5 ms at 16 kHz), and the scheduler
takes that out of its latency budget, so "audio in to frame out" still means from the microphone.

The stream starts when :meth:`MicSource.items` is first read, not at :meth:`MicSource.open`: audio captured while
the other stages open would otherwise reach the timeline as a backlog and add its length to the latency.

A device that goes away mid-stream (unplugged, or its PulseAudio source unloaded) or stops delivering is
reopened every ``reconnect_s``; the anchor is idle meanwhile and :class:`~anchorcast.media.SourceState` events
("lost", "live") mark the gap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from anchorcast import hookimpl
from anchorcast.components import Setting
from anchorcast.errors import InputError
from anchorcast.media import AudioChunk, FloatAudio, SourceState, StreamFormat
from anchorcast_plugins.sources.mic_blocks import GapEstimator, Rechunker
from anchorcast_plugins.sources.mic_devices import AUDIO_SETUP_HINT, InputDevice, find_device, import_sounddevice
from anchorcast_plugins.sources.noise_suppression import RNNOISE_RATE, StreamingDenoiser

if TYPE_CHECKING:
    from anchorcast.host import Host

log = logging.getLogger(__name__)

CHUNK_SECONDS = 0.02
"""Every chunk is 20 ms: 320 samples at 16 kHz."""

STALL_TIMEOUT_S = 10.0
"""A started microphone that delivers nothing for this long is an error, not an endless wait."""

SETTINGS: dict[str, Setting] = {
    "device": Setting(
        (str, int), None,
        "input device: its index, or part of its name (case-insensitive, e.g. \"pulse\", \"USB\"); "
        "default: the system's default input",
        minimum=0,
    ),
    "sample_rate": Setting(int, 16000, "rate of the chunks the source yields", minimum=8000, maximum=96000),
    "capture_rate": Setting(
        int, 0, "rate to open the device at (0: sample_rate if the device takes it, else its default rate); "
        "audio is resampled to sample_rate", minimum=0, maximum=192000,
    ),
    "queue_seconds": Setting(
        float, 2.0, "captured audio kept while the host falls behind; older audio is dropped", minimum=0.1,
    ),
    "denoise": Setting(
        bool, False, "run the microphone through RNNoise speech denoising (as OBS's noise suppression does); it "
        "delays the audio by 24.5 ms at 16 kHz (20 ms of RNNoise, 4.5 ms of resampling), which the scheduler takes "
        "out of latency_budget_ms; needs a sample_rate of 8000, 16000, 24000 or 48000",
    ),
    "reconnect_s": Setting(
        float, 1.0, "a device that stops (unplugged, its sound server's source removed) is reopened this often "
        "while the anchor stays idle; 0: a lost device ends the run", minimum=0,
    ),
}

# --- the source -------------------------------------------------------------------------------------------


@dataclass
class CaptureStats:
    """What happened to the captured audio; read them at any time."""

    blocks: int = 0
    """Blocks PortAudio delivered."""
    input_overflows: int = 0
    """Callbacks flagged with an input overflow (samples lost before they reached us)."""
    filled_samples: int = 0
    """Silence inserted (at the capture rate) for samples lost in overflows."""
    dropped_blocks: int = 0
    """Blocks dropped because the queue was full (the host fell behind)."""
    reconnects: int = 0
    """Times the device was lost and opened again."""


class MicSource:
    """A live :class:`~anchorcast.components.Source` of :class:`AudioChunk` objects from a microphone.

    ``device`` is an index, part of a device name, or None for the default input. After :meth:`open`,
    ``device_info`` is the chosen device and ``capture_rate`` the rate it records at; ``stats`` counts blocks,
    overflows, filled silence and dropped blocks.
    """

    live = True

    def __init__(
        self,
        device: str | int | None = None,
        *,
        sample_rate: int = 16000,
        capture_rate: int = 0,
        queue_seconds: float = 2.0,
        reconnect_s: float = 1.0,
        denoise: bool = False,
    ) -> None:
        if denoise and RNNOISE_RATE % sample_rate:
            raise InputError(f"mic: denoise needs a sample_rate that divides {RNNOISE_RATE} Hz, not {sample_rate}",
                             hint="set sample_rate to 16000 (or 8000, 24000, 48000), or denoise = false")
        self.device = device
        self.sample_rate = sample_rate
        self.requested_capture_rate = capture_rate
        self.queue_seconds = queue_seconds
        self.reconnect_s = reconnect_s
        self.denoise = denoise
        self.chunk_samples = round(sample_rate * CHUNK_SECONDS)
        self.device_info: InputDevice | None = None
        self.capture_rate = 0
        self.stats = CaptureStats()
        self._stream: Any = None
        self._channels = 1
        self._block = 0
        self._queue: deque[FloatAudio] = deque()
        self._max_blocks = 1
        self._cond = threading.Condition()
        self._closed = False
        self._stream_error: str | None = None
        self._gaps: GapEstimator | None = None
        self._last_arrival = 0.0
        self._denoiser: StreamingDenoiser | None = None
        self._drop_denoised = False

    @property
    def added_latency_s(self) -> float:
        """The delay the source adds to the sound on top of capture (after :meth:`open`): the denoiser's, 0 without
        it. The scheduler counts it in its latency budget (:func:`anchorcast.pacing.budget_for_source`)."""
        return self._denoiser.latency_seconds if self._denoiser is not None else 0.0

    # --- lifecycle -----------------------------------------------------------------------------------------

    def open(self, fmt: StreamFormat) -> None:
        """Finds the device and opens (but does not start) the input stream; device problems surface here."""
        self.close()
        sd = import_sounddevice()
        device = find_device(sd, self.device)
        self._denoiser = StreamingDenoiser(self.sample_rate, self.chunk_samples) if self.denoise else None
        with self._cond:
            self._closed = False
            self.stats = CaptureStats()
        self._open_stream(sd, device)

    def _open_stream(self, sd: Any, device: InputDevice) -> bool:
        """Opens an input stream on ``device``; False when :meth:`close` came first."""
        channels, rate = self._choose_settings(sd, device)
        block = round(rate * CHUNK_SECONDS)
        try:
            stream = sd.InputStream(
                device=device.index, samplerate=rate, channels=channels, dtype="float32", blocksize=block,
                latency="low", callback=self._on_block, finished_callback=self._on_finished,
            )
        except sd.PortAudioError as error:
            raise InputError(f"mic: cannot open input device {device.describe()}: {error}",
                             hint=AUDIO_SETUP_HINT) from error
        with self._cond:
            if self._closed:
                stream.close(ignore_errors=True)
                return False
            self.device_info = device
            self.capture_rate = int(stream.samplerate)
            self._block = block
            self._channels = channels
            self._max_blocks = max(1, round(self.queue_seconds / CHUNK_SECONDS))
            self._queue.clear()
            self._stream_error = None
            self._gaps = GapEstimator(self.capture_rate, self._block)
            self._stream = stream
        return True

    def items(self) -> Iterator[AudioChunk | SourceState]:
        """Starts capturing and yields 20 ms chunks until :meth:`close`. A device that stops or goes silent is
        reopened every ``reconnect_s`` (a :class:`SourceState` "lost", then "live", is yielded around the gap:
        the anchor is idle meanwhile); with ``reconnect_s = 0`` it ends the run with an :class:`InputError`."""
        if self._stream is None:
            raise RuntimeError("MicSource.items() called before open()")
        if not self._start():
            return
        chunker = Rechunker(self.capture_rate, self.sample_rate, self.chunk_samples, self._denoiser)
        while True:
            try:
                blocks = self._next_blocks()
            except InputError as error:
                if not self.reconnect_s:
                    raise
                log.warning("%s; reconnecting every %.1f s", error, self.reconnect_s)
                yield SourceState(0.0, "mic", "lost", str(error))
                if not self._reconnect():
                    return
                log.warning("mic: %s is back", self._device_text())
                yield SourceState(0.0, "mic", "live", self._device_text())
                emitted = chunker.emitted
                chunker = Rechunker(self.capture_rate, self.sample_rate, self.chunk_samples, chunker.denoiser)
                chunker.emitted = emitted  # chunk starts stay monotonic across the gap
                continue
            if blocks is None:
                return
            if self._drop_denoised and self._denoiser is not None:  # what it held is from before an interrupt
                self._drop_denoised = False
                self._denoiser = chunker.denoiser = StreamingDenoiser(self.sample_rate, self.chunk_samples)
            for block in blocks:
                yield from chunker.push(block)

    def _start(self) -> bool:
        """Starts the opened stream; False when :meth:`close` came first."""
        with self._cond:
            stream = self._stream
            if self._closed or stream is None:
                return False
            self._last_arrival = time.monotonic()
        try:  # outside the lock: PortAudio's thread takes it in the callbacks
            stream.start()
        except Exception as error:  # PortAudioError: closed meanwhile, or the device went away since open()
            if self._closed:
                return False
            raise InputError(f"mic: cannot start input device {self._device_text()}: {error}",
                             hint=AUDIO_SETUP_HINT) from error
        return True

    def _next_blocks(self) -> list[FloatAudio] | None:
        """The blocks captured since the last call (waiting for at least one); None once closed."""
        with self._cond:
            while not self._queue and not self._closed and self._stream_error is None:
                self._cond.wait(0.1)
                if time.monotonic() - self._last_arrival > STALL_TIMEOUT_S:
                    raise InputError(f"mic: the input device {self._device_text()} delivered no audio for "
                                     f"{STALL_TIMEOUT_S:.0f} s", hint=AUDIO_SETUP_HINT)
            if self._closed:
                return None
            if not self._queue:
                raise InputError(f"mic: the input device {self._device_text()} stopped: {self._stream_error}",
                                 hint=AUDIO_SETUP_HINT)
            blocks = list(self._queue)
            self._queue.clear()
            return blocks

    def _reconnect(self) -> bool:
        """Reopens the device until it records again; False when :meth:`close` came first."""
        sd = import_sounddevice()
        device = self.device_info
        assert device is not None
        while True:
            with self._cond:
                stream, self._stream = self._stream, None
            if stream is not None:
                stream.close(ignore_errors=True)
            with self._cond:
                if self._cond.wait_for(lambda: self._closed, timeout=self.reconnect_s):
                    return False
            try:
                if not self._open_stream(sd, device) or not self._start():
                    return False
            except InputError:
                continue  # still gone
            self.stats.reconnects += 1
            return True

    def interrupt(self) -> None:
        """Drops the audio captured but not yet read: it becomes silence of the same length, so the next chunks
        keep their place on the clock (the host has already muted what it buffered). The denoiser starts afresh
        (what it held is silence too)."""
        with self._cond:
            for i, block in enumerate(self._queue):
                self._queue[i] = np.zeros_like(block)
            self._drop_denoised = True

    def close(self) -> None:
        """Stops capturing; a reader inside :meth:`items` sees the end of the audio."""
        with self._cond:
            stream, self._stream = self._stream, None
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        if stream is not None:  # outside the lock: closing waits for PortAudio's thread, which takes it
            stream.close(ignore_errors=True)  # aborts a running stream first

    # --- PortAudio's thread ----------------------------------------------------------------------------------

    def _on_block(self, indata: Any, frames: int, time_info: Any, status: Any) -> None:
        samples = indata[:, 0].copy() if self._channels == 1 else indata.mean(axis=1, dtype=np.float32)
        now = time.monotonic()
        with self._cond:
            self.stats.blocks += 1
            if status.input_overflow:
                self.stats.input_overflows += 1
            assert self._gaps is not None
            missing = self._gaps.observe(now, bool(status.input_overflow))
            for _ in range(missing):
                self._enqueue(np.zeros(self._block, np.float32))
            self.stats.filled_samples += missing * self._block
            self._enqueue(samples)
            self._last_arrival = now
            self._cond.notify_all()

    def _enqueue(self, block: FloatAudio) -> None:
        if len(self._queue) >= self._max_blocks:
            self._queue.popleft()
            self.stats.dropped_blocks += 1
        self._queue.append(block)

    def _on_finished(self) -> None:
        with self._cond:
            if not self._closed:
                self._stream_error = "the audio stream ended unexpectedly"
            self._cond.notify_all()

    # --- helpers -------------------------------------------------------------------------------------------

    def _choose_settings(self, sd: Any, device: InputDevice) -> tuple[int, int]:
        """Channels and capture rate the device accepts: mono at the wanted rate if it can, else its default
        rate, else stereo (downmixed)."""
        if self.requested_capture_rate:
            rates = [self.requested_capture_rate]
        else:
            rates = list(dict.fromkeys([self.sample_rate, round(device.default_rate)]))
        channel_options = [1] if device.channels < 2 else [1, 2]
        problems = []
        for channels in channel_options:
            for rate in rates:
                try:
                    sd.check_input_settings(device=device.index, channels=channels, dtype="float32",
                                            samplerate=rate)
                except Exception as error:  # PortAudioError or ValueError: this combination is not supported
                    problems.append(f"{channels} ch at {rate} Hz: {error}")
                    continue
                return channels, rate
        raise InputError(f"mic: input device {device.describe()} cannot record as needed: {'; '.join(problems)}",
                         hint="set capture_rate to a rate the device supports, or choose another device")

    def _device_text(self) -> str:
        return self.device_info.describe() if self.device_info else repr(self.device)


def _make_source(host: Host, settings: dict[str, Any]) -> MicSource:
    return MicSource(
        settings["device"],
        sample_rate=settings["sample_rate"],
        capture_rate=settings["capture_rate"],
        queue_seconds=settings["queue_seconds"],
        reconnect_s=settings["reconnect_s"],
        denoise=settings["denoise"],
    )


@hookimpl
def anchorcast_register_sources(host: Host, register: Any) -> None:
    register("mic", _make_source, settings=SETTINGS,
             summary="a microphone (PortAudio input device), live: 20 ms chunks straight onto the timeline")
