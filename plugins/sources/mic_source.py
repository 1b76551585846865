"""The ``mic`` source: a microphone (any PortAudio input device) straight onto the timeline, live.

Audio is captured with sounddevice in blocks of 20 ms, mono float32, at 16 kHz unless set otherwise. PortAudio's
callback only queues each block (a bounded queue: when the reader falls behind, the oldest blocks are dropped
and counted); :meth:`MicSource.items` resamples when the device cannot capture at the wanted rate and yields
:class:`~anchorcast.media.AudioChunk` objects whose ``start`` counts samples on the microphone's own clock. When
PortAudio reports an input overflow (samples were lost), the gap is filled with silence of the estimated length,
so the media clock never slips behind the wall clock.

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
from anchorcast_plugins.sources.mic_devices import AUDIO_SETUP_HINT, InputDevice, find_device, import_sounddevice

if TYPE_CHECKING:
    from anchorcast.host import Host

log = logging.getLogger(__name__)

CHUNK_SECONDS = 0.02
"""Every chunk is 20 ms: 320 samples at 16 kHz."""

STALL_TIMEOUT_S = 10.0
"""A started microphone that delivers nothing for this long is an error, not an endless wait."""

BASELINE_RELAX = 0.002
"""How fast (seconds per second) the arrival-lateness baseline may rise, following the drift between the sound
card's clock and the host's; faster drift than 0.2 % is not a real sound card."""

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
    ) -> None:
        self.device = device
        self.sample_rate = sample_rate
        self.requested_capture_rate = capture_rate
        self.queue_seconds = queue_seconds
        self.reconnect_s = reconnect_s
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

    # --- lifecycle -----------------------------------------------------------------------------------------

    def open(self, fmt: StreamFormat) -> None:
        """Finds the device and opens (but does not start) the input stream; device problems surface here."""
        self.close()
        sd = import_sounddevice()
        device = find_device(sd, self.device)
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
        chunker = _Rechunker(self.capture_rate, self.sample_rate, self.chunk_samples)
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
                emitted, chunker = chunker.emitted, _Rechunker(self.capture_rate, self.sample_rate, self.chunk_samples)
                chunker.emitted = emitted  # chunk starts stay monotonic across the gap
                continue
            if blocks is None:
                return
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
        keep their place on the clock (the host has already muted what it buffered)."""
        with self._cond:
            for i, block in enumerate(self._queue):
                self._queue[i] = np.zeros_like(block)

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


class GapEstimator:
    """How many blocks an input overflow lost, from when the blocks arrive.

    A block's *lateness* is its arrival time minus the media time of its first sample (blocks so far over the
    rate). In steady capture it hovers just above a baseline, the running minimum, which may rise by
    :data:`BASELINE_RELAX` to follow the sound card's clock drift. A block flagged with an overflow that arrives
    later than the baseline by at least half a block stands after lost audio of that length. A late block
    without the flag lost nothing: the audio was buffered, and the blocks that follow catch up.
    """

    def __init__(self, rate: int, block: int) -> None:
        self.rate = rate
        self.block = block
        self.blocks = 0
        """Blocks accounted for so far, filled ones included."""
        self._baseline: float | None = None
        self._last: float | None = None

    def observe(self, now: float, overflow: bool) -> int:
        """Called for every delivered block, at its arrival; returns the blocks of silence to insert before it."""
        lateness = now - self.blocks * self.block / self.rate
        if self._baseline is None or self._last is None:
            self._baseline = lateness
        else:
            self._baseline = min(self._baseline + BASELINE_RELAX * max(0.0, now - self._last), lateness)
        self._last = now
        missing = max(0, round((lateness - self._baseline) * self.rate / self.block)) if overflow else 0
        self.blocks += missing + 1
        return missing


class _Rechunker:
    """Capture-rate blocks in, ``chunk`` samples at ``rate`` out, resampled (soxr stream) when the rates differ."""

    def __init__(self, capture_rate: int, rate: int, chunk: int) -> None:
        self.rate = rate
        self.chunk = chunk
        self.emitted = 0
        self._pending = np.zeros(0, np.float32)
        self._resampler: Any = None
        if capture_rate != rate:
            import soxr

            self._resampler = soxr.ResampleStream(capture_rate, rate, 1, dtype="float32", quality="HQ")

    def push(self, block: FloatAudio) -> Iterator[AudioChunk]:
        if self._resampler is not None:
            block = self._resampler.resample_chunk(block)
        elif not len(self._pending) and len(block) == self.chunk:
            yield self._emit(block)
            return
        self._pending = np.concatenate([self._pending, block])
        while len(self._pending) >= self.chunk:
            piece, self._pending = self._pending[: self.chunk], self._pending[self.chunk :]
            yield self._emit(piece)

    def _emit(self, samples: FloatAudio) -> AudioChunk:
        chunk = AudioChunk(np.asarray(samples, np.float32), self.rate, self.emitted)
        self.emitted += len(samples)
        return chunk


def _make_source(host: Host, settings: dict[str, Any]) -> MicSource:
    return MicSource(
        settings["device"],
        sample_rate=settings["sample_rate"],
        capture_rate=settings["capture_rate"],
        queue_seconds=settings["queue_seconds"],
        reconnect_s=settings["reconnect_s"],
    )


@hookimpl
def anchorcast_register_sources(host: Host, register: Any) -> None:
    register("mic", _make_source, settings=SETTINGS,
             summary="a microphone (PortAudio input device), live: 20 ms chunks straight onto the timeline")
