"""scripts/bench_face3d.py in its CI mode: it measures the model, the render and the engine, and prints the
table."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_face3d.py"


@pytest.mark.slow
def test_bench_face3d_short_prints_the_table() -> None:
    result = subprocess.run([sys.executable, str(SCRIPT), "--short"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {cells[0]: cells[1:] for line in result.stdout.splitlines() if line.startswith("│")
            for cells in [[cell.strip() for cell in line.strip("│").split("│")]]}
    engine = next((label for label in rows if label.startswith("engine 512x512 (batches of 8")), None)
    for label in ("model torch, 1 thread", "render 512x512, aa 0", "render 512x512, aa 4", engine):
        assert label in rows, result.stdout
        wall, cpu, fps = (float(value) for value in rows[label])
        assert wall > 0 and cpu > 0 and fps == pytest.approx(1000 / wall, rel=0.02)
    assert any(label.startswith("model onnxruntime") for label in rows), result.stdout
    assert "512x512: model" in result.stdout and "frames/s goal" in result.stdout
    assert "llvmpipe" in result.stdout or "GL:" in result.stdout
