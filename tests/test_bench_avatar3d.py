"""scripts/bench_avatar3d.py in its CI mode: it runs end to end against the real server (a face3d session,
WebSocket and WHEP viewers) and prints its table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_avatar3d.py"


@pytest.mark.slow
def test_bench_avatar3d_short_prints_the_table() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--short"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {}
    for line in result.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) == 10 and cells[1].isdigit():
            rows[(cells[0], int(cells[1]))] = cells
    assert set(rows) == {("no viewer", 0), ("coefficients WS", 1), ("coefficients WS", 2), ("WebRTC (WHEP)", 1),
                         ("WebRTC (WHEP)", 2)}, result.stdout
    for count in (1, 2):
        coefficients, webrtc = rows[("coefficients WS", count)], rows[("WebRTC (WHEP)", count)]
        assert 20 < float(coefficients[7]) < 30  # every viewer gets every frame
        assert 30 < float(coefficients[9]) < 50  # 53 float32 weights and 40 ms of 16 kHz int16 sound a frame
        assert float(webrtc[7]) > 0 and float(webrtc[8]) > 0 and float(webrtc[9]) > 0  # decoded, encoded, sent
    assert "frame gaps seen by the coefficient viewers: 0" in result.stdout
