"""A studio session cued over the API switches real OBS Studio's scene and sets its lower third: the same event
path a script's [cue: ...] line takes (tests/obs_serve_scenario.py, in a private network namespace)."""

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
