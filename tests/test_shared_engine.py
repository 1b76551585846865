"""The studio server's shared engine: one engine call for the batches of several sessions, each session's frames
back to it in order, an engine error to every waiting session, and two render threads where the engine allows."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

import numpy as np
import pytest

from anchorcast.components import FrameJob
from anchorcast.server.engines import SharedEngine


class TaggingEngine:
    """Draws frame ``index`` as an image filled with ``index % 256``; each render takes ``delay`` seconds."""

    lookbehind = lookahead = 0.0
    max_batch = 8

    def __init__(self, delay: float = 0.0, concurrent_renders: int = 1, fail: bool = False) -> None:
        self.delay = delay
        self.concurrent_renders = concurrent_renders
        self.fail = fail
        self.calls: list[int] = []
        self.closed = False
        self.most_at_once = 0  # the most renders in progress together
        self._active = 0
        self._lock = threading.Lock()

    def render(self, jobs: Sequence[FrameJob]) -> list[np.ndarray]:
        with self._lock:
            self.calls.append(len(jobs))
            self._active += 1
            self.most_at_once = max(self.most_at_once, self._active)
        time.sleep(self.delay)
        with self._lock:
            self._active -= 1
        if self.fail:
            raise RuntimeError("the engine broke")
        return [np.full((2, 2, 3), job.index % 256, np.uint8) for job in jobs]

    def idle(self, index: int) -> np.ndarray:
        return np.zeros((2, 2, 3), np.uint8)

    def close(self) -> None:
        self.closed = True


def jobs(first: int, count: int) -> list[FrameJob]:
    return [FrameJob(i, i / 25, np.zeros(640, np.float32), 0, 640, 1.0) for i in range(first, first + count)]


def render_at_once(shared: SharedEngine, batches: list[list[FrameJob]]) -> list[list[np.ndarray]]:
    results: list[list[np.ndarray]] = [[] for _ in batches]

    def run(k: int) -> None:
        results[k] = shared.render(batches[k])

    threads = [threading.Thread(target=run, args=(k,)) for k in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    return results


def test_sessions_batches_share_one_call_and_get_their_own_frames_back() -> None:
    engine = TaggingEngine(delay=0.05)
    shared = SharedEngine(("k",), engine, "tagging", gather_s=0.05)
    shared.users = 3
    results = render_at_once(shared, [jobs(0, 3), jobs(100, 2), jobs(200, 4)])
    assert engine.calls == [9]  # one engine call for the three sessions
    assert [[int(image[0, 0, 0]) for image in result] for result in results] == [
        [0, 1, 2], [100, 101], [200, 201, 202, 203]]
    assert shared.stats()["sessions_per_call_max"] == 3
    shared.close()
    assert engine.closed


def test_an_engine_error_reaches_every_waiting_session() -> None:
    shared = SharedEngine(("k",), TaggingEngine(fail=True), "tagging", gather_s=0.05)
    shared.users = 2
    errors: list[BaseException] = []

    def run(first: int) -> None:
        try:
            shared.render(jobs(first, 2))
        except RuntimeError as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(k * 10,)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert [str(e) for e in errors] == ["the engine broke", "the engine broke"]
    shared.close()


@pytest.mark.parametrize("lanes", [1, 2])
def test_an_engine_that_allows_it_renders_on_two_threads(lanes: int) -> None:
    engine = TaggingEngine(delay=0.3, concurrent_renders=lanes)
    shared = SharedEngine(("k",), engine, "tagging", gather_s=0.0)
    shared.users = 1  # no waiting for others: each batch is its own call
    first = threading.Thread(target=shared.render, args=(jobs(0, 2),))
    first.start()
    time.sleep(0.05)  # the second batch arrives while the first is being drawn
    shared.render(jobs(10, 2))
    first.join(5)
    assert engine.calls == [2, 2]
    assert engine.most_at_once == lanes  # side by side with two lanes, one after the other with one
    shared.close()
