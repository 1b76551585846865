"""A studio session cued over the API switches real OBS Studio's scene and sets its lower third: the same event
path a script's [cue: ...] line takes (tests/obs_serve_scenario.py, in a private network namespace)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_cue_over_the_api_switches_the_obs_scene_and_lower_third(tmp_path: Path) -> None:
    missing = [name for name in ("obs", "Xvfb", "unshare", "ip") if shutil.which(name) is None]
    assert not missing, f"{missing} missing: scripts/install-test-deps.sh installs them"
    result = tmp_path / "result.json"
    inner = f"ip link set lo up && exec {sys.executable} -m tests.obs_serve_scenario {result}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "bash", "-c",
                           inner], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and result.exists(), done.stderr[-4000:]
    report = json.loads(result.read_text())
    assert "error" not in report, report.get("error")
    assert report["scene_before"] != "Weather"
    assert report["cue_to_scene_ms"] is not None and report["cue_to_scene_ms"] < 1500, report
    assert report["lower_third_shown"], report
    assert report["caption"] and "weather" in report["caption"].lower(), report
    assert report["deleted"]["state"] == "stopped"
