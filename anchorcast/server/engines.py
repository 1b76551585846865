"""One loaded lip engine for every session that uses the same engine, settings and stream format.

The sessions' schedulers keep their own clocks, deadlines and overrun policies; only the engine's work is
shared. Each session's renderer hands its batch to the :class:`SharedEngine`, whose one thread takes every
batch waiting at that moment, from every session, and renders them as one (cross-session batching); each
session gets its own frames back. A session whose frames come back late degrades on its own (repeat, idle or
fallback at air time), as it would with an engine of its own.

Engines are pure per job (a frame's index and audio context), so jobs of different sessions can share a batch.
An engine that declares ``concurrent_renders = 2`` (its render may run on two threads at once: Wav2Lip serialises
the inference inside and overlaps one batch's mel windows and paste with the other's inference) gets two
threads here. An engine is closed when its last session ends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anchorcast.components import FrameJob, LipEngine
from anchorcast.media import Image, StreamFormat

if TYPE_CHECKING:
    from anchorcast.host import Host
    from anchorcast.profile import Stage

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Request:
    jobs: Sequence[FrameJob]
    done: threading.Event = field(default_factory=threading.Event)
    images: list[Image] | None = None
    error: BaseException | None = None


class SharedEngine:
    """A loaded engine and the thread that renders the batches of all its sessions together."""

    def __init__(self, key: tuple[Any, ...], engine: LipEngine, description: str, gather_s: float = 0.005) -> None:
        self.key = key
        self.gather_s = gather_s  # how long a batch waits for the other sessions' (a frame is 40 ms at 25 fps)
        self.engine = engine
        self.description = description
        self.users = 0
        self.batches: Counter[int] = Counter()  # frames per engine call
        self.sessions_per_batch: Counter[int] = Counter()
        self.busy_s = 0.0
        self._pending: list[_Request] = []
        self._cond = threading.Condition()
        self._closed = False
        lanes = max(1, int(getattr(engine, "concurrent_renders", 1)))
        self._threads = [threading.Thread(target=self._loop, name=f"anchorcast-shared-engine-{k}", daemon=True)
                         for k in range(lanes)]
        for thread in self._threads:
            thread.start()

    def render(self, jobs: Sequence[FrameJob]) -> list[Image]:
        """Renders ``jobs`` in the next shared batch (blocking until they are drawn)."""
        request = _Request(jobs)
        with self._cond:
            if self._closed:
                raise RuntimeError("the shared engine is closed")
            self._pending.append(request)
            self._cond.notify()
        request.done.wait()
        if request.error is not None:
            raise request.error
        assert request.images is not None
        return request.images

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed and not self._pending:
                    return
                # give the other sessions' renderers a moment to hand over their frames for the same batch
                deadline = time.monotonic() + self.gather_s
                while len(self._pending) < self.users and not self._closed:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
                requests, self._pending = self._pending, []
            jobs = [job for request in requests for job in request.jobs]
            started = time.perf_counter()
            try:
                images = self.engine.render(jobs)
                if len(images) != len(jobs):
                    raise RuntimeError(f"{type(self.engine).__name__} returned {len(images)} frames for {len(jobs)}")
            except BaseException as error:  # every waiting session sees the engine's error
                for request in requests:
                    request.error = error
                    request.done.set()
                continue
            with self._cond:  # two lanes may finish at once
                self.busy_s += time.perf_counter() - started
                self.batches[len(jobs)] += 1
                self.sessions_per_batch[len(requests)] += 1
            position = 0
            for request in requests:
                request.images = images[position: position + len(request.jobs)]
                position += len(request.jobs)
                request.done.set()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)
        self.engine.close()

    def stats(self) -> dict[str, Any]:
        calls = sum(self.batches.values())
        frames = sum(size * count for size, count in self.batches.items())
        return {
            "engine": self.description, "sessions": self.users, "calls": calls, "frames": frames,
            "frames_per_call": round(frames / calls, 3) if calls else 0.0,
            "sessions_per_call": round(sum(k * v for k, v in self.sessions_per_batch.items()) / calls, 3)
            if calls else 0.0,
            "sessions_per_call_max": max(self.sessions_per_batch, default=0),
            "busy_seconds": round(self.busy_s, 3),
        }


class EngineClient:
    """A session's :class:`~anchorcast.components.LipEngine`: renders through the shared engine, draws idle
    frames from it directly (cheap, thread-safe), and lets go of it on close."""

    def __init__(self, shared: SharedEngine, release: Any) -> None:
        self._shared = shared
        self._release = release
        engine = shared.engine
        self.lookbehind = engine.lookbehind
        self.lookahead = engine.lookahead
        self.max_batch = engine.max_batch
        self._closed = False

    def open(self, fmt: StreamFormat) -> None:
        pass  # opened once, by the pool

    @property
    def matte(self) -> Image | None:
        """The shared engine's silhouette (see :class:`~anchorcast.components.LipEngine`), if it has one."""
        return getattr(self._shared.engine, "matte", None)

    def render(self, jobs: Sequence[FrameJob]) -> list[Image]:
        return self._shared.render(jobs)

    def idle(self, index: int) -> Image:
        return self._shared.engine.idle(index)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._release(self._shared)


class EnginePool:
    """The shared engines of one server, by (engine, settings, stream format)."""

    def __init__(self) -> None:
        self._engines: dict[tuple[Any, ...], SharedEngine] = {}
        self._lock = threading.Lock()
        self._loading: dict[tuple[Any, ...], threading.Lock] = {}

    def acquire(self, host: Host, stage: Stage, fmt: StreamFormat) -> EngineClient:
        """A client of the shared engine for ``stage`` at ``fmt``, loading it if no session has it yet."""
        key = (stage.use, _frozen(stage.settings), fmt)
        with self._lock:
            loading = self._loading.setdefault(key, threading.Lock())
        with loading:  # one session loads; the others starting at the same time wait for it
            with self._lock:
                shared = self._engines.get(key)
                if shared is not None:
                    shared.users += 1
                    return EngineClient(shared, self._release)
            engine = host.build(stage)
            engine.open(fmt)
            shared = SharedEngine(key, engine, stage.use)
            with self._lock:
                shared.users = 1
                self._engines[key] = shared
            log.info("engine %s loaded for %dx%d", stage.use, fmt.width, fmt.height)
            return EngineClient(shared, self._release)

    def _release(self, shared: SharedEngine) -> None:
        with self._lock:
            shared.users -= 1
            if shared.users > 0:
                return
            self._engines.pop(shared.key, None)
            self._loading.pop(shared.key, None)
        shared.close()

    def stats(self) -> list[dict[str, Any]]:
        with self._lock:
            return [shared.stats() for shared in self._engines.values()]


def _frozen(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _frozen(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    return str(value) if not isinstance(value, (int, float, str, bool, type(None))) else value
