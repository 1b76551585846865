"""Nothing lost on disk: a full disk mid-run is reported as what it is and the file written so far plays; a
kill -9 leaves a file that plays up to its last complete second (the MP4 is fragmented, a fragment a second).

The full disk is a real one: a 400 KiB tmpfs mounted in a private mount namespace (``unshare -m``, as root, which
CI runs as), with `anchorcast run` writing onto it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from anchorcast_plugins.outputs.file_health import playable_seconds

pytestmark = pytest.mark.slow

BULLETIN = ("Good evening. Here is the news. The markets rose today, led by shares in technology companies. "
            "In sport, the home side won by two goals to one. The weather tomorrow will be dry and bright, "
            "with a light wind from the west, and temperatures a little above the average for the time of year.")


def decoded_frames(path: Path) -> tuple[int, float]:
    """How many video frames decode from the file, and the time of the last."""
    count, last = 0, 0.0
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                count, last = count + 1, float(frame.time or 0.0)
    except (av.FFmpegError, OSError):
        pass
    return count, last


def mount_point(tmp_path: Path) -> Path:
    """An empty folder for a test's private tmpfs (mounted inside ``unshare -m``, which needs root, as CI has)."""
    if shutil.which("unshare") is None or os.geteuid() != 0:
        pytest.fail("this test mounts a small tmpfs: it needs unshare (util-linux) and root, as CI has")
    disk = tmp_path / "disk"
    disk.mkdir()
    return disk


def test_a_full_disk_is_reported_with_how_much_plays_and_the_file_plays_that_far(tmp_path: Path) -> None:
    disk = mount_point(tmp_path)
    script = f"""
mount -t tmpfs -o size=400k tmpfs {disk} || exit 99
cd {disk}
COLUMNS=160 {sys.executable} -m anchorcast run --text "{BULLETIN}" --out {disk}/bulletin.mp4 > {tmp_path}/run.txt 2>&1
echo $? > {tmp_path}/rc
cp {disk}/bulletin.mp4 {tmp_path}/bulletin.mp4
"""
    subprocess.run(["unshare", "-m", "bash", "-c", script], check=True, timeout=300)
    output = (tmp_path / "run.txt").read_text()
    rc = int((tmp_path / "rc").read_text())
    assert rc != 0, output
    assert "Traceback" not in output, output
    flat = " ".join(output.split())
    assert f"disk full writing {disk}/bulletin.mp4 after" in flat, output
    claimed = float(flat.split("the file plays up to ")[1].split(" s")[0])
    assert claimed >= 1.0, output
    copy = tmp_path / "bulletin.mp4"
    assert abs(playable_seconds(copy) - claimed) < 0.1
    frames, last = decoded_frames(copy)
    assert frames >= round((claimed - 0.1) * 25) and last >= claimed - 0.2, (frames, last, claimed)


def test_with_a_second_output_the_full_disk_takes_only_its_own_file_off_and_the_run_says_so(tmp_path: Path) -> None:
    disk = mount_point(tmp_path)
    script = f"""
mount -t tmpfs -o size=400k tmpfs {disk} || exit 99
cd {tmp_path}
COLUMNS=160 {sys.executable} -m anchorcast run --text "{BULLETIN}" --out {disk}/bulletin.mp4 \
    --set outputs.backup.use=file --set outputs.backup.path={tmp_path}/backup.mp4 \
    --metrics {tmp_path}/m.json > {tmp_path}/run.txt 2>&1
echo $? > {tmp_path}/rc
"""
    subprocess.run(["unshare", "-m", "bash", "-c", script], check=True, timeout=300)
    output = (tmp_path / "run.txt").read_text()
    flat = " ".join(output.split())
    assert int((tmp_path / "rc").read_text()) == 3, output  # the run ended, but an output failed on the way
    assert "Traceback" not in output, output
    assert flat.count("disk full writing") == 2, output  # once as it happened, once in the summary
    assert f"wrote {tmp_path}/backup.mp4" in flat
    report = json.loads((tmp_path / "m.json").read_text())
    assert list(report["failed_outputs"]) == ["file"] and "disk full" in report["failed_outputs"]["file"]
    frames, _ = decoded_frames(tmp_path / "backup.mp4")
    assert frames == report["frames"] and report["media_seconds"] > 10  # the other file has every frame


