"""Showing set-up steps (:mod:`anchorcast.setup_progress`) on the console: a transient progress line per running
step on a terminal, with what is being done, how far it is and how long is left, and one summary line when it
ends; plain lines (start, every few seconds, end) when the console is not a terminal."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from anchorcast import setup_progress
from anchorcast.setup_progress import SetupStep

PLAIN_EVERY_S = 5.0
"""How often a plain (not a terminal) console gets a line about a running step."""


def left_text(step: SetupStep) -> str:
    """``about 12 s left`` (or ``""`` when unknown)."""
    eta = step.eta_s()
    if eta is None:
        return ""
    return f"about {eta:.0f} s left" if eta >= 1 else "almost done"


class SetupDisplay:
    """A :data:`~anchorcast.setup_progress.Listener` drawing steps on ``console``, on ``progress``: a running rich
    Progress whose extra columns ``fields(step)`` fills (default: ``unit`` and ``left``, as :func:`showing_setup`
    makes it)."""

    def __init__(
        self, console: Console, progress: Progress, fields: Callable[[SetupStep], dict[str, Any]] | None = None
    ) -> None:
        self.console = console
        self.progress = progress
        self.fields = fields or (lambda step: {"unit": step.unit, "left": left_text(step)})
        self._tasks: dict[int, TaskID] = {}
        self._said: dict[int, float] = {}
        self._lock = threading.Lock()

    def __call__(self, step: SetupStep) -> None:
        with self._lock:
            if self.console.is_terminal:
                self._draw(step)
            else:
                self._write(step)

    def _draw(self, step: SetupStep) -> None:
        task = self._tasks.get(step.id)
        if step.finished:
            if task is not None:
                self.progress.remove_task(task)
                del self._tasks[step.id]
            self.console.print(f"[dim]{escape(step.describe())}[/]", highlight=False)
            return
        if task is None:
            self._tasks[step.id] = self.progress.add_task(escape(step.title), total=step.total, completed=step.done or 0,
                                                          **self.fields(step))
        else:
            self.progress.update(task, total=step.total, completed=step.done or 0, **self.fields(step))

    def _write(self, step: SetupStep) -> None:
        now = time.monotonic()
        if step.finished or step.id not in self._said or now - self._said[step.id] >= PLAIN_EVERY_S:
            self._said[step.id] = now
            self.console.print(f"setup: {step.describe()}", highlight=False, markup=False)
        if step.finished:
            self._said.pop(step.id, None)


@contextmanager
def showing_setup(console: Console) -> Iterator[SetupDisplay]:
    """Shows the set-up steps reported in this context on ``console`` with a progress display of its own (for
    commands without one, such as ``anchorcast weights bench``)."""
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[unit]}"),
        TextColumn("{task.fields[left]}"), TimeElapsedColumn(), console=console, transient=True, refresh_per_second=4,
        disable=not console.is_terminal,
    )
    display = SetupDisplay(console, progress)
    with progress, setup_progress.reporting(display):
        yield display
