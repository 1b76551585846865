"""The soak harness's short mode, as CI runs it: a served session speaking for two minutes with RTMP restarts,
an OBS crash and restart, vanishing API clients, a real full disk and a broken voice; every fault survived."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def row(table: str, measure: str) -> str:
    """The value cell of the table row that starts with ``measure``."""
    for line in table.splitlines():
        cells = [cell.strip() for cell in line.strip("│┃ ").split("│")]
        if cells and cells[0] == measure:
            return cells[1]
    raise AssertionError(f"no row {measure!r} in:\n{table}")


def test_the_short_soak_survives_every_fault_and_loses_only_the_disk_full_window() -> None:
    if os.geteuid() != 0:
        pytest.fail("the soak mounts a tmpfs and starts OBS in a private network: it needs root, as CI has")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--short"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "COLUMNS": "220"})
    table = done.stdout
    assert done.returncode == 0, table + done.stderr[-3000:]
    for kind in ("rtmp restart", "obs restart", "api clients vanish", "disk full", "voice failure"):
        survived, injected = row(table, f"faults: {kind}").split(" survived")[0].split(" / ")
        assert survived == injected and int(injected) >= 1, (kind, table)
    lost = row(table, "frames in no file part (disk-full window)")
    outside, window = int(lost.split()[0]), int(lost.split("(")[1].split(";")[0])
    assert window > 0 and outside <= window, table  # frames missing from the file parts: the window, no more
    assert row(table, "file output at the end").startswith("open, 2 parts"), table
    gap = row(table, "A/V gap at the reader at the end")
    assert gap.endswith(" ms") and abs(float(gap.split()[0])) <= 40, table
    assert row(table, "server exit code") == "0"
