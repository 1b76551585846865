"""Single-key commands in the ``anchorcast run`` console (``i`` interrupts, ``q`` stops), on a terminal only.

Keys typed before the run is on air (while it loads its plugins and opens its components) are not lost: the
terminal's type-ahead is kept, and :class:`RunKeys` holds a key that comes before the scheduler exists until it
does.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from collections.abc import Callable
from typing import Any


class KeyCommands:
    """Reads keys from standard input in cbreak mode while a run is on air; restores the terminal on exit.

    Does nothing when standard input is not a terminal (CI, pipes), so runs stay scriptable.
    """

    def __init__(self, bindings: dict[str, Callable[[], None]], stream: Any = None) -> None:
        self.bindings = {key.lower(): action for key, action in bindings.items()}
        self.stream = stream if stream is not None else sys.stdin
        self._saved: list[Any] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def active(self) -> bool:
        return self._thread is not None

    def __enter__(self) -> KeyCommands:
        try:
            fd = self.stream.fileno()
        except (AttributeError, OSError, ValueError):
            return self
        if not os.isatty(fd):
            return self
        import termios
        import tty

        self._saved = termios.tcgetattr(fd)
        tty.setcbreak(fd, termios.TCSANOW)  # not the default TCSAFLUSH, which drops the keys typed ahead
        self._thread = threading.Thread(target=self._read, args=(fd,), name="anchorcast-keys", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1)
        if self._saved is not None:
            import termios

            termios.tcsetattr(self.stream.fileno(), termios.TCSADRAIN, self._saved)

    def _read(self, fd: int) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.1)
            if not ready:
                continue
            try:
                data = os.read(fd, 32)
            except OSError:
                return
            if not data:
                return
            for char in data.decode(errors="ignore").lower():
                action = self.bindings.get(char)
                if action is not None:
                    action()


class RunKeys:
    """What ``i`` and ``q`` do in one run, from the moment the terminal is read, even before the run has a
    scheduler (it is still opening its components). A key that comes that early is kept and said so, then
    honoured when the scheduler exists (:meth:`ready`, given to ``Host.run`` as ``on_ready``): ``i`` interrupts
    before anything airs, ``q`` stops the run after its first frame (:meth:`frame`, called per frame aired), so
    that a file output is still closed as a playable file. ``say`` shows a message on the console."""

    def __init__(self, say: Callable[[str], None] = lambda message: None) -> None:
        self._say = say
        self._lock = threading.Lock()
        self._scheduler: Any = None
        self._stop_pending = False
        self._interrupt_pending = False
        self._stop_after_first_frame = False

    def bindings(self) -> dict[str, Callable[[], None]]:
        return {"i": self.interrupt, "q": self.stop}

    def interrupt(self) -> None:
        with self._lock:
            scheduler = self._scheduler
            early = scheduler is None and not self._interrupt_pending
            self._interrupt_pending = self._interrupt_pending or scheduler is None
        if scheduler is not None:
            scheduler.interrupt("console")
        elif early:
            self._say("i: the anchor is interrupted as soon as the run starts")

    def stop(self) -> None:
        with self._lock:
            scheduler = self._scheduler
            early = scheduler is None and not self._stop_pending
            self._stop_pending = self._stop_pending or scheduler is None
        if scheduler is not None:
            scheduler.stop()
        elif early:
            self._say("q: the run stops as soon as it starts")

    def ready(self, scheduler: Any) -> None:
        """The run has its scheduler, not yet started: the keys typed so far take effect."""
        with self._lock:
            self._scheduler = scheduler
            interrupt, self._interrupt_pending = self._interrupt_pending, False
            self._stop_after_first_frame, self._stop_pending = self._stop_pending, False
        if interrupt:
            scheduler.interrupt("console")

    def frame(self, aired: int, total: int | None) -> None:
        if self._stop_after_first_frame:
            self._scheduler.stop()
