"""scripts/bench_serve.py in its CI mode: it runs end to end against the real server and prints its tables."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_serve.py"


@pytest.mark.slow
def test_bench_serve_short_prints_both_tables() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--short"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("│ viseme")]
    assert len(rows) == 3, result.stdout  # N = 1 and 2, and the latency row
    n1 = [cell.strip() for cell in rows[0].strip("│").split("│")]
    assert n1[1] == "1" and 20 < float(n1[2]) < 30  # a session airs at its frame rate
