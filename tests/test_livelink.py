"""Live Link Face CSV takes as coefficient-model training data: names, timecodes, resampling, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from anchorcast.errors import InputError
from anchorcast_plugins.engines.face3d.coeff_model import shipped_expression_names
from anchorcast_plugins.engines.face3d.livelink import (
    arkit_targets,
    load_livelink_folder,
    load_take,
    parse_timecode,
    read_csv,
)

NAMES = shipped_expression_names()
ARKIT = ("EyeBlinkLeft EyeLookDownLeft EyeLookInLeft EyeLookOutLeft EyeLookUpLeft EyeSquintLeft EyeWideLeft "
         "EyeBlinkRight EyeLookDownRight EyeLookInRight EyeLookOutRight EyeLookUpRight EyeSquintRight "
         "EyeWideRight JawForward JawRight JawLeft JawOpen MouthClose MouthFunnel MouthPucker MouthRight "
         "MouthLeft MouthSmileLeft "
         "MouthSmileRight MouthFrownLeft MouthFrownRight MouthDimpleLeft MouthDimpleRight MouthStretchLeft "
         "MouthStretchRight MouthRollLower MouthRollUpper MouthShrugLower MouthShrugUpper MouthPressLeft "
         "MouthPressRight MouthLowerDownLeft MouthLowerDownRight MouthUpperUpLeft MouthUpperUpRight BrowDownLeft "
         "BrowDownRight BrowInnerUp BrowOuterUpLeft BrowOuterUpRight CheekPuff CheekSquintLeft CheekSquintRight "
         "NoseSneerLeft NoseSneerRight TongueOut").split()
ROTATIONS = "HeadYaw HeadPitch HeadRoll LeftEyeYaw LeftEyePitch LeftEyeRoll RightEyeYaw RightEyePitch RightEyeRoll"
HEADER = ["Timecode", "BlendShapeCount", *ARKIT, *ROTATIONS.split()]


def timecode(seconds: float, rate: int = 60) -> str:
    millis = round(seconds * rate * 1000)  # in thousandths of a frame
    whole, fraction = divmod(millis, 1000)
    s = whole // rate
    return f"14:{s // 60 + 3:02d}:{s % 60:02d}:{whole % rate:02d}.{fraction:03d}"


def write_take(folder: Path, name: str = "take01", seconds: float = 2.0, start: float = 7.25,
               wav_rate: int = 48000) -> Path:
    """A synthetic take in the app's export format: JawOpen a ramp, a blink, BrowInnerUp and a right smile held,
    head rotations as noise; a WAV of the same length beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    lines = [",".join(HEADER)]
    for row in range(round(seconds * 60)):
        t = row / 60
        values = dict.fromkeys(ARKIT, 0.0)
        values.update(JawOpen=t / seconds, BrowInnerUp=0.5, MouthSmileRight=0.3,
                      EyeBlinkLeft=1.0 if 0.5 <= t < 0.6 else 0.0, TongueOut=0.9)
        cells = [timecode(start + t), "61", *(f"{values[n]:.6f}" for n in ARKIT),
                 *(f"{v:.4f}" for v in rng.normal(0, 0.1, 9))]
        lines.append(",".join(cells))
    path = folder / f"{name}.csv"
    path.write_text("\n".join(lines) + "\n")
    t = np.arange(round(seconds * wav_rate)) / wav_rate
    soundfile.write(folder / f"{name}.wav", (0.2 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), wav_rate)
    return path


def test_every_arkit_blendshape_finds_its_expressions() -> None:
    covered = set()
    for name in ARKIT:
        targets = arkit_targets(name, NAMES)
        assert (targets == []) == (name == "TongueOut"), name
        covered.update(NAMES[i] for i in targets)
    assert covered == set(NAMES)
    assert [NAMES[i] for i in arkit_targets("EyeBlinkLeft", NAMES)] == ["eyeBlink_L"]
    assert [NAMES[i] for i in arkit_targets("MouthSmileRight", NAMES)] == ["mouthSmile_R"]
    assert [NAMES[i] for i in arkit_targets("JawOpen", NAMES)] == ["jawOpen"]
    assert [NAMES[i] for i in arkit_targets("CheekPuff", NAMES)] == ["cheekPuff_L", "cheekPuff_R"]


