"""Outputs taken off the stream after a failure, and brought back when they can be.

A failed output is closed on a thread of its own (a close that hangs on a dead network must not stall the frames
on air). An output that can come back has an optional ``resume() -> str | None``: called every
:data:`RESUME_RETRY_S` after its close, it returns ``None`` while it still cannot write (a disk still full) and,
once it can, reopens and returns what it now does ("recording continues in bulletin-part2.mp4"). The scheduler
takes resumed outputs back at the next frame, so resuming never blocks the playout.
"""

from __future__ import annotations

import logging
import threading
import time

from anchorcast.components import Output

log = logging.getLogger(__name__)

RESUME_RETRY_S = 2.0
"""How often an output taken off the stream is asked whether it can resume."""


class OutputRecovery:
    """Closes failed outputs and retries those that can resume, until ``stop`` is set."""

    def __init__(self, stop: threading.Event, retry_s: float = RESUME_RETRY_S) -> None:
        self._stop = stop
        self._retry_s = retry_s
        self._lock = threading.Lock()
        self._closers: list[tuple[Output, threading.Thread]] = []
        self._resumed: list[tuple[str, Output, str]] = []
        self._back: set[int] = set()  # ids of outputs resumed since they were taken off

    def take_off(self, name: str, output: Output) -> None:
        """Closes ``output`` on its own thread and, if it can resume, keeps asking until it does."""
        with self._lock:
            self._back.discard(id(output))
        worker = threading.Thread(target=self._close_then_retry, args=(name, output), daemon=True,
                                  name=f"anchorcast-close-{name}")
        self._closers.append((output, worker))
        worker.start()

    def take_back(self) -> list[tuple[str, Output, str]]:
        """Outputs that resumed since the last call: ``(name, output, what it now does)``."""
        with self._lock:
            resumed, self._resumed = self._resumed, []
        return resumed

    def closed(self, timeout: float = 10.0) -> list[Output]:
        """Outputs taken off and closed here and not resumed since, once their closes have finished (or
        ``timeout`` passed: a close that hangs is left to its thread and logged). The host does not close these
        again."""
        deadline = time.monotonic() + timeout
        for output, worker in self._closers:
            worker.join(max(0.0, deadline - time.monotonic()))
            if worker.is_alive():
                log.error("closing the failed output %s did not finish in %.0f s", type(output).__name__, timeout)
        with self._lock:
            return [output for output, _ in self._closers if id(output) not in self._back]

    def _close_then_retry(self, name: str, output: Output) -> None:
        try:
            output.close()
        except Exception:  # already failing: its close error adds nothing
            log.debug("closing the failed output %s also failed", name, exc_info=True)
        resume = getattr(output, "resume", None)
        if not callable(resume):
            return
        while not self._stop.wait(self._retry_s):
            try:
                doing = resume()
            except Exception:
                log.debug("output %s could not resume yet", name, exc_info=True)
                continue
            if doing is not None:
                with self._lock:
                    self._back.add(id(output))
                    if not self._stop.is_set():  # else the run ended meanwhile: the host closes what is open
                        self._resumed.append((name, output, doing))
                return
