"""The ``obs`` output's worker and connection lifecycle.

- An error the worker does not expect (here: a caption event without text, a bug elsewhere) is logged once with its
  reason and fails the output, so that the scheduler takes it off the stream; the worker leaves no connection open.
- The worker's event queue is bounded: while the worker cannot take events (OBS hung), the oldest are dropped and
  counted, and memory does not grow with every event.
- ``close()`` closes the connection to OBS even when the worker does not stop within the close timeout.

The first checks run without OBS (nothing listening, or a listener that never answers: a hung OBS); the others
against real OBS Studio, by tests/obs_lifecycle_scenario.py in a private network namespace as in
tests/test_obs_control.py.
"""

from __future__ import annotations

import logging
import socket
import time
import tracemalloc
from typing import Any

import pytest

import anchorcast_plugins.outputs.obs_control as obs_control
from anchorcast import hookimpl
from anchorcast.host import Host
from anchorcast.media import Caption, Event, SpeechStarted
from anchorcast.plugin_manager import PluginPolicy
from tests.components import RecordingPlugin
from tests.conftest import make_profile
from tests.obs_studio import phase_of, run_scenario
from tests.servers import free_port

SCENARIO_TIMEOUT_S = 300
EVENTS = 50_000


class BadCaptions:
    """A plugin with a bug: when speech starts it posts a caption whose text is None."""

    @hookimpl
    def anchorcast_event(self, host: Any, event: Event) -> None:
        if isinstance(event, SpeechStarted):
            host.post_event(Caption(event.pts, None))  # type: ignore[arg-type]


def _worker_errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r for r in caplog.records
        if r.name.startswith("anchorcast_plugins.outputs.obs") and r.levelno >= logging.ERROR
    ]  # fmt: skip


def test_an_unexpected_worker_error_takes_the_output_off_the_stream(caplog: pytest.LogCaptureFixture) -> None:
    host = Host.create(
        PluginPolicy(), entry_points=False, extra_plugins=(RecordingPlugin(), obs_control, BadCaptions())
    )
    raw = make_profile(
        [("Good evening, this is a test of the obs output.", "")],
        scheduler={"pace": "realtime", "lead_in_ms": 200, "tail_ms": 500},
        outputs={"obs": {"use": "obs", "port": free_port()}},  # nothing listens: the worker keeps trying
    )
    with caplog.at_level(logging.WARNING):
        started = time.monotonic()
        report = host.run(host.load_profile(None, raw=raw))
        elapsed = time.monotonic() - started
    failed = report.get("failed_outputs", {})
    assert "obs" in failed, f"the obs output stayed on the stream with a dead worker: {failed}"
    assert "AttributeError" in failed["obs"], failed  # the reason, not just "failed"
    errors = _worker_errors(caplog)
    assert len(errors) == 1, [r.getMessage() for r in errors]  # logged once, by the worker, with the reason
    assert "AttributeError" in errors[0].getMessage()
    assert report["frames"] >= 25 * 2  # the stream went on to its end without the obs output
    assert elapsed < 20


def test_the_event_queue_is_bounded_while_obs_does_not_answer() -> None:
    host = Host.create(PluginPolicy(), entry_points=False, extra_plugins=(RecordingPlugin(), obs_control))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # the kernel accepts connections, nobody answers: a hung OBS
        port = listener.getsockname()[1]
        out = host.build(host.load_profile(None, raw=make_profile(outputs={"obs": {"use": "obs", "port": port}}))
                         .outputs["obs"])  # fmt: skip
        out.open(None)  # type: ignore[arg-type]  # the first attempt times out (3 s): a warning, the worker goes on
        try:
            time.sleep(0.6)  # the worker's next attempt has begun: it waits on the socket and takes no events
            tracemalloc.start()
            try:
                before = tracemalloc.get_traced_memory()[0]
                began = time.monotonic()
                for number in range(EVENTS):
                    out.event(Caption(float(number), f"caption line number {number}"))
                queuing_s = time.monotonic() - began
                grown = tracemalloc.get_traced_memory()[0] - before
            finally:
                tracemalloc.stop()
            figures = out.metrics()
        finally:
            out.close()
    print(f"\n{EVENTS} events queued in {queuing_s:.2f} s; memory grew by {grown / 1e6:.2f} MB; {figures}")
    assert queuing_s < obs_control.CONNECT_TIMEOUT_S - 0.6, "too slow to show the worker not taking events"
    assert grown < 2e6, f"{grown / 1e6:.1f} MB kept for {EVENTS} events: the queue is not bounded"
    assert figures.get("dropped_events", 0) >= EVENTS - 5000, figures
    assert figures.get("queued_events", EVENTS) <= 5000, figures


# --- against real OBS Studio ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scenario(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    result = tmp_path_factory.mktemp("obs-lifecycle") / "result.json"
    return run_scenario("tests.obs_lifecycle_scenario", result, SCENARIO_TIMEOUT_S, "OBS lifecycle scenario")[0]

@pytest.mark.slow
def test_an_unexpected_worker_error_while_connected_to_obs_fails_the_output(scenario: dict[str, Any]) -> None:
    phase = phase_of(scenario, "unexpected_error")
    assert phase["connections_while_up"] == ["ESTABLISHED"]
    assert phase["write_error"] is not None, "write() never raised: the output did not report its dead worker"
    assert "AttributeError" in phase["write_error"]
    assert phase["event_error"] is not None and "AttributeError" in phase["event_error"]
    assert len(phase["worker_errors"]) == 1 and "AttributeError" in phase["worker_errors"][0]
    assert phase["connections_after_failure"] == []  # the failed worker released its connection itself
    assert phase["connections_after_close"] == []


@pytest.mark.slow
def test_close_closes_the_connection_when_the_worker_does_not_stop_in_time(scenario: dict[str, Any]) -> None:
    phase = phase_of(scenario, "close_while_obs_hangs")
    assert phase["connections_while_up"] == ["ESTABLISHED"]
    assert phase["worker_alive_after_join_timeout"], "the worker stopped in time: the case was not exercised"
    assert phase["connections_after_close"] == [], "close() left the connection to OBS open"
    assert phase["connections_later"] == []
    assert not phase["worker_alive_later"]
    assert phase["close_s"] < 5


@pytest.mark.slow
def test_the_event_queue_is_bounded_while_obs_hangs(scenario: dict[str, Any]) -> None:
    phase = phase_of(scenario, "close_while_obs_hangs")
    figures = phase["figures_while_hung"]
    assert figures.get("dropped_events", 0) >= phase["events"] - 5000, figures
    assert figures.get("queued_events", phase["events"]) <= 5000, figures
