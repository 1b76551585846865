"""The studio server, for real: uvicorn on a loopback port in its own process, driven over HTTP and WebSocket."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from anchorcast.client import Client
from tests.mp4 import decode, lag_of_best_correlation
from tests.studio_server import TOKEN, StudioServer, syllables, wav_bytes
from tests.test_cli_run import mouth_motion

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioServer]:
    with StudioServer(tmp_path_factory.mktemp("studio"), "--no-session", "--max-sessions", "3") as running:
        yield running


@pytest.fixture
def client(server: StudioServer) -> Iterator[Client]:
    with server.client() as studio:
        yield studio
        for session in studio.sessions():
            studio.delete_session(session["id"])


class Events:
    """The session's event WebSocket, read on a thread from the moment it is connected."""

    def __init__(self, server: StudioServer, session: str) -> None:
        self.url = server.url.replace("http", "ws") + f"/v1/sessions/{session}/events"
        self.items: list[dict[str, Any]] = []
        self.closed = threading.Event()
        self._connected = threading.Event()
        self._leave = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        assert self._connected.wait(10), "the event WebSocket did not connect"

    def _read(self) -> None:
        with connect(self.url, additional_headers=AUTH) as socket:
            self._connected.set()
            while not self._leave.is_set():
                try:
                    self.items.append(json.loads(socket.recv(0.1)))
                except TimeoutError:
                    continue
                except Exception:  # closed by the server
                    break
        self.closed.set()

    def wait(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for item in list(self.items):
                if predicate(item):
                    return item
            time.sleep(0.02)
        raise AssertionError(f"no such event in {timeout} s; got {[e['type'] for e in self.items]}")

    def of(self, kind: str, utterance: str | None = None) -> Callable[[dict[str, Any]], bool]:
        return lambda e: e["type"] == kind and (utterance is None or e.get("utterance") == utterance)

    def close(self) -> None:
        self._leave.set()
        self.closed.wait(5)


def test_two_sessions_speak_at_once_into_valid_mp4s_in_sync(server: StudioServer, client: Client) -> None:
    texts = ["Good evening. Here is the news from the first studio, with the markets and the weather.",
             "And this is the second studio, speaking at the very same time about sport and travel."]
    # Without blinks and breathing, so that what differs from the first frame is the mouth alone.
    sessions = [client.create_session("small", {"engine.idle_motion": "off"}) for _ in texts]
    watchers = [Events(server, s) for s in sessions]
    utterances = [client.say(s, text) for s, text in zip(sessions, texts, strict=True)]
    for watcher, utterance in zip(watchers, utterances, strict=True):
        watcher.wait(watcher.of("utterance_ended", utterance), 60)
    time.sleep(0.5)  # a little idle after the words
    for session, watcher in zip(sessions, watchers, strict=True):
        detail = client.session(session)
        assert detail["state"] == "idle" and detail["metrics"]["frames"] > 50
        result = client.delete_session(session)
        assert result["state"] == "stopped" and watcher.closed.wait(10)
        assert [Path(p).name for p in result["files"]] == ["session.mp4"]
        assert Path(result["files"][0]).is_relative_to(server.outputs / session)
        video = decode(Path(result["files"][0]))
        assert video.frames[0].shape == (180, 320, 3) and video.fps == pytest.approx(25)
        assert abs(video.video_seconds - video.audio_seconds) <= 1 / 25 + 0.07  # within a frame (+ AAC's last)
        assert len(video.frames) == result["frames"]
        rms = video.frame_audio_rms()
        speaking = rms > 0.02
        assert speaking.sum() > 40
        motion = mouth_motion(video.frames, video.frames[-1])  # idle after the words; the first frame may speak
        best, at_zero = lag_of_best_correlation(motion, rms, range(-5, 6))
        assert best == 0 and at_zero > 0.35, (best, at_zero, detail["metrics"])
        watcher.close()


def test_sessions_share_one_engine_and_its_batches(server: StudioServer, client: Client) -> None:
    sessions = [client.create_session("small") for _ in range(2)]
    other = client.create_session("small", {"stream.width": 640, "stream.height": 360})
    watchers = [Events(server, s) for s in sessions]
    said = [client.say(s, "A sentence for both studios, long enough to overlap in time.") for s in sessions]
    for watcher, utterance in zip(watchers, said, strict=True):
        watcher.wait(watcher.of("utterance_ended", utterance), 60)
    engines = httpx.get(f"{server.url}/v1/engines", headers=AUTH).json()["engines"]
    shared = [e for e in engines if e["sessions"] == 2]
    assert len(engines) == 2 and len(shared) == 1  # the 640x360 session has an engine of its own
    assert shared[0]["sessions_per_call_max"] == 2 and shared[0]["frames"] > 100
    for session in [*sessions, other]:
        client.delete_session(session)
    assert httpx.get(f"{server.url}/v1/engines", headers=AUTH).json()["engines"] == []
    for watcher in watchers:
        watcher.close()


def test_say_interrupt_say(server: StudioServer, client: Client) -> None:
    session = client.create_session("small")
    events = Events(server, session)
    first = client.say(session, "This is a long story that will not be finished, because the producer is "
                       "about to cut it short with an interrupt, as producers do.")
    second = client.say(session, "Nor will this one be heard.")
    began = events.wait(events.of("utterance_started", first))
    time.sleep(0.8)
    assert client.interrupt(session) == [first, second]
    interrupt = events.wait(events.of("interrupt"))
    events.wait(events.of("utterance_interrupted", second))
    third = client.say(session, "Back to you in the studio.")
    started = events.wait(events.of("utterance_started", third))
    events.wait(events.of("utterance_ended", third))
    kinds = [(e["type"], e.get("utterance")) for e in events.items]
    assert ("utterance_ended", first) not in kinds and ("utterance_started", second) not in kinds
    detail = client.session(session)
    assert detail["state"] == "idle" and detail["queue"] == [] and detail["metrics"]["interrupts"] == 1
    # on air: silence from the frame after the interrupt until the third utterance
    video = decode(Path(client.delete_session(session)["files"][0]), keep_frames=False)
    rms = video.frame_audio_rms()
    cut, resume = round(interrupt["pts"] * 25) + 1, round(started["pts"] * 25)
    assert len(rms) > resume > cut + 5, (len(rms), interrupt, started)
    assert rms[cut:resume].max() < 0.001, rms[cut - 2:resume]
    assert rms[round(began["pts"] * 25):cut - 1].max() > 0.02  # it was speaking before
    events.close()


def test_utterances_play_in_order_and_interrupt_true_speaks_now(server: StudioServer, client: Client) -> None:
    session = client.create_session("small")
    events = Events(server, session)
    ids = [client.say(session, text) for text in ("One.", "Two.", "Three.")]
    events.wait(events.of("utterance_ended", ids[2]))
    flow = [(e["type"], e["utterance"]) for e in events.items if e["type"].startswith("utterance_")]
    expected = [("utterance_queued", u) for u in ids]
    for u in ids:
        expected += [("utterance_started", u), ("utterance_ended", u)]
    assert flow == expected
    aired = [e for e in events.items if e["type"] in ("utterance_started", "utterance_ended")]
    assert [e["pts"] for e in aired] == sorted(e["pts"] for e in aired)
    ended = [e for e in aired if e["type"] == "utterance_ended"]
    assert all(0.2 < e["duration"] < 2.0 for e in ended)

    slow = client.say(session, "A long item that a breaking story will push aside before it is over, surely.")
    queued = client.say(session, "And an item queued behind it.")
    events.wait(events.of("utterance_started", slow))
    breaking = client.say(session, "Breaking news.", interrupt=True)
    events.wait(events.of("utterance_ended", breaking))
    for dropped in (slow, queued):
        events.wait(events.of("utterance_interrupted", dropped), 1)
    events.close()


def test_a_voice_an_utterance_asks_for_that_will_not_open_is_read_by_the_sessions_voice(
    server: StudioServer, client: Client
) -> None:
    session = client.create_session("small")
    events = Events(server, session)
    broken = client.say(session, "Read by the session's voice instead.", voice="espeak:zz-no-such-voice")
    ended = events.wait(events.of("utterance_ended", broken))
    failed = events.wait(events.of("voice_failed"))
    assert failed["voice"] == "espeak:zz-no-such-voice" and failed["fallback"] == "espeak"
    assert "zz-no-such-voice" in failed["detail"] and ended["duration"] > 0.5  # it was read, not skipped
    after = client.say(session, "And the session goes on.")
    events.wait(events.of("utterance_ended", after))
    assert client.session(session)["state"] == "idle"
    assert len([e for e in events.items if e["type"] == "voice_failed"]) == 1
    events.close()


def test_audio_posted_as_wav_is_resampled_and_lip_synced(server: StudioServer, client: Client) -> None:
    session = client.create_session("small", {"engine.idle_motion": "off"})
    events = Events(server, session)
    wav = wav_bytes(syllables(2.0, 44100), 44100, channels=2)
    response = httpx.post(f"{server.url}/v1/sessions/{session}/audio", content=wav, headers=AUTH, timeout=30)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["seconds"] == pytest.approx(2.0, abs=0.01)
    ended = events.wait(events.of("utterance_ended", body["utterance"]))
    assert ended["duration"] == pytest.approx(2.0, abs=0.02)
    time.sleep(0.3)  # idle after the audio: the reference for the mouth at rest
    video = decode(Path(client.delete_session(session)["files"][0]))
    rms = video.frame_audio_rms()
    motion = mouth_motion(video.frames, video.frames[-1])
    best, at_zero = lag_of_best_correlation(motion, rms, range(-5, 6))
    assert best == 0 and at_zero > 0.35, (best, at_zero)
    events.close()


def test_streamed_pcm_moves_the_lips_within_the_latency_budget(server: StudioServer, client: Client) -> None:
    session = client.create_session("small")
    events = Events(server, session)
    rate, chunk = 48000, 960  # 20 ms messages, as a microphone sends them
    audio = (syllables(2.0, rate) * 32767).astype("<i2")
    url = server.url.replace("http", "ws") + f"/v1/sessions/{session}/audio?rate={rate}"
    with connect(url, additional_headers=AUTH) as socket:
        utterance = json.loads(socket.recv(10))["utterance"]
        began = time.time()
        for k, start in enumerate(range(0, len(audio), chunk)):
            socket.send(audio[start:start + chunk].tobytes())
            time.sleep(max(0.0, began + (k + 1) * 0.02 - time.time()))
        socket.send(json.dumps({"type": "end"}))
    started = events.wait(events.of("utterance_started", utterance))
    ended = events.wait(events.of("utterance_ended", utterance))
    assert started["time"] - began < 0.4 + 0.25  # the profile's budget, and a frame or two of slack
    assert ended["duration"] == pytest.approx(2.0, abs=0.1)
    events.close()


def test_cue_goes_out_as_the_scripts_cue_event(server: StudioServer, client: Client) -> None:
    session = client.create_session("small")
    events = Events(server, session)
    response = httpx.post(f"{server.url}/v1/sessions/{session}/cue", headers=AUTH,
                          json={"scene": "Weather", "lower_third": "Anna Anchor"})
    assert response.status_code == 202
    cue = events.wait(events.of("cue"))
    assert cue["name"] == "Weather" and cue["data"] == {"lower_third": "Anna Anchor"}
    events.close()


def test_preview_is_a_multipart_jpeg_stream(server: StudioServer, client: Client) -> None:
    import cv2

    session = client.create_session("small")
    url = f"{server.url}/v1/sessions/{session}/preview.mjpeg?token={TOKEN}"
    images = []
    with httpx.stream("GET", url, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("multipart/x-mixed-replace; boundary=")
        buffer = b""
        for block in response.iter_bytes():
            buffer += block
            while (start := buffer.find(b"\xff\xd8")) >= 0 and (end := buffer.find(b"\xff\xd9", start)) >= 0:
                images.append(cv2.imdecode(np.frombuffer(buffer[start:end + 2], np.uint8), cv2.IMREAD_COLOR))
                buffer = buffer[end + 2:]
            if len(images) >= 3:
                break
    assert all(image is not None and image.shape == (180, 320, 3) for image in images)


def test_docs_are_served_from_the_package(server: StudioServer) -> None:
    assert httpx.get(f"{server.url}/docs").status_code == 401
    with httpx.Client(base_url=server.url) as browser:
        page = browser.get(f"/docs?token={TOKEN}")
        assert page.status_code == 200 and "/static/swagger-ui/swagger-ui-bundle.js" in page.text
        assert "cdn" not in page.text.lower()
        assert browser.get("/static/swagger-ui/swagger-ui-bundle.js").status_code == 200  # the cookie
        document = browser.get("/openapi.json").json()
    assert {"/v1/sessions", "/v1/sessions/{session_id}/say", "/v1/sessions/{session_id}/audio"} <= set(
        document["paths"])
    assert "HTTPBearer" in document["components"]["securitySchemes"]
    assert httpx.post(f"{server.url}/v1/sessions", cookies={"anchorcast_token": TOKEN}, json={}).status_code == 401


def test_create_and_delete_a_hundred_times_leaves_no_thread_or_file_open(server: StudioServer,
                                                                        client: Client) -> None:
    for _ in range(2):  # the first sessions load modules and data files that stay loaded
        client.delete_session(client.create_session("small"))
    before = server.threads_and_files()
    for _ in range(100):
        client.delete_session(client.create_session("small"))
    assert server.threads_and_files() == before
    assert client.sessions() == []
