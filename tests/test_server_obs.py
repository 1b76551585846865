"""A studio session cued over the API switches real OBS Studio's scene and sets its lower third: the same event
path a script's [cue: ...] line takes (tests/obs_serve_scenario.py, in a private network namespace); with
``browser_source = true`` its overlay is added to OBS as a Browser Source where OBS has one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.obs_studio import run_scenario


@pytest.mark.slow
def test_a_cue_over_the_api_switches_the_obs_scene_and_lower_third(tmp_path: Path) -> None:
    report, _ = run_scenario("tests.obs_serve_scenario", tmp_path / "result.json", 300, "OBS serve scenario")
    assert report["scene_before"] != "Weather"
    assert report["cue_to_scene_ms"] is not None and report["cue_to_scene_ms"] < 1500, report
    assert report["lower_third_shown"], report
    assert report["caption"] and "weather" in report["caption"].lower(), report
    assert report["deleted"]["state"] == "stopped"

    # browser_source = true: the session's overlay goes into OBS, or the server says why it cannot
    assert report["overlay_page_status"] == 200 and "/overlay/" in report["overlay_url"]
    assert "token" not in report["overlay_url"] and "watch=" in report["overlay_url"]
    if report["obs_has_browser_source"]:
        assert report["browser_source_url"] == report["overlay_url"]
        assert "anchorcast overlay" in report["scene_items"]
    else:  # Debian's OBS is built without CEF: no Browser Source; the session goes on and the server says why
        address = report["overlay_url"].split("?")[0]  # the log never shows the watch key
        log = report["server_log"]
        assert "has no Browser Source" in log and f"{address}?watch=***" in log, log[-3000:]
        assert "anchorcast captions" in report["scene_items"]
