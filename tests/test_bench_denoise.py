"""scripts/bench_denoise.py in its CI mode: the SNR table, the cost against pyrnnoise's own class, the latency."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_denoise.py"


@pytest.mark.slow
def test_bench_denoise_short_prints_sane_figures() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--short"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [[cell.strip() for cell in line.strip().strip("│").split("│")] for line in result.stdout.splitlines()
            if line.startswith("│")]
    snr = [row for row in rows if row[0] in ("white", "babble")]
    assert [row[0] for row in snr] == ["white"] * 4 + ["babble"] * 4, result.stdout
    for kind, _, snr_in, snr_out, gain, noise_down, speech in snr:
        assert float(gain) == pytest.approx(float(snr_out) - float(snr_in), abs=0.11)
        if kind == "white":
            assert float(noise_down) >= 20 and abs(float(speech)) <= 3, result.stdout
        else:
            assert float(noise_down) >= 5, result.stdout
    assert float(snr[0][4]) >= 5, "white noise at 0 dB: the SNR should rise by 5 dB or more"

    cost = {row[0]: row for row in rows if "Denoiser" in row[0] or "denoise_audio" in row[0] or "pyrnnoise" in row[0]}
    assert len(cost) == 3, result.stdout
    for _, _, cpu, wall, _, _ in cost.values():
        assert 1 < float(cpu) < 1000 and 1 < float(wall) < 1000
    assert cost["denoise_audio (whole recording)"][5] == "0 (0.0 ms)"
    assert cost["StreamingDenoiser (20 ms blocks)"][5] == "392 (24.5 ms)"

    latency = {row[0]: float(row[1]) for row in rows if len(row) == 2}
    assert latency["computed (latency_seconds)"] == 24.5
    assert latency["measured offline (output lag)"] == 24.5
    through = latency.get("measured through the mic source (PulseAudio loopback)")
    if through is None:
        assert "mic loopback: not measured" in result.stdout
    else:
        assert 24.5 - 5 <= through <= 24.5 + 20, result.stdout
