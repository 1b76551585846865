"""Avatar preparation for the Wav2Lip engine: face boxes on a real photograph and on videos made here, crops,
the paste mask, the folder format and its validation, looping, the cache and the CLI command."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

import anchorcast_plugins
from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip import avatar as avatars
from anchorcast_plugins.engines.wav2lip.avatar import Avatar, open_avatar, prepare_avatar
from anchorcast_plugins.engines.wav2lip.cli_args import configure_avatar

ASTRONAUT = Path(anchorcast_plugins.__file__).parent / "engines" / "assets" / "astronaut.png"
SIZE = 448
SHIFT = (2.5, 1.0)  # pixels per frame the face moves in the synthetic video
FRAMES = 20


def astronaut_rgb() -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2RGB)


def moving_frames(count: int = FRAMES, blank: int | None = None) -> list[np.ndarray]:
    """The astronaut translated by SHIFT per frame (sub-pixel, bilinear); frame ``blank`` is a plain gradient."""
    image = astronaut_rgb()
    frames = []
    for k in range(count):
        if k == blank:
            ramp = np.linspace(0, 255, SIZE).astype(np.uint8)
            frames.append(np.ascontiguousarray(np.broadcast_to(ramp[None, :, None], (SIZE, SIZE, 3))))
            continue
        shift = np.float32([[1, 0, SHIFT[0] * k], [0, 1, SHIFT[1] * k]])
        frames.append(cv2.warpAffine(image, shift, (512, 512), borderMode=cv2.BORDER_REFLECT)[:SIZE, :SIZE].copy())
    return frames


def write_video(path: Path, frames: list[np.ndarray], fps: int = 25) -> Path:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        stream.options = {"crf": "10", "preset": "ultrafast"}
        for image in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode())
    return path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("avatars")


@pytest.fixture(scope="module")
def still(workdir: Path) -> Avatar:
    return prepare_avatar(ASTRONAUT, workdir / "still")


@pytest.fixture(scope="module")
def moving_video(workdir: Path) -> Path:
    return write_video(workdir / "moving.mp4", moving_frames())


@pytest.fixture(scope="module")
def moving(moving_video: Path, workdir: Path) -> Avatar:
    return prepare_avatar(moving_video, workdir / "moving")


@pytest.fixture(scope="module")
def moving_unsmoothed(moving_video: Path, workdir: Path) -> Avatar:
    return prepare_avatar(moving_video, workdir / "moving-raw", smooth_window=1)


# --- the still photograph ----------------------------------------------------------------------------------------


def test_the_box_is_on_the_face_of_the_photograph(still: Avatar) -> None:
    x1, y1, x2, y2 = still.box(0)
    eyes = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_eye.xml").detectMultiScale(
        cv2.cvtColor(cv2.imread(str(ASTRONAUT)), cv2.COLOR_BGR2GRAY), 1.1, 5, minSize=(10, 10))
    centres = [(x + w / 2, y + h / 2) for x, y, w, h in eyes]
    assert len(centres) == 2  # an independent detector: both eyes, inside the upper half of our box
    for cx, cy in centres:
        assert x1 < cx < x2 and y1 < cy < (y1 + y2) / 2
    assert 60 <= x2 - x1 <= 160 and 60 <= y2 - y1 <= 170
    fx, fy, fw, fh = still.info["detected_boxes"][0]
    assert (x1, y1, x2, y2) == (fx, fy, fx + fw, fy + fh + 10)  # the reference pads: 10 px below the chin


def test_the_still_folder(still: Avatar) -> None:
    info = json.loads((still.folder / "avatar.json").read_text())
    assert info["format_version"] == avatars.AVATAR_FORMAT_VERSION
    assert info["source"]["sha256"] == hashlib.sha256(ASTRONAUT.read_bytes()).hexdigest()
    assert info["source"]["kind"] == "image" and info["frame_count"] == 1
    assert (info["width"], info["height"]) == (512, 512)
    assert info["pads"] == {"top": 0, "bottom": 10, "left": 0, "right": 0}
    assert "haar" in info["detector"]
    assert still.is_still and still.fps is None
    np.testing.assert_array_equal(still.frame(0), astronaut_rgb())
    for i in (1, 2, 1000):
        np.testing.assert_array_equal(still.frame(i), still.frame(0))
        assert still.box(i) == still.box(0)
    assert not still.frame(0).flags.writeable
    assert still.source_changed() is False


def test_the_crop_is_the_box_resized_to_96_in_bgr(still: Avatar) -> None:
    crop = still.crop(0)
    assert crop.shape == (96, 96, 3) and crop.dtype == np.uint8
    assert still.crops.shape == (1, 96, 96, 3)
    x1, y1, x2, y2 = still.box(0)
    expected = cv2.resize(cv2.imread(str(ASTRONAUT))[y1:y2, x1:x2], (96, 96))  # cv2 reads BGR, as the model wants
    np.testing.assert_array_equal(crop, expected)


def test_the_paste_mask_is_one_on_the_lower_face_and_feathers_to_zero(still: Avatar) -> None:
    mask = still.mask
    assert mask.shape == (96, 96) and mask.dtype == np.float32
    np.testing.assert_allclose(mask, avatars.feather_mask(), atol=1 / 255)
    assert mask[72, 48] == 1.0 and mask[62:80, 30:66].min() == 1.0  # mouth and chin
    for edge in (mask[0], mask[-1], mask[:, 0], mask[:, -1]):
        assert edge.max() == 0.0
    assert mask[:38].max() == 0.0  # the eyes stay the frame's own
    assert np.abs(np.diff(mask, axis=0)).max() < 0.12 and np.abs(np.diff(mask, axis=1)).max() < 0.12  # no step
    column, row = mask[:, 48], mask[72]
    assert (np.diff(column[:70]) >= 0).all() and (np.diff(row[:48]) >= 0).all()  # rises monotonically
    large = still.mask_for(300, 200)
    assert large.shape == (200, 300) and large[0].max() == 0.0 and large[150, 150] == pytest.approx(1.0)
    assert np.abs(np.diff(large, axis=0)).max() < 0.06  # a larger box feathers over more pixels


# --- videos ------------------------------------------------------------------------------------------------


def test_boxes_follow_a_moving_face(moving_unsmoothed: Avatar) -> None:
    assert moving_unsmoothed.frame_count == FRAMES and moving_unsmoothed.fps == 25
    boxes = moving_unsmoothed.boxes.astype(float)
    frames = np.arange(FRAMES)
    for axis, speed in ((0, SHIFT[0]), (1, SHIFT[1])):
        centre = (boxes[:, axis] + boxes[:, axis + 2]) / 2
        slope, offset = np.polyfit(frames, centre, 1)
        assert slope == pytest.approx(speed, abs=0.3)
        assert np.abs(centre - (slope * frames + offset)).max() < 4


def test_smoothing_reduces_jitter(moving: Avatar, moving_unsmoothed: Avatar) -> None:
    raw = np.array(moving.info["detected_boxes"])
    np.testing.assert_array_equal(raw, moving_unsmoothed.info["detected_boxes"])  # same detections
    jitter = {name: np.abs(np.diff(a.boxes.astype(float), n=2, axis=0)).mean()
              for name, a in (("smooth", moving), ("raw", moving_unsmoothed))}
    assert jitter["smooth"] < 0.6 * jitter["raw"]
    np.testing.assert_array_equal(moving.boxes, avatars.smooth_boxes(moving_unsmoothed.boxes, 5))
    # each crop is cut with its frame's smoothed box
    for i in (0, 9, FRAMES - 1):
        x1, y1, x2, y2 = moving.box(i)
        expected = cv2.cvtColor(cv2.resize(np.asarray(moving.frame(i))[y1:y2, x1:x2], (96, 96)), cv2.COLOR_RGB2BGR)
        np.testing.assert_array_equal(moving.crop(i), expected)


def test_smooth_boxes_uses_the_reference_windows() -> None:
    boxes = np.array([[0, 0, 10, 10], [10, 0, 20, 10], [20, 0, 30, 10], [30, 0, 40, 10]])
    smoothed = avatars.smooth_boxes(boxes, 3)
    assert smoothed[:, 0].tolist() == [10, 20, 20, 20]  # mean of i..i+2, then the last full window
    assert avatars.smooth_boxes(boxes[:2], 5)[:, 0].tolist() == [5, 5]


def test_video_frames_play_as_a_ping_pong_loop(moving: Avatar) -> None:
    n = moving.frame_count
    originals = moving_frames()
    for k in (0, 7, n - 1):  # the stored frames are the video's (H.264 at high quality)
        difference = np.abs(np.asarray(moving.frame(k), np.int16) - originals[k]).mean()
        assert difference < 3
    for i, k in ((n, n - 2), (2 * n - 2, 0), (2 * n - 1, 1), (3 * n - 3, n - 1)):
        np.testing.assert_array_equal(moving.frame(i), moving.frame(k))
        assert moving.box(i) == moving.box(k)
        np.testing.assert_array_equal(moving.crop(i), moving.crop(k))


def test_loop_index() -> None:
    assert [avatars.loop_index(i, 4) for i in range(10)] == [0, 1, 2, 3, 2, 1, 0, 1, 2, 3]
    assert [avatars.loop_index(i, 2) for i in range(4)] == [0, 1, 0, 1]
    assert {avatars.loop_index(i, 1) for i in range(5)} == {0}


def test_fps_resampling_and_max_seconds(moving_video: Path, moving: Avatar, workdir: Path) -> None:
    slow = prepare_avatar(moving_video, workdir / "slow", fps=10, max_seconds=0.5)
    assert slow.frame_count == 5 and slow.fps == 10
    for k in range(5):  # output time k/10 shows the source frame at or before it: 2.5k at 25 fps
        np.testing.assert_array_equal(slow.frame(k), moving.frame(int(2.5 * k)))
    fast = prepare_avatar(moving_video, workdir / "fast", fps=50, max_seconds=0.2)
    assert fast.frame_count == 10
    np.testing.assert_array_equal(fast.frame(3), moving.frame(1))


def test_a_frame_without_a_face_is_named(workdir: Path) -> None:
    video = write_video(workdir / "blank.mp4", moving_frames(10, blank=6))
    out = workdir / "blank-avatar"
    with pytest.raises(InputError, match=r"frame 6 \(0\.24 s\)") as raised:
        prepare_avatar(video, out)
    assert "--face-box" in (raised.value.hint or "")
    assert not out.exists() and not list(workdir.glob(".blank-avatar*"))  # nothing half-written is left


def test_a_fixed_face_box_skips_detection(workdir: Path) -> None:
    video = write_video(workdir / "blank-fixed.mp4", moving_frames(6, blank=2))
    fixed = prepare_avatar(video, workdir / "fixed", face_box=(176, 65, 97, 97))
    assert fixed.info["detector"] == "fixed face box"
    assert {fixed.box(i) for i in range(6)} == {(176, 65, 273, 172)}
    edge = prepare_avatar(video, workdir / "fixed-edge", face_box=(400, 400, 100, 100))
    assert edge.box(0) == (400, 400, SIZE, SIZE)  # clipped to the frame
    with pytest.raises(InputError, match="outside"):
        prepare_avatar(video, workdir / "fixed-out", face_box=(600, 600, 50, 50))


def test_long_clips_are_stored_as_jpeg(moving_video: Path, moving: Avatar, workdir: Path) -> None:
    jpeg = prepare_avatar(moving_video, workdir / "jpeg", raw_limit_bytes=5 * SIZE * SIZE * 3)
    assert jpeg.info["frames"]["format"] == "jpeg"
    assert len(list((jpeg.folder / "frames").glob("*.jpg"))) == FRAMES
    assert not (jpeg.folder / "frames.rgb").exists()
    for i in (0, 4, 5, FRAMES - 1, FRAMES + 3):  # frames from before and after the switch
        difference = np.abs(np.asarray(jpeg.frame(i), np.int16) - moving.frame(i)).mean()
        assert difference < 2.5
    np.testing.assert_array_equal(jpeg.crops, moving.crops)  # crops come from the decoded frames, not the JPEGs


# --- the folder, validation, the cache ---------------------------------------------------------------------------


def _copy_of(avatar: Avatar, target: Path) -> Path:
    import shutil

    shutil.copytree(avatar.folder, target)
    return target


def test_load_rejects_incomplete_or_foreign_folders(still: Avatar, tmp_path: Path) -> None:
    assert Avatar.is_prepared_folder(still.folder) and not Avatar.is_prepared_folder(tmp_path)
    assert Avatar.load(still.folder).box(0) == still.box(0)
    with pytest.raises(InputError, match="does not exist"):
        Avatar.load(tmp_path / "nowhere")
    with pytest.raises(InputError, match="avatar.json is missing"):
        Avatar.load(tmp_path)

    old = _copy_of(still, tmp_path / "old")
    info = json.loads((old / "avatar.json").read_text())
    (old / "avatar.json").write_text(json.dumps({**info, "format_version": 0}))
    with pytest.raises(InputError, match="format 0") as raised:
        Avatar.load(old)
    assert str(old) in str(raised.value) and "anchorcast avatar prepare" in (raised.value.hint or "")

    for name, damage in (("crops.npy", "missing"), ("frames.rgb", "truncate"), ("mask.png", "missing"),
                         ("avatar.json", "garble")):
        folder = _copy_of(still, tmp_path / f"broken-{name}")
        path = folder / name
        if damage == "missing":
            path.unlink()
        elif damage == "truncate":
            path.write_bytes(path.read_bytes()[:1000])
        else:
            path.write_text("{not json")
        with pytest.raises(InputError, match=name.replace(".", r"\.")) as raised:
            Avatar.load(folder)
        assert str(folder) in str(raised.value)


def test_prepare_refuses_to_overwrite_a_folder_that_is_not_an_avatar(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not an avatar folder"):
        prepare_avatar(ASTRONAUT, tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_features_path_stays_inside_the_folder(still: Avatar) -> None:
    path = still.features_path("../../etc/passwd sha:ab12")
    assert path.parent == still.folder / "features" and path.suffix == ".npy"
    assert still.features_path("a" * 64) != still.features_path("b" * 64)


def test_open_avatar_prepares_once_and_reuses(tmp_path: Path, still: Avatar) -> None:
    source = tmp_path / "anchor.png"
    source.write_bytes(ASTRONAUT.read_bytes())
    cache = tmp_path / "cache"
    first = open_avatar(source, cache)
    assert first.folder.parent == cache and first.source_sha256 == still.source_sha256
    stamp = (first.folder / "avatar.json").stat().st_mtime_ns
    again = open_avatar(source, cache)
    assert again.folder == first.folder and (again.folder / "avatar.json").stat().st_mtime_ns == stamp
    assert open_avatar(first.folder).folder == first.folder  # a prepared folder is used as it is

    (first.folder / "crops.npy").unlink()  # a damaged cache entry is prepared again
    repaired = open_avatar(source, cache)
    assert repaired.folder == first.folder and repaired.crops.shape == (1, 96, 96, 3)

    flipped = cv2.flip(cv2.imread(str(ASTRONAUT)), 1)  # the user edits the picture: prepared anew
    cv2.imwrite(str(source), flipped)
    changed = open_avatar(source, cache)
    assert changed.source_sha256 != first.source_sha256 and changed.folder != first.folder
    x1, _, x2, _ = changed.box(0)
    assert abs((x1 + x2) / 2 - (512 - (still.box(0)[0] + still.box(0)[2]) / 2)) < 8  # the face moved with it
    assert Avatar.load(first.folder).source_changed() is True

    boxed = open_avatar(source, cache, face_box=(10, 10, 50, 50))  # other options: another folder
    assert boxed.folder != changed.folder and boxed.box(0) == (10, 10, 60, 70)


def test_open_avatar_defaults_to_anchorcast_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANCHORCAST_HOME", str(tmp_path / "home"))
    avatar = open_avatar(ASTRONAUT)
    assert avatar.folder.parent == tmp_path / "home" / "avatars"
    with pytest.raises(InputError, match="not an avatar folder"):
        open_avatar(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        open_avatar(tmp_path / "missing.png")


def test_a_broken_source_is_reported(tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_bytes(b"not an image")
    with pytest.raises(InputError, match="cannot read the avatar image"):
        prepare_avatar(tmp_path / "fake.png", tmp_path / "out")
    (tmp_path / "fake.mp4").write_bytes(b"not a video at all")
    with pytest.raises(InputError, match="fake.mp4"):
        prepare_avatar(tmp_path / "fake.mp4", tmp_path / "out")


# --- the CLI command ---------------------------------------------------------------------------------------------


def _cli(arguments: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="anchorcast avatar")
    configure_avatar(parser)
    return parser.parse_args(arguments)


def test_cli_prepare(tmp_path: Path, moving_video: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli"
    args = _cli(["prepare", str(moving_video), "--out", str(out), "--fps", "10", "--max-seconds", "0.4"])
    assert avatars.run_avatar(None, args) == 0
    avatar = Avatar.load(out)
    assert avatar.frame_count == 4 and avatar.fps == 10
    printed = capsys.readouterr().err
    assert str(out) in printed.replace("\n", "") and "4 frames at 10 fps" in printed

    fixed = _cli(["prepare", str(ASTRONAUT), "--out", str(tmp_path / "fixed"), "--face-box", "177,67,93,93"])
    assert avatars.run_avatar(None, fixed) == 0
    assert Avatar.load(tmp_path / "fixed").box(0) == (177, 67, 270, 170)
    for bad in ("1,2,3", "a,b,c,d", "1,2,0,4"):
        with pytest.raises(InputError, match="face box"):
            avatars.run_avatar(None, _cli(["prepare", str(ASTRONAUT), "--face-box", bad]))
    with pytest.raises(InputError, match="fps"):
        avatars.run_avatar(None, _cli(["prepare", str(moving_video), "--fps", "-1"]))


def test_cli_default_folder_is_where_open_avatar_looks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANCHORCAST_HOME", str(tmp_path))
    assert avatars.run_avatar(None, _cli(["prepare", str(ASTRONAUT)])) == 0
    (prepared,) = (tmp_path / "avatars").iterdir()
    stamp = (prepared / "avatar.json").stat().st_mtime_ns
    assert open_avatar(ASTRONAUT).folder == prepared
    assert (prepared / "avatar.json").stat().st_mtime_ns == stamp
    assert os.listdir(tmp_path / "avatars") == [prepared.name]
