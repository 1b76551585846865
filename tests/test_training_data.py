"""Training data: the synthetic talking-face set, the data set format and SyncNet sampler, and `train prepare`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.training.cli_args import (
    configure_prepare,
    configure_synth,
    configure_train,
    run_train,
)
from anchorcast_plugins.engines.wav2lip.training.dataset import (
    INFO_FILE,
    Dataset,
    DatasetWriter,
    lower_halves,
    mel_start,
)
from anchorcast_plugins.engines.wav2lip.training.prepare import prepare_dataset
from anchorcast_plugins.engines.wav2lip.training.synth import SPEAKERS, SyntheticTalker, make_synthetic_dataset
from tests.mp4 import write_video
from tests.sync_stand_in import BrightnessExpert, clip_with_delay, write_delayed_clips


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Dataset:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth") / "set", clips=6, seconds=2.0, seed=1)


def test_synthetic_dataset_loads_with_ground_truth(synthetic: Dataset) -> None:
    loaded = Dataset.load(synthetic.folder)
    assert len(loaded) == 6
    assert loaded.speakers == sorted(s.name for s in SPEAKERS)
    for clip in loaded.clips:
        assert clip.frames == 50
        assert clip.faces.shape == (50, 96, 96, 3) and clip.faces.dtype == np.uint8
        assert clip.audio.shape == (50 * 640,) and clip.audio.dtype == np.float32
        assert clip.mel.shape == (80, 1 + 50 * 640 // 200)
        assert len(clip.truth["mouth_openness"]) == 50 and clip.truth["phonemes"]
        assert np.abs(clip.audio).max() > 0.05  # it speaks
        openness = np.array(clip.truth["mouth_openness"])
        assert openness.max() > 0.3
        # The mouth moves as the truth says: the lower face departs from its most-closed frame with openness.
        lower = clip.faces[:, 55:90, 20:76].astype(np.float32)
        change = np.abs(lower - lower[int(np.argmin(openness))]).mean(axis=(1, 2, 3))
        assert np.corrcoef(openness, change)[0, 1] > 0.8
    two = next(c for c in loaded.clips if c.speaker == SPEAKERS[1].name)
    one = next(c for c in loaded.clips if c.speaker == SPEAKERS[0].name)
    assert np.abs(two.faces[0].astype(int) - one.faces[0].astype(int)).mean() > 10  # a different-looking face


def test_synthetic_dataset_follows_its_seed(tmp_path: Path) -> None:
    a = make_synthetic_dataset(tmp_path / "a", clips=3, seconds=0.8, seed=7, speakers=1)
    b = make_synthetic_dataset(tmp_path / "b", clips=3, seconds=0.8, seed=7, speakers=1)
    c = make_synthetic_dataset(tmp_path / "c", clips=3, seconds=0.8, seed=8, speakers=1)
    texts = [x.truth["text"] for x in a.clips]
    # eSpeak NG's noise sources are random, so the audio differs by a few samples; the script does not.
    assert texts == [x.truth["text"] for x in b.clips]
    assert texts != [x.truth["text"] for x in c.clips]
    for x, y in zip(a.clips, b.clips, strict=True):
        assert x.frames == y.frames and np.corrcoef(x.mel.ravel(), y.mel.ravel())[0, 1] > 0.8


def test_sync_pairs_shapes_labels_and_shifts(synthetic: Dataset) -> None:
    batch = synthetic.sync_pairs(np.random.default_rng(0), 64, shift_min=5)
    assert batch.mels.shape == (64, 1, 80, 16) and batch.faces.shape == (64, 15, 48, 96)
    assert batch.mels.dtype == np.float32 and batch.faces.dtype == np.float32
    assert batch.faces.min() >= 0.0 and batch.faces.max() <= 1.0
    assert batch.labels.sum() == 32
    for k in range(64):
        clip = synthetic.clip(batch.clip_ids[k])
        t, u = int(batch.face_starts[k]), int(batch.audio_starts[k])
        assert np.array_equal(batch.faces[k], lower_halves(clip.faces[t : t + 5]))
        # frame-major BGR: channels 3..5 are frame t+1's lower half
        assert np.allclose(batch.faces[k, 3:6], clip.faces[t + 1, 48:].transpose(2, 0, 1) / 255.0)
        # Find where this audio window really comes from, independently of audio_starts.
        sources = [s for s in range(clip.sync_starts)
                   if np.array_equal(clip.mel[:, mel_start(s) : mel_start(s) + 16], batch.mels[k, 0])]
        assert sources, "the mel window is not a window of its clip"
        if batch.labels[k] == 1:
            assert u == t and t in sources
        else:
            assert min(abs(s - t) for s in sources) >= 5


def test_sync_pairs_negatives_in_a_short_clip_stay_shifted(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    with DatasetWriter(tmp_path / "set") as writer:
        # 12 frames: 8 starts, so starts 3 and 4 have no start 5 frames away
        writer.add("short", "x", rng.integers(0, 255, (12, 96, 96, 3), dtype=np.uint8),
                   rng.normal(0, 0.1, 12 * 640), source="noise")
        dataset = writer.finish()
    assert dataset.clip("short").sync_starts == 8
    batch = dataset.sync_pairs(rng, 400, shift_min=5)
    negatives = batch.labels == 0
    assert negatives.sum() == 200
    assert np.all(np.abs(batch.face_starts - batch.audio_starts)[negatives] >= 5)
    assert set(batch.face_starts[negatives]) <= {0, 1, 2, 5, 6, 7}


def test_sync_pairs_refuses_clips_too_short_for_the_shift(synthetic: Dataset) -> None:
    with pytest.raises(InputError, match="long enough"):
        synthetic.sync_pairs(np.random.default_rng(0), 4, shift_min=60)


def test_heldout_split_is_deterministic_and_by_clip(synthetic: Dataset) -> None:
    train, held = synthetic.split(0.34, seed=3)
    again_train, again_held = Dataset.load(synthetic.folder).split(0.34, seed=3)
    assert [c.id for c in held.clips] == [c.id for c in again_held.clips]
    assert [c.id for c in train.clips] == [c.id for c in again_train.clips]
    assert len(held) == 3 and len(train) == 3
    assert not {c.id for c in train.clips} & {c.id for c in held.clips}
    # the order is a hash of seed and id: a subset's held-out clips come from the same ranking
    smaller = synthetic.subset([c.id for c in synthetic.clips[:4]])
    assert len(smaller.split(0.34, seed=3)[1]) == 2
    assert len({frozenset(c.id for c in synthetic.split(0.5, seed=s)[1].clips) for s in range(8)}) > 1


def test_load_names_what_is_missing(synthetic: Dataset, tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        Dataset.load(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no dataset.json"):
        Dataset.load(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    info = json.loads((synthetic.folder / INFO_FILE).read_text())
    (broken / INFO_FILE).write_text(json.dumps(info))
    with pytest.raises(InputError, match=rf"clip {info['clips'][0]['id']} has no clips/.*/faces.npy"):
        Dataset.load(broken)
    with pytest.raises(InputError, match="no clip 'missing'"):
        synthetic.clip("missing")


def test_writer_refuses_a_folder_that_is_not_a_dataset(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a data set folder"):
        DatasetWriter(tmp_path)


def test_prepare_keeps_talking_faces_and_reports_drops(tmp_path: Path) -> None:
    talker = SyntheticTalker(SPEAKERS[0], size=320)
    clip = talker.speak(["Good evening, and welcome to the late news.",
                         "The weather will stay mild with light rain in the west."], seconds=2.4)
    anna = tmp_path / "videos" / "anna"
    anna.mkdir(parents=True)
    doubled = [f for f in clip.frames for _ in range(2)]  # 50 fps: prepare must resample to 25
    write_video(anna / "read.mp4", doubled, 50, clip.audio)
    write_video(anna / "short.mp4", clip.frames[:12], 25, clip.audio[: 12 * 640])
    write_video(anna / "silent.mp4", clip.frames[:40], 25, None)
    tiny = [np.ascontiguousarray(f[::4, ::4]) for f in clip.frames[:30]]
    write_video(anna / "tiny.mp4", tiny, 25, clip.audio[: 30 * 640])
    (anna / "notes.mp4").write_text("not a video at all\n")

    report = prepare_dataset([anna, tmp_path / "missing.mp4"], tmp_path / "set", min_seconds=1.0,
                             max_seconds=1.6, min_resolution=160)
    reasons = {Path(source).name: reason for source, reason in report.dropped}
    assert "too short" in reasons["short.mp4"]
    assert reasons["silent.mp4"] == "no audio stream"
    assert "unreadable" in reasons["notes.mp4"]
    assert "too low resolution" in reasons["tiny.mp4"]
    assert "does not exist" in reasons["missing.mp4"]
    assert [Path(s).name for s, _ in report.kept] == ["read.mp4"]

    dataset = Dataset.load(tmp_path / "set")
    assert dataset.speakers == ["anna"]
    assert [c.frames for c in dataset.clips] == [30, 30]  # 60 frames split evenly under --max-seconds 1.6
    expected = talker.crops(clip.frames)
    start = 0
    for got in dataset.clips:
        assert got.faces.shape == (got.frames, 96, 96, 3)
        # the same faces as the renderer's own crops (codec loss and a slightly different box allowed)
        diff = np.abs(got.faces.astype(int) - expected[start : start + got.frames].astype(int)).mean()
        assert diff < 14, diff
        # the sound is the clip's own, at 16 kHz and in time with the frames
        original = clip.audio[start * 640 : (start + got.frames) * 640]
        corr = np.corrcoef(original, got.audio)[0, 1]
        assert corr > 0.95, corr
        start += got.frames


def test_prepare_cuts_where_the_face_is_lost_or_too_small(tmp_path: Path) -> None:
    talker = SyntheticTalker(SPEAKERS[1], size=320)
    clip = talker.speak(["Markets opened higher this morning after a quiet week."], seconds=1.8)
    frames = [f.copy() for f in clip.frames]
    for f in frames[28:34]:
        f[:] = 90  # the presenter walks off: no face
    video = tmp_path / "bob" / "take.mp4"
    video.parent.mkdir()
    write_video(video, frames, 25, clip.audio)
    report = prepare_dataset([video], tmp_path / "set", min_seconds=1.0, max_seconds=4.0)
    assert [c.frames for c in report.dataset.clips] == [28]
    assert report.dataset.speakers == ["bob"]
    assert report.dropped == [(str(video), "frames 34-45 (0.44 s, at the end of the video): under --min-seconds 1")]

    with pytest.raises(InputError, match=r"too small \(under --min-face 200 px\) in 39 of 45 frames"):
        prepare_dataset([video], tmp_path / "other", min_face=200)


def test_prepare_with_nothing_usable_says_why(tmp_path: Path) -> None:
    text = tmp_path / "talk.mp4"
    text.write_text("hello")
    with pytest.raises(InputError, match="talk.mp4: unreadable"):
        prepare_dataset([text], tmp_path / "set")
    assert not (tmp_path / "set").exists()


def test_cli_arguments_parse() -> None:
    parser = argparse.ArgumentParser()
    configure_prepare(parser)
    args = parser.parse_args(["a.mp4", "b", "--out", "set", "--speaker", "anna", "--max-seconds", "5"])
    assert args.videos == [Path("a.mp4"), Path("b")] and args.out == Path("set") and args.max_seconds == 5.0
    parser = argparse.ArgumentParser()
    configure_synth(parser)
    args = parser.parse_args(["--out", "s", "--clips", "3"])
    assert (args.clips, args.seconds, args.speakers) == (3, 3.0, 2)


def test_train_command_runs_synth(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    configure_train(parser)
    assert parser.parse_args(["prepare", "v.mp4", "--out", "d"]).train_action == "prepare"
    args = parser.parse_args(["synth", "--out", str(tmp_path / "set"), "--clips", "2", "--seconds", "0.8",
                              "--speakers", "1"])
    assert run_train(None, args) == 0
    dataset = Dataset.load(tmp_path / "set")
    assert len(dataset) == 2 and dataset.speakers == [SPEAKERS[0].name]


@pytest.mark.parametrize("delay", [0, 3, -4])
def test_the_expert_finds_a_clips_audio_offset(delay: int) -> None:
    from anchorcast_plugins.engines.wav2lip.training.offsets import sync_offset

    faces, mel = clip_with_delay(60, delay, seed=abs(delay))
    best, at_best, at_zero = sync_offset(BrightnessExpert(), faces, mel)
    assert best == delay and at_best > 0.75
    assert at_zero == at_best if delay == 0 else at_zero < at_best - 0.5


def test_prepare_with_an_expert_drops_off_sync_clips(tmp_path: Path) -> None:
    from anchorcast_plugins.engines.wav2lip.training.prepare import _drop_off_sync

    with DatasetWriter(tmp_path / "set") as writer:
        write_delayed_clips(writer, {"in-sync": 1, "late": 5}, frames=50, seed=7)
        dropped: list[tuple[str, str]] = []
        _drop_off_sync(writer, BrightnessExpert(), 2, dropped)
        dataset = writer.finish()
    assert [c.id for c in dataset.clips] == ["in-sync"]
    assert dataset.info["clips"][0]["sync"]["best_offset"] == 1
    assert dropped == [("late.mp4", dropped[0][1])] and "best audio offset is +5 frames" in dropped[0][1]


def test_writer_keeps_the_original_sound_and_relabels_clips(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    faces = rng.integers(0, 255, (10, 96, 96, 3), dtype=np.uint8)
    noisy = rng.normal(0, 0.1, 10 * 640).astype(np.float32)
    with DatasetWriter(tmp_path / "set") as writer:
        writer.add("anna-take-000000", "anna", faces, noisy * 0.5, source="take.mp4", original=noisy[:6000])
        writer.add("plain", "anna", faces, noisy, source="other.mp4")
        assert writer.relabel("anna-take-000000", "anna-2", "plain") == "plainx"  # the id was taken
        dataset = writer.finish()
    moved = dataset.clip("plainx")
    assert moved.speaker == "anna-2" and dataset.speakers == ["anna", "anna-2"]
    assert moved.audio_original is not None and moved.audio_original.shape == (6400,)
    assert np.array_equal(moved.audio_original[:6000], noisy[:6000]) and not moved.audio_original[6000:].any()
    assert np.allclose(moved.audio, noisy * 0.5)
    assert dataset.clip("plain").audio_original is None  # a clip (or an older data set) without one still loads
