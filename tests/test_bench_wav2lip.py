"""scripts/bench_wav2lip.py in its CI mode: the generator table, the backends by mode, start-up cold and warm, and
``anchorcast run`` end to end on a short clip, printed and written as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "bench_wav2lip.py"


def _rows(stdout: str) -> dict[str, list[str]]:
    return {cells[0]: cells[1:] for line in stdout.splitlines() if line.startswith("│")
            for cells in [[cell.strip() for cell in line.strip().strip("│").split("│")]]}  # fmt: skip


@pytest.mark.slow
def test_bench_wav2lip_short_prints_sane_figures(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run([sys.executable, str(SCRIPT), "--short", "--json", str(out)], capture_output=True,
                            text=True, timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(result.stdout)
    for title in ("Wav2Lip generator on", "Backends by mode", "Start-up in process", "Start-up of the anchorcast run",
                  "End to end: anchorcast run on the 3 s clip"):  # fmt: skip
        assert title in result.stdout, result.stdout

    results = json.loads(out.read_text())
    generator = {row["backend"]: row for row in results["backend_table"]["rows"]}
    assert set(generator) == {"torch-fp32", "openvino-int8"}
    for row in generator.values():
        assert row["fps"] > 0 and row["gflops"] > 0 and row["batch"] == 4
    modes = {(row["backend"], row["mode"], row["batch"]): row for row in results["modes"]}
    assert set(modes) == {("openvino-int8", mode, batch) for mode in ("live", "fast") for batch in (4, 8)}
    for row in modes.values():
        assert row["generator"]["fps"] > 0 and row["engine"]["fps"] > 0
        assert row["engine"]["p95_ms"] >= row["engine"]["p50_ms"] > 0
    assert modes[("openvino-int8", "fast", 8)]["streams"] >= 2 and modes[("openvino-int8", "live", 8)]["streams"] == 1

    startup = {row["case"]: row for row in results["startup_engine"]}
    cold, warm = startup["cold"], startup["warm"]
    assert 0 < warm["open_s"] < cold["open_s"], startup
    assert warm["first_frame_s"] == pytest.approx(warm["open_s"] + warm["first_batch_s"])
    assert cold["timings"]["backend_s"] > warm["timings"]["backend_s"], startup  # measured and built when cold

    end_to_end = {row["label"]: row for row in results["end_to_end"]}
    new, old = end_to_end["this build, backend auto"], end_to_end["old fast pace, backend auto"]
    for row in (new, old):
        assert row["frames"] >= 75 and row["wall_s"] > 0 and 0 < row["first_frame_s"] < row["wall_s"]
        assert 0 < row["ready_s"] < row["first_frame_s"]
        assert row["backend"] == "auto" and row["repeats"] == 1
    assert new["batch_size_mean"] > 4 >= old["batch_size_mean"], (new, old)  # fast pace batches, old ones of 4
    assert results["official"] == {**results["official"], "wall_s": 47.2, "measured": False}
    assert "this build, backend auto (x1)" in rows and "old fast pace, backend auto (x1)" in rows, result.stdout
