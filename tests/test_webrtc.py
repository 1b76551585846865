"""WebRTC from the studio server, for real: uvicorn in its own process, aiortc clients as WHEP viewers on loopback.

The viewers place what they receive on the sender's clock through RTCP sender reports, as a browser does for lip
sync, so the sync asserted here is the sync a browser would show.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.mp4 import lag_of_best_correlation
from tests.studio_server import TOKEN, StudioServer, syllables, wav_bytes
from tests.test_cli_run import mouth_motion
from tests.whep_viewer import WhepViewer, audio_rms_under

pytestmark = pytest.mark.slow

AUTH = {"Authorization": f"Bearer {TOKEN}"}
FPS = 25


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioServer]:
    with StudioServer(tmp_path_factory.mktemp("webrtc"), "--no-session") as running:
        yield running


@pytest.fixture
def session(server: StudioServer) -> Iterator[str]:
    with server.client() as client:
        created = client.create_session("small", {"engine.idle_motion": "off"})
        yield created
        client.delete_session(created)


def post_speech(server: StudioServer, session: str, seconds: float) -> None:
    wav = wav_bytes(syllables(seconds, 16000), 16000)
    response = httpx.post(f"{server.url}/v1/sessions/{session}/audio", content=wav, headers=AUTH, timeout=30)
    assert response.status_code == 202, response.text


def viewers_of(server: StudioServer, session: str) -> list[dict]:
    response = httpx.get(f"{server.url}/v1/sessions/{session}", headers=AUTH, timeout=10)
    return response.json()["webrtc"]["viewers"]


def test_a_whep_viewer_receives_audio_and_video_in_sync_and_hangs_up(server: StudioServer, session: str) -> None:
    async def scenario() -> WhepViewer:
        viewer = await WhepViewer(server.url, TOKEN, session).connect()
        assert "VP8" in viewer.answer and "opus" in viewer.answer.lower()
        await viewer.wait_connected()
        await asyncio.sleep(1.0)  # idle first: the reference for the mouth at rest
        post_speech(server, session, 3.0)
        await asyncio.sleep(4.5)
        assert [v["state"] for v in viewers_of(server, session)] == ["connected"]
        assert await viewer.hang_up() == 200
        return viewer

    viewer = asyncio.run(scenario())
    assert viewers_of(server, session) == []
    frames = viewer.video.contents
    assert len(frames) > 4 * FPS and frames[0].shape == (180, 320, 3)
    assert len(viewer.audio.times) > 4 * 50  # 20 ms Opus packets
    rms, video_at = audio_rms_under(viewer, FPS)
    assert np.median(np.diff(video_at)) == pytest.approx(1 / FPS, abs=0.002)
    motion = mouth_motion(frames, frames[10])  # a frame of the idle second
    assert (rms > 0.02).sum() > 20 and motion[rms > 0.02].mean() > 3 * motion[rms < 0.001].mean()
    best, at_zero = lag_of_best_correlation(motion, rms, range(-5, 6))
    assert best == 0 and at_zero > 0.35, (best, at_zero)


def test_five_viewers_at_once_cost_one_encoder(server: StudioServer, session: str) -> None:
    async def scenario() -> list[WhepViewer]:
        viewers = await asyncio.gather(*(WhepViewer(server.url, TOKEN, session, keep_video=False).connect()
                                         for _ in range(5)))
        await asyncio.gather(*(v.wait_connected() for v in viewers))
        await asyncio.sleep(2.0)
        assert len(viewers_of(server, session)) == 5
        for viewer in viewers:
            await viewer.hang_up()
        return list(viewers)

    before = httpx.get(f"{server.url}/v1/sessions/{session}", headers=AUTH).json()["webrtc"]["encoded_frames"]
    started = time.monotonic()
    viewers = asyncio.run(scenario())
    after = httpx.get(f"{server.url}/v1/sessions/{session}", headers=AUTH).json()["webrtc"]["encoded_frames"]
    elapsed = time.monotonic() - started
    for viewer in viewers:
        assert len(viewer.video.times) > FPS and len(viewer.audio.times) > 50
    # one encoder for all five: the frames encoded are the frames on air, not five times as many
    assert after - before <= elapsed * FPS + 2


def test_a_viewer_killed_mid_stream_leaves_the_session_and_the_others_unharmed(server: StudioServer,
                                                                                   session: str) -> None:
    doomed = subprocess.Popen([sys.executable, "-m", "tests.whep_viewer", server.url, TOKEN, session],
                              stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert doomed.stdout is not None and doomed.stdout.readline().strip() == "connected"

        async def scenario() -> tuple[WhepViewer, list[str]]:
            viewer = await WhepViewer(server.url, TOKEN, session, keep_video=False).connect()
            await viewer.wait_connected()
            assert len(viewers_of(server, session)) == 2
            doomed.send_signal(signal.SIGKILL)
            post_speech(server, session, 2.0)
            counted = len(viewer.video.times)
            await asyncio.sleep(3.0)
            gained = len(viewer.video.times) - counted
            assert gained >= 3.0 * FPS - 5, gained  # the survivor kept its frame rate
            states = [v["state"] for v in viewers_of(server, session)]
            await viewer.hang_up()
            return viewer, states

        _, states = asyncio.run(scenario())
        assert "connected" in states
        detail = httpx.get(f"{server.url}/v1/sessions/{session}", headers=AUTH).json()
        assert detail["state"] in ("idle", "speaking") and detail["metrics"]["overruns"] == 0
        # the vanished viewer is dropped once ICE consent fails (no answer to its checks for about 30 s)
        deadline = time.monotonic() + 60
        while viewers_of(server, session) and time.monotonic() < deadline:
            time.sleep(1)
        assert viewers_of(server, session) == []
    finally:
        doomed.kill()
        doomed.wait()


def test_whep_refuses_what_it_cannot_answer(server: StudioServer, session: str) -> None:
    url = f"{server.url}/v1/sessions/{session}/whep"
    sdp = {"Content-Type": "application/sdp"}
    assert httpx.post(url, content="v=0\r\n", headers=sdp).status_code == 401
    response = httpx.post(url, content="v=0\r\n", headers={**AUTH, "Content-Type": "application/json"})
    assert response.status_code == 415 and "application/sdp" in response.json()["detail"]
    response = httpx.post(url, content="hello", headers={**AUTH, **sdp})
    assert response.status_code == 400 and "SDP" in response.json()["detail"]
    response = httpx.post(f"{server.url}/v1/sessions/nosuch/whep", content="v=0\r\n", headers={**AUTH, **sdp})
    assert response.status_code == 404
    response = httpx.delete(f"{url}/0123456789abcdef", headers=AUTH)
    assert response.status_code == 404 and "no viewer" in response.json()["detail"]


def test_deleting_a_session_hangs_up_its_viewers(server: StudioServer) -> None:
    with server.client() as client:
        session = client.create_session("small")

        async def scenario() -> tuple[WhepViewer, float]:
            viewer = await WhepViewer(server.url, TOKEN, session, keep_video=False).connect()
            await viewer.wait_connected()
            await asyncio.sleep(1.0)
            started = time.monotonic()
            async with httpx.AsyncClient(timeout=30) as http:
                response = await http.delete(f"{server.url}/v1/sessions/{session}", headers=AUTH)
            assert response.status_code == 200 and response.json()["state"] == "stopped"
            took = time.monotonic() - started
            deadline = time.monotonic() + 10
            while viewer.state != "closed" and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            state = viewer.state
            await viewer.pc.close()
            return viewer, took if state == "closed" else -1.0

        viewer, took = asyncio.run(scenario())
        assert 0 <= took < 5, "the viewer was not hung up when its session ended"
        assert len(viewer.video.times) > 0
