"""Outputs taken off the stream: closed on their own thread, asked to resume until they can, and handed back."""

from __future__ import annotations

import threading
import time

from anchorcast.output_recovery import OutputRecovery


class Flaky:
    """An output that can write again after ``ready_after`` resume attempts."""

    def __init__(self, ready_after: int | None) -> None:
        self.ready_after = ready_after
        self.attempts = 0
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()

    def resume(self) -> str | None:
        assert self.closed.is_set(), "asked to resume before it was closed"
        self.attempts += 1
        if self.ready_after is None or self.attempts < self.ready_after:
            return None
        return "writing again"


class NoResume:
    def __init__(self) -> None:
        self.closed = threading.Event()

    def close(self) -> None:
        self.closed.set()


def wait_until(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def test_an_output_that_can_resume_is_asked_until_it_can_and_then_handed_back_once() -> None:
    stop = threading.Event()
    recovery = OutputRecovery(stop, retry_s=0.02)
    output = Flaky(ready_after=3)
    recovery.take_off("file", output)
    back: list = []
    assert wait_until(lambda: bool(back.extend(recovery.take_back()) or back))
    assert back == [("file", output, "writing again")] and output.attempts == 3
    time.sleep(0.1)
    assert recovery.take_back() == [] and output.attempts == 3  # asked no more once back
    stop.set()
    assert recovery.closed(1.0) == []  # back on the stream: the host closes it, not the recovery


def test_outputs_that_cannot_resume_are_closed_once_and_left_to_the_recovery() -> None:
    stop = threading.Event()
    recovery = OutputRecovery(stop, retry_s=0.02)
    plain, never = NoResume(), Flaky(ready_after=None)
    recovery.take_off("rtmp", plain)
    recovery.take_off("file", never)
    assert wait_until(lambda: never.attempts >= 3)
    stop.set()
    started = time.monotonic()
    assert recovery.closed(5.0) == [plain, never]
    assert time.monotonic() - started < 1.0  # the retrying thread ends with the run
    assert plain.closed.is_set() and recovery.take_back() == []


def test_an_output_that_fails_again_after_resuming_is_taken_off_again() -> None:
    stop = threading.Event()
    recovery = OutputRecovery(stop, retry_s=0.02)
    output = Flaky(ready_after=1)
    recovery.take_off("file", output)
    assert wait_until(lambda: recovery.take_back() != [])
    output.closed.clear()
    output.ready_after, output.attempts = None, 0
    recovery.take_off("file", output)
    assert wait_until(lambda: output.attempts >= 2)
    stop.set()
    assert recovery.closed(1.0) == [output, output]