def test_a_run_killed_mid_file_leaves_a_file_that_plays_up_to_its_last_complete_second(tmp_path: Path) -> None:
    target = tmp_path / "bulletin.mp4"
    env = {**os.environ, "COLUMNS": "160"}
    run = subprocess.Popen([sys.executable, "-m", "anchorcast", "run", "--text", BULLETIN * 3, "--out", str(target)],
                           cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and playable_seconds(target) < 3.0:
            time.sleep(0.5)
        os.kill(run.pid, signal.SIGKILL)
    finally:
        run.kill()
        run.wait(30)
    plays = playable_seconds(target)
    assert plays >= 3.0
    frames, last = decoded_frames(target)
    assert frames >= round(plays * 25) - 2 and last >= plays - 0.2, (frames, last, plays)


def test_once_the_disk_has_room_again_the_recording_goes_on_in_a_second_part(tmp_path: Path) -> None:
    """A long-running stream loses only the outage: the file output is taken off at the full disk, and once the
    disk is freed it goes on in NAME-part2.mp4 while the backup file (another disk) has every frame."""
    disk = mount_point(tmp_path)
    script = f"""
mount -t tmpfs -o size=24m tmpfs {disk} || exit 99
dd if=/dev/zero of={disk}/filler bs=1k count=$((24 * 1024 - 450)) 2>/dev/null
cd {tmp_path}
COLUMNS=160 {sys.executable} -m anchorcast run --text "{BULLETIN}" --out {disk}/bulletin.mp4 \
    --set scheduler.pace=realtime --set outputs.backup.use=file --set outputs.backup.path={tmp_path}/backup.mp4 \
    --metrics {tmp_path}/m.json > {tmp_path}/run.txt 2>&1 &
run=$!
for i in $(seq 600); do grep -q "disk full" {tmp_path}/run.txt && break; sleep 0.1; done
rm {disk}/filler
wait $run
echo $? > {tmp_path}/rc
cp {disk}/*.mp4 {tmp_path}/
"""
    subprocess.run(["unshare", "-m", "bash", "-c", script], check=True, timeout=300)
    output = (tmp_path / "run.txt").read_text()
    flat = " ".join(output.split())
    assert int((tmp_path / "rc").read_text()) == 3, output  # the file had a gap: the run says an output failed
    assert "Traceback" not in output, output
    assert f"came back: recording continues in {disk}/bulletin-part2.mp4" in flat, output
    report = json.loads((tmp_path / "m.json").read_text())
    assert "disk full" in report["failed_outputs"]["file"] and "part2" in report["resumed_outputs"]["file"]
    lost = report["outputs"]["file"]["frames_lost"]
    assert 0 < lost < 6 * 25, (lost, output)  # the unflushed fragment, and until the filler went and a retry (2 s) found room
    first, _ = decoded_frames(tmp_path / "bulletin.mp4")
    second, second_last = decoded_frames(tmp_path / "bulletin-part2.mp4")
    backup, _ = decoded_frames(tmp_path / "backup.mp4")
    assert backup == report["frames"]
    assert first + lost + second == report["frames"], (first, lost, second, report["frames"])
    assert abs(second_last - (second - 1) / 25) < 0.01  # the second part is timed from its own start
    with av.open(str(tmp_path / "bulletin-part2.mp4")) as container:
        audio = container.streams.audio[0]
        assert audio.duration is not None and abs(float(audio.duration * audio.time_base) - second / 25) < 0.15
