"""Hands items published on any thread (the playout thread) to asyncio subscribers (WebSocket and HTTP clients).

A subscriber that cannot keep up never slows the publisher: with ``drop_oldest`` (preview frames) it skips to the
newest items; without it (events, where a gap would mislead) it is ended and told it lagged.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()


class Lagged(Exception):
    """The subscriber fell more than its queue behind and was ended (events must not be skipped silently)."""


class Ended(Exception):
    """The fanout was closed: nothing more will come."""


class Subscription(Generic[T]):
    """One subscriber's queue on its own event loop; iterate it with ``async for``."""

    def __init__(self, fanout: Fanout[T], loop: asyncio.AbstractEventLoop, maxsize: int, drop_oldest: bool) -> None:
        self._fanout = fanout
        self._loop = loop
        self._queue: asyncio.Queue[object] = asyncio.Queue(maxsize + 1)  # +1: room for the end marker
        self._maxsize = maxsize
        self._drop_oldest = drop_oldest
        self.lagged = False
        self.closed = False

    def _offer(self, item: object) -> None:  # on the subscriber's loop
        if self.closed:
            return
        if item is _END:
            self.closed = True
            self._queue.put_nowait(_END)
            return
        if self._queue.qsize() >= self._maxsize:
            if not self._drop_oldest:
                self.lagged = True
                self.closed = True
                self._queue.put_nowait(_END)
                return
            self._queue.get_nowait()
        self._queue.put_nowait(item)

    def deliver(self, item: object) -> None:  # any thread
        try:
            self._loop.call_soon_threadsafe(self._offer, item)
        except RuntimeError:  # the subscriber's loop is closed: nobody is listening any more
            self.closed = True

    async def next(self) -> T:
        """The next item; :class:`Ended` when the fanout closed, :class:`Lagged` when this subscriber fell
        too far behind."""
        item = await self._queue.get()
        if item is _END:
            self._queue.put_nowait(_END)  # every later call ends too
            if self.lagged:
                raise Lagged()
            raise Ended()
        return item  # type: ignore[return-value]

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.next()
        except Ended:
            raise StopAsyncIteration from None

    def close(self) -> None:
        self._fanout.unsubscribe(self)


class Fanout(Generic[T]):
    """A thread-safe broadcast to asyncio subscribers; :meth:`close` ends every subscription."""

    def __init__(self, maxsize: int = 1000, *, drop_oldest: bool = False) -> None:
        self._maxsize = maxsize
        self._drop_oldest = drop_oldest
        self._subscribers: list[Subscription[T]] = []
        self._lock = threading.Lock()
        self._closed = False

    @property
    def subscribers(self) -> int:
        with self._lock:
            return len(self._subscribers)

    def subscribe(self) -> Subscription[T]:
        """A new subscription on the running event loop (already ended when the fanout is closed)."""
        subscription: Subscription[T] = Subscription(
            self, asyncio.get_running_loop(), self._maxsize, self._drop_oldest
        )
        with self._lock:
            if self._closed:
                subscription._offer(_END)
            else:
                self._subscribers.append(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription[T]) -> None:
        with self._lock:
            if subscription in self._subscribers:
                self._subscribers.remove(subscription)

    def publish(self, item: T) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for subscription in subscribers:
            subscription.deliver(item)
            if subscription.closed:
                self.unsubscribe(subscription)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            subscribers, self._subscribers = self._subscribers, []
        for subscription in subscribers:
            subscription.deliver(_END)
