"""Progress of slow one-off set-up work (preparing an avatar, encoding features, building a model), reported by
components while they open and shown by whoever started them.

A component wraps such work in :func:`step` and updates it; the caller that wants to show it installs a listener
with :func:`reporting` around the code that opens components (``anchorcast run`` draws a progress line; see
:mod:`anchorcast.setup_display`). The listener is context-local: each thread (and each ``contextvars`` context)
sees only its own, so two sessions opening engines at once never mix their steps. Without a listener, steps
are logged at INFO when they start and end, which is what the studio server shows.

Components report only work that is really done: a warm start (everything cached) reports nothing.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SetupStep:
    """One snapshot of a step: what is being done, how far it is, and since when."""

    id: int
    title: str
    done: float | None = None
    total: float | None = None
    unit: str = ""
    started: float = 0.0
    """``time.monotonic()`` when the step began."""
    estimate_s: float | None = None
    """How long the whole step is expected to take, for steps without sub-progress."""
    finished: bool = False
    failed: bool = False

    @property
    def elapsed_s(self) -> float:
        return max(0.0, time.monotonic() - self.started)

    def eta_s(self) -> float | None:
        """Seconds left: from the rate so far when there is sub-progress, else from the estimate; None if unknown."""
        if self.finished:
            return 0.0
        elapsed = self.elapsed_s
        if self.done and self.total:
            return max(0.0, elapsed / self.done * (self.total - self.done))
        if self.estimate_s is not None:
            return max(0.0, self.estimate_s - elapsed)
        return None

    def describe(self) -> str:
        """One plain line: ``encoding face features 32/250 frames, 12 s left``; once ended,
        ``encoding face features: 250 frames in 14.2 s``."""
        amount = f"{self.done or 0:g}/{self.total:g}{' ' + self.unit if self.unit else ''}" if self.total else ""
        if self.finished:
            if self.failed:
                return f"{self.title}: failed after {self.elapsed_s:.1f} s"
            unit = self.unit[:-1] if self.done == 1 and self.unit.endswith("s") else self.unit
            did = f"{self.done:g}{' ' + unit if unit else ''} " if self.done is not None else ""
            return f"{self.title}: {did}in {self.elapsed_s:.1f} s"
        eta = self.eta_s()
        left = f", {eta:.0f} s left" if eta is not None else ""
        return f"{self.title}{' ' + amount if amount else ''}{left}"


Listener = Callable[[SetupStep], None]
"""Called with a fresh snapshot whenever a step starts, advances or ends (from the thread doing the work)."""

_listener: ContextVar[Listener | None] = ContextVar("anchorcast_setup_listener", default=None)
_ids = itertools.count(1)
_ids_lock = threading.Lock()


@contextmanager
def reporting(listener: Listener) -> Iterator[None]:
    """Sends the steps reported in this context (this thread) to ``listener`` for the duration."""
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)


class Step:
    """A running step; :meth:`update` reports progress. Made by :func:`step`."""

    def __init__(self, snapshot: SetupStep, listener: Listener | None) -> None:
        self._snapshot = snapshot
        self._listener = listener
        self._lock = threading.Lock()

    @property
    def snapshot(self) -> SetupStep:
        return self._snapshot

    def update(self, done: float, total: float | None = None) -> None:
        """``done`` units of ``total`` (the total given at the start unless a new one is given)."""
        with self._lock:
            self._snapshot = replace(self._snapshot, done=done, total=total if total is not None else self._snapshot.total)
            snapshot = self._snapshot
        self._emit(snapshot)

    def _finish(self, failed: bool) -> None:
        with self._lock:
            self._snapshot = replace(self._snapshot, finished=True, failed=failed)
            snapshot = self._snapshot
        self._emit(snapshot)

    def _emit(self, snapshot: SetupStep) -> None:
        if self._listener is not None:
            try:
                self._listener(snapshot)
            except Exception:  # a display problem must not break the work it shows
                log.debug("setup progress listener failed", exc_info=True)
        elif snapshot.finished or snapshot.done is None:
            log.info("setup: %s", snapshot.describe())


def _begin(title: str, total: float | None, unit: str, estimate_s: float | None, started: float | None) -> Step:
    with _ids_lock:
        number = next(_ids)
    begun = started if started is not None else time.monotonic()
    running = Step(SetupStep(number, title, None, total, unit, begun, estimate_s), _listener.get())
    running._emit(running.snapshot)
    return running


@contextmanager
def step(
    title: str, total: float | None = None, *, unit: str = "", estimate_s: float | None = None,
    started: float | None = None,
) -> Iterator[Step]:
    """Reports the work done inside the ``with`` block as one step (ended, or failed, when the block ends).
    ``started`` (a ``time.monotonic()`` value) back-dates the start, for work noticed only once under way."""
    running = _begin(title, total, unit, estimate_s, started)
    failed = True
    try:
        yield running
        failed = False
    finally:
        running._finish(failed)


class LazyStep:
    """A progress callback ``(done, total)`` that begins the step at its first call, for work that may turn out
    to be a cache hit (then nothing is reported). Use as a context manager: the step ends with the block."""

    def __init__(self, title: str, *, unit: str = "") -> None:
        self.title = title
        self.unit = unit
        self._began = time.monotonic()
        self._step: Step | None = None

    def __call__(self, done: float, total: float | None = None) -> None:
        if self._step is None:
            self._step = _begin(self.title, total, self.unit, None, self._began)
        self._step.update(done, total)

    def __enter__(self) -> LazyStep:
        self._began = time.monotonic()
        return self

    def __exit__(self, kind: Any, error: Any, trace: Any) -> None:
        if self._step is not None:
            self._step._finish(kind is not None)
            self._step = None
