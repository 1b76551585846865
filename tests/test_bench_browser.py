"""scripts/bench_browser.py in its CI mode: real Chromium, real nginx-rtmp, the real server; it prints its table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_browser.py"


@pytest.mark.slow
def test_bench_browser_short_measures_every_trial_in_both_viewers(tmp_path: Path) -> None:
    figures = tmp_path / "figures.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--short", "--json", str(figures)], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "pushed audio -> moving mouth" in result.stdout
    report = json.loads(figures.read_text())
    for kind in ("text", "audio", "interrupt"):
        assert report[kind]["missed"] == 0, (kind, result.stdout)
        for viewer in ("browser_ms", "rtmp_ms"):
            assert len(report[kind][viewer]) == 2 and all(0 <= ms < 3000 for ms in report[kind][viewer]), report
