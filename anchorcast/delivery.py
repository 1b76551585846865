"""The scheduler's outputs: each frame goes to every output on the stream, events to those that take them; a
failing output is taken off (the others go on) and, if it can, comes back (part of
:class:`~anchorcast.scheduler.Scheduler`, which holds the state; the threads in
:mod:`anchorcast.output_recovery`)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from anchorcast.components import Output
from anchorcast.errors import AnchorcastError
from anchorcast.media import AudioChunk, Event, OutputState, VideoFrame

if TYPE_CHECKING:
    import threading

    from anchorcast.clock import MediaClock
    from anchorcast.metrics import RunMetrics
    from anchorcast.output_recovery import OutputRecovery

log = logging.getLogger(__name__)


class Delivering:
    """The outputs' half of the scheduler."""

    clock: MediaClock
    metrics: RunMetrics
    outputs: list[tuple[str, Output]]
    failed_outputs: dict[str, str]
    resumed_outputs: dict[str, str]
    _recovery: OutputRecovery
    _emit: Callable[[Event], None]
    _frames_cond: threading.Condition
    _pending_events: list[Event]
    _next_to_air: int

    def post_event(self, event: Event) -> None:  # the scheduler's
        raise NotImplementedError

    def _deliver(self, frame: VideoFrame, audio: AudioChunk) -> None:
        """Writes the frame and its audio to every output on the stream, after taking back those that resumed."""
        for name, output, doing in self._recovery.take_back():
            log.warning("output %s is back on the stream: %s", name, doing)
            self.outputs.append((name, output))
            self.resumed_outputs[name] = doing
            self._dispatch(OutputState(frame.pts, name, "restored", doing))
        for name, output in list(self.outputs):
            began = time.perf_counter()
            try:
                output.write(frame, audio)
            except Exception as error:
                self._output_failed(name, output, error)
            self.metrics.observe(f"output:{name}", (time.perf_counter() - began) * 1000)

    def _dispatch(self, event: Event) -> None:
        """Events go to outputs that take them (an optional ``event(event)`` method), then to the event hook."""
        for name, output in list(self.outputs):
            handler = getattr(output, "event", None)
            if handler is None:
                continue
            try:
                handler(event)
            except Exception as error:
                self._output_failed(name, output, error)
        self._emit(event)

    def _output_failed(self, name: str, output: Output, error: Exception) -> None:
        """A failing output is dropped from the stream and the others go on; the last one's failure ends the run.

        It is closed on a thread of its own, and one that can resume (a file output once its disk has room) is
        brought back when it can (:mod:`anchorcast.output_recovery`); :meth:`closed_outputs` tells the host which
        it closed, so that the host waits for those closes instead of closing again.
        """
        self.metrics.count(f"output_failed:{name}")
        if len(self.outputs) == 1:
            raise error
        described = str(error) if isinstance(error, AnchorcastError) else f"{type(error).__name__}: {error}"
        log.error("output %s failed and was taken off the stream: %s", name, described)
        self.outputs = [(n, o) for n, o in self.outputs if o is not output]
        self.failed_outputs[name] = described
        self.resumed_outputs.pop(name, None)
        self.post_event(OutputState(self.clock.frame_pts(self._next_to_air), name, "failed", str(error)))
        self._recovery.take_off(name, output)

    def closed_outputs(self, timeout: float = 10.0) -> list[Output]:
        """Outputs the scheduler took off the stream and closed itself (and that did not resume), once their
        closes have finished or ``timeout`` passed."""
        return self._recovery.closed(timeout)

    def _finish_outputs(self) -> None:
        """The stream is over: outputs with an optional ``finish()`` complete their work (a recogniser's last
        phrase), and the events that produces are dispatched before the outputs are closed."""
        for name, output in list(self.outputs):
            finish = getattr(output, "finish", None)
            if finish is None:
                continue
            try:
                finish()
            except Exception as error:
                self._output_failed(name, output, error)
        with self._frames_cond:
            pending, self._pending_events = self._pending_events, []
        for event in pending:
            self._dispatch(event)
