"""Single-key commands in the ``anchorcast run`` console (``i`` interrupts, ``q`` stops), on a terminal only."""

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
        tty.setcbreak(fd)
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
