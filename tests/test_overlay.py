"""The OBS overlay in a real headless Chromium: the anchor cut out on a transparent page (alpha packed beside
the colour over WebRTC, composited in WebGL), its sound playing in the page, and a clear message for a wrong watch
key."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from anchorcast.media import StreamFormat
from anchorcast_plugins.engines.viseme.engine import create_engine
from tests.browser import browser_page
from tests.studio_server import TOKEN, StudioServer
from tests.test_console import wait_for

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parent.parent / "docs"
WIDTH, HEIGHT = 640, 360


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioServer]:
    with StudioServer(tmp_path_factory.mktemp("overlay"), "--no-session") as running:
        with running.client() as client:
            client.create_session("small", {"engine.idle_motion": "off", "stream.width": WIDTH,
                                            "stream.height": HEIGHT}, session_id="studio-a")
        yield running


def overlay_address(server: StudioServer, session: str) -> dict:
    response = httpx.get(f"{server.url}/v1/sessions/{session}/overlay", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.text
    return response.json()


def transparent_screenshot(page) -> np.ndarray:
    """The page as RGBA with its background left out (what OBS composites)."""
    png = page.screenshot(omit_background=True)
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)


def test_the_overlay_cuts_the_anchor_out_on_a_transparent_page_with_its_sound(server: StudioServer,
                                                                              tmp_path: Path) -> None:
    address = overlay_address(server, "studio-a")
    assert address["url"].endswith(address["path"]) and "token" not in address["url"]
    engine = create_engine({"idle_motion": "off"})
    engine.open(StreamFormat(WIDTH, HEIGHT, Fraction(25), 16000))
    matte, idle = engine.matte, engine.idle(0)
    assert matte is not None and 0.15 < (matte > 128).mean() < 0.6  # a cut-out, not the whole frame

    with browser_page(WIDTH, HEIGHT) as page:
        page.goto(server.url + address["path"])
        stats = wait_for(page, "(async () => { const s = await window.anchorcast.overlay.stats();"
                               " return s && s.framesDecoded > 25 && s.audioSamples > 0 ? s : null; })()")
        assert stats["state"] == "connected"
        assert page.evaluate("window.anchorcast.overlay.video.muted") is False  # the sound plays in the page
        shot = transparent_screenshot(page)

        assert shot.shape[:2] == (HEIGHT, WIDTH)
        alpha = shot[:, :, 3]
        kernel = np.ones((9, 9), np.uint8)
        surely_out = cv2.erode((matte < 8).astype(np.uint8), kernel) > 0
        surely_in = cv2.erode((matte > 247).astype(np.uint8), kernel) > 0
        assert surely_out.mean() > 0.3 and surely_in.mean() > 0.15
        assert (alpha[surely_out] == 0).mean() > 0.995, "the backdrop around the anchor must be transparent"
        assert (alpha[surely_in] >= 250).mean() > 0.995, "the anchor must be opaque"
        colour_error = np.abs(shot[:, :, :3].astype(np.int16) - idle.astype(np.int16))[surely_in].mean()
        assert colour_error < 12, f"the anchor's colours differ from the frame by {colour_error:.1f} on average"

        page.evaluate("document.body.style.background = 'linear-gradient(135deg, #0b3d91 0%, #1f6fb2 55%, "
                      "#e8a33d 100%)'")
        composite = tmp_path / "overlay.png"
        page.screenshot(path=str(composite))
        if os.environ.get("ANCHORCAST_SCREENSHOTS"):
            shutil.copy(composite, DOCS / "overlay.png")
        after = page.evaluate("window.anchorcast.overlay.stats()")
        assert after["audioSamples"] > stats["audioSamples"]


def test_a_wrong_watch_key_gets_a_clear_message_and_cannot_drive_the_session(server: StudioServer) -> None:
    key = overlay_address(server, "studio-a")["watch_key"]
    with browser_page(WIDTH, HEIGHT) as page:
        page.goto(f"{server.url}/overlay/studio-a?watch=not-the-key")
        page.wait_for_selector("#problem", state="visible", timeout=20000)
        assert "watch key is missing or wrong" in page.inner_text("#problem")
    response = httpx.post(f"{server.url}/v1/sessions/studio-a/say", json={"text": "hello"},
                          headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 401  # the key of one session watches it and does nothing else
    response = httpx.post(f"{server.url}/v1/sessions/studio-b/whep", content=b"v=0",
                          headers={"Authorization": f"Bearer {key}", "Content-Type": "application/sdp"})
    assert response.status_code == 401  # nor another session


def test_the_overlay_waits_for_its_session_and_comes_back_when_it_is_on_air_again(server: StudioServer) -> None:
    """An OBS Browser Source stays in the scene for good: a session that ends and starts again (same id, same
    watch key) plays in it again without anyone touching OBS."""
    with server.client() as client:
        client.create_session("small", {"engine.idle_motion": "off"}, session_id="studio-b")
        address = overlay_address(server, "studio-b")
        with browser_page(WIDTH, HEIGHT) as page:
            page.goto(server.url + address["path"])
            wait_for(page, "window.anchorcast.overlay.state.connected && window.anchorcast.overlay.state.frames > 10")
            client.delete_session("studio-b")
            page.wait_for_selector("#problem", state="visible", timeout=40000)
            assert "studio-b" in page.inner_text("#problem")
            client.create_session("small", {"engine.idle_motion": "off"}, session_id="studio-b")
            before = page.evaluate("window.anchorcast.overlay.state.frames")
            wait_for(page, f"window.anchorcast.overlay.state.connected && "
                           f"window.anchorcast.overlay.state.frames > {before + 10}", timeout=40)
            assert not page.locator("#problem").is_visible()
            client.delete_session("studio-b")
