"""The operator console in a real headless Chromium: sign-in with the token, live WebRTC video with sound,
speaking typed text, and a clear message for a wrong token."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from anchorcast_plugins.engines.viseme.engine import bundled_avatar
from tests.browser import browser_page
from tests.servers import free_port
from tests.studio_server import SMALL_PROFILE, TOKEN, StudioServer
from tests.test_cli_run import mouth_motion

pytestmark = pytest.mark.slow

DOCS = Path(__file__).resolve().parent.parent / "docs"


# A newsroom profile whose obs output names its scenes (OBS itself is not running: the output keeps trying).
STUDIO_PROFILE = SMALL_PROFILE + f"""
[outputs.obs]
use = "obs"
port = {free_port()}
scene = "Desk"
switch_on_speech = {{ ended = "Wide shot" }}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StudioServer]:
    folder = tmp_path_factory.mktemp("console")
    with StudioServer(folder, "--no-session", profiles={"studio": STUDIO_PROFILE}) as running:
        shutil.copy(bundled_avatar(), running.profiles / "anna.png")
        with running.client() as client:
            client.create_session("studio", {"engine.idle_motion": "off"}, session_id="studio-a")
        yield running


def video_pixels(page) -> np.ndarray:
    png = page.locator("#video").screenshot()
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def wait_for(page, script: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = page.evaluate(script)
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"not true within {timeout} s: {script}")


def test_a_wrong_token_gets_a_clear_message(server: StudioServer) -> None:
    with browser_page() as page:
        page.goto(f"{server.url}/console")
        assert page.locator("#login").is_visible() and not page.locator("#studio").is_visible()
        page.fill("#token", "not-the-token")
        page.click("#login-form button")
        page.wait_for_function("document.getElementById('login-error').textContent.length > 0")
        assert "not accepted" in page.inner_text("#login-error")
        assert page.locator("#login").is_visible() and not page.locator("#studio").is_visible()


def test_the_console_signs_in_plays_the_session_and_speaks_typed_text(server: StudioServer,
                                                                        tmp_path: Path) -> None:
    with browser_page() as page:
        page.goto(f"{server.url}/console")
        page.fill("#token", TOKEN)
        page.click("#login-form button")
        page.wait_for_selector("#studio", state="visible")
        assert page.inner_text("#sessions li.chosen b") == "studio-a"
        stats = wait_for(page, "(async () => { const s = await window.anchorcast.viewer?.stats();"
                               " return s && s.framesDecoded > 25 && s.audioSamples > 0 ? s : null; })()")
        assert stats["state"] == "connected"
        idle = []
        for _ in range(2):
            time.sleep(0.4)
            idle.append(video_pixels(page))
        still = mouth_motion(idle, idle[0]).max()

        page.fill("#say-text", "Good evening, and welcome to the late bulletin from the newsroom.")
        page.press("#say-text", "Enter")
        page.wait_for_selector("#events li.utterance_started", timeout=20000)
        assert page.input_value("#say-text") == ""  # spoken, so cleared
        speaking = []
        for _ in range(8):
            speaking.append(video_pixels(page))
            time.sleep(0.15)
        moving = mouth_motion(speaking, idle[0]).max()
        assert moving > 10 and moving > 4 * max(still, 1.0), (moving, still)
        page.wait_for_function("document.getElementById('f-fps').textContent !== '-'")
        after = page.evaluate("window.anchorcast.viewer.stats()")
        assert after["framesDecoded"] > stats["framesDecoded"] and after["audioSamples"] > stats["audioSamples"]
        assert int(page.inner_text("#f-viewers")) == 1

        # the profile's scenes are cue buttons; a click cues that scene
        page.wait_for_selector("#scenes button.scene")
        assert page.locator("#scenes button.scene").all_inner_texts() == ["Desk", "Wide shot"]
        with page.expect_request("**/v1/sessions/studio-a/cue") as cue:
            page.click("#scenes button.scene >> text=Wide shot")
        assert cue.value.post_data_json == {"scene": "Wide shot"}
        page.wait_for_selector("#events li.cue", timeout=10000)
        assert page.locator("#overlay-link").get_attribute("href").startswith(f"{server.url}/overlay/studio-a?watch=")

        shot = tmp_path / "console.png"
        page.screenshot(path=str(shot))
        if os.environ.get("ANCHORCAST_SCREENSHOTS"):
            shutil.copy(shot, DOCS / "console.png")


def test_the_console_offers_the_voices_profiles_and_avatars_to_choose_from(server: StudioServer) -> None:
    with browser_page() as page:
        page.goto(f"{server.url}/console?token={TOKEN}")
        page.wait_for_selector("#studio", state="visible")
        voices = page.locator("#say-voice option").evaluate_all("options => options.map(o => o.value)")
        assert voices[0] == "" and {"espeak", "piper", "espeak:cmn"} <= set(voices)
        with page.expect_request("**/v1/sessions/studio-a/say") as said:
            page.select_option("#say-voice", "espeak:cmn")
            page.fill("#say-text", "Good evening.")
            page.press("#say-text", "Enter")
        assert said.value.post_data_json == {"text": "Good evening.", "voice": "espeak:cmn"}

        profiles = page.locator("#new-profile option").evaluate_all("options => options.map(o => o.value)")
        assert {"small", "studio", "default"} <= set(profiles)
        avatars = page.locator("#new-avatar option").all_inner_texts()
        assert avatars[1:] == ["anna.png"]
        page.select_option("#new-profile", "small")
        page.select_option("#new-avatar", label="anna.png")
        with page.expect_response("**/v1/sessions") as created:
            page.click("#new-session button")
        assert created.value.status == 201, created.value.text()
        assert created.value.request.post_data_json == {
            "profile": "small", "set": {"engine.avatar": str(server.profiles / "anna.png")}}
        new_id = created.value.json()["id"]
        page.wait_for_selector(f"#sessions li.chosen[data-id='{new_id}']", timeout=30000)
        with server.client() as client:
            client.delete_session(new_id)