def test_timecodes_count_frames_at_the_apps_rate() -> None:
    assert parse_timecode("13:47:28:09.500") == pytest.approx(13 * 3600 + 47 * 60 + 28 + 9.5 / 60)
    assert parse_timecode("00:00:01:15", rate=30) == pytest.approx(1.5)
    with pytest.raises(ValueError):
        parse_timecode("00:00:01:75")
    with pytest.raises(ValueError):
        parse_timecode("1.25")


def test_a_take_maps_names_and_resamples_to_video_frames(tmp_path: Path) -> None:
    path = write_take(tmp_path)
    capture = read_csv(path)
    assert capture.times[0] == 0 and capture.times[-1] == pytest.approx(119 / 60, abs=1e-3)
    audio, target = load_take(path, fps=25)
    assert audio.dtype == np.float32 and len(audio) == len(target) * 640
    assert len(target) == 50
    jaw = target[:, NAMES.index("jawOpen")]
    centres = (np.arange(50) + 0.5) / 25
    assert jaw == pytest.approx(np.minimum(centres, 119 / 60) / 2.0, abs=2e-3)
    assert target[:, NAMES.index("browInnerUp_L")] == pytest.approx(0.5)
    assert target[:, NAMES.index("browInnerUp_R")] == pytest.approx(0.5)
    assert target[:, NAMES.index("mouthSmile_R")] == pytest.approx(0.3)
    assert not target[:, NAMES.index("mouthSmile_L")].any()
    blink = target[:, NAMES.index("eyeBlink_L")]
    assert blink[13] == pytest.approx(1.0) and blink[5] == 0 and not target[:, NAMES.index("eyeBlink_R")].any()


def test_a_folder_of_takes_becomes_items_with_a_held_out_take(tmp_path: Path) -> None:
    for k in range(3):
        write_take(tmp_path / "anna", f"take{k:02d}", seconds=1.0)
    items = load_livelink_folder(tmp_path / "anna", heldout_every=3)
    assert [item.split for item in items] == ["train", "train", "heldout-sentence"]
    assert {item.voice for item in items} == {"livelink-anna"}


def test_broken_takes_are_refused_naming_the_file_and_line(tmp_path: Path) -> None:
    path = write_take(tmp_path)
    lines = path.read_text().splitlines()
    no_jaw = tmp_path / "nojaw.csv"
    no_jaw.write_text("\n".join(line.replace("JawOpen", "Jaw") for line in lines))
    with pytest.raises(InputError, match=r"nojaw\.csv:1: .*(jawopen|Jaw)"):
        read_csv(no_jaw)
    bad_value = tmp_path / "badvalue.csv"
    cells = lines[5].split(",")
    cells[20] = "abc"
    bad_value.write_text("\n".join([*lines[:5], ",".join(cells), *lines[6:]]))
    with pytest.raises(InputError, match=r"badvalue\.csv:6: "):
        read_csv(bad_value)
    bad_clock = tmp_path / "badclock.csv"
    bad_clock.write_text("\n".join([*lines[:3], "garbage" + lines[3][lines[3].index(","):], *lines[4:]]))
    with pytest.raises(InputError, match=r"badclock\.csv:4: timecode 'garbage'"):
        read_csv(bad_clock)
    short = tmp_path / "short.csv"
    short.write_text("\n".join([*lines[:2], "14:00:00:01.000,61,0.1"]))
    with pytest.raises(InputError, match=r"short\.csv:3: 3 values"):
        read_csv(short)
    (tmp_path / "alone.csv").write_text(path.read_text())
    with pytest.raises(InputError, match=r"alone\.csv: no audio beside it \(alone\.wav\)"):
        load_take(tmp_path / "alone.csv")
