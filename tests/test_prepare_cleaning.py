"""`anchorcast train prepare` cleaning: synthetic presenters with noise, blur, darkness, overexposure, silence, a
face-less stretch, a second person and a low bit rate put in known places; each is found there (to a frame or
two), reported with its reason and handled, and the clean stretches are kept."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anchorcast.errors import InputError
from anchorcast_plugins.engines.wav2lip.audio import melspectrogram
from anchorcast_plugins.engines.wav2lip.training import prepare_args, prepare_quality, prepare_speech
from anchorcast_plugins.engines.wav2lip.training.dataset import ORIGINAL_AUDIO_FILE, Dataset
from anchorcast_plugins.engines.wav2lip.training.prepare import Cleaning, prepare_dataset
from anchorcast_plugins.engines.wav2lip.training.prepare_people import FaceEmbedder, cluster_people
from anchorcast_plugins.engines.wav2lip.training.prepare_quality import QualityGate
from anchorcast_plugins.engines.wav2lip.training.prepare_report import Stretch, VideoReport
from anchorcast_plugins.engines.wav2lip.training.prepare_speech import frame_probabilities, silence_mask
from anchorcast_plugins.engines.wav2lip.training.synth import SENTENCES, SPEAKERS, SyntheticTalker
from tests.mp4 import write_video

BLUR, DARK, BRIGHT = (30, 50), (80, 100), (130, 150)
SPEECH_END, SPEECH_AGAIN = 50, 88  # speech.mp4: the first sentence is cut at 2 s, the second starts at 3.5 s
NO_FACE_SPAN = (120, 135)
SWITCH = 50  # people.mp4: the astronaut until here, then the face3d head
NOISE_SNR_DB = 10.0


def _snr(reference: np.ndarray, signal: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(reference**2) / np.sum((signal - reference) ** 2)))


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    import cv2

    root = tmp_path_factory.mktemp("cleaning")
    (root / "anna").mkdir()
    (root / "team").mkdir()
    talker = SyntheticTalker(SPEAKERS[0], size=320)
    read = talker.speak(list(SENTENCES[:3]), seconds=7.0)  # speech all along (0.2 s pauses)
    frames = [f.copy() for f in read.frames]
    for i in range(*BLUR):
        frames[i] = cv2.GaussianBlur(frames[i], (0, 0), 3)
    for i in range(*DARK):
        frames[i] = (frames[i] * 0.2).astype(np.uint8)
    for i in range(*BRIGHT):
        frames[i] = np.clip(frames[i].astype(np.float32) * 1.6, 0, 255).astype(np.uint8)
    write_video(root / "anna" / "quality.mp4", frames, 25, read.audio)

    first, pause, second = (talker.speak([SENTENCES[3]], 2.0), talker.speak([], 1.5),
                            talker.speak([SENTENCES[4]], 2.5))
    frames = [f.copy() for f in first.frames + pause.frames + second.frames]
    clean = np.concatenate([first.audio, pause.audio, second.audio])
    for f in frames[slice(*NO_FACE_SPAN)]:
        f[:] = 90
    level = np.sqrt(np.mean(clean[clean != 0] ** 2))
    noise = np.random.default_rng(0).normal(0, level / 10 ** (NOISE_SNR_DB / 20), len(clean))
    write_video(root / "anna" / "speech.mp4", frames, 25, (clean + noise).astype(np.float32))

    from anchorcast_plugins.engines.face3d.asset import SHIPPED_ASSET, FaceModel
    from anchorcast_plugins.engines.face3d.render import HeadRenderer

    renderer = HeadRenderer(FaceModel.load(SHIPPED_ASSET), 320, 320, samples=4, background=(60, 70, 80))
    head = np.ascontiguousarray(renderer.render()[..., :3])
    renderer.close()
    said = talker.speak([SENTENCES[5], SENTENCES[6]], 4.0)
    write_video(root / "team" / "people.mp4", said.frames[:SWITCH] + [head] * (100 - SWITCH), 25, said.audio)
    talker.close()
    return {"root": root, "clean_speech": clean, "astronaut": read.frames[0], "head": head}


@pytest.fixture(scope="module")
def cleaned(videos: dict[str, object], tmp_path_factory: pytest.TempPathFactory) -> tuple[object, Dataset]:
    root = videos["root"]
    assert isinstance(root, Path)
    report = prepare_dataset([root / "anna"], tmp_path_factory.mktemp("out") / "set", min_seconds=0.6,
                             max_seconds=4.0)
    return report, report.dataset


def _video(report: object, name: str) -> VideoReport:
    return next(v for v in report.videos if Path(v.source).name == name)  # type: ignore[attr-defined]


def _near(found: Stretch, start: int, end: int, slack: int = 2) -> bool:
    return abs(found.start - start) <= slack and abs(found.end - end) <= slack


@pytest.mark.slow
def test_blurred_dark_and_overexposed_frames_are_trimmed_where_they_are(cleaned: tuple[object, Dataset]) -> None:
    report, dataset = cleaned
    video = _video(report, "quality.mp4")
    assert video.frames == 175 and video.dropped is None
    by_reason = {s.reason: s for s in video.trimmed}
    assert _near(by_reason["blurred"], *BLUR), video.trimmed
    assert _near(by_reason["too dark"], *DARK), video.trimmed
    bright = [s for s in video.trimmed if BRIGHT[0] - 2 <= s.start and s.end <= BRIGHT[1] + 2]
    assert sum(s.end - s.start for s in bright if s.reason == "overexposed") >= 16, video.trimmed
    assert {s.reason for s in video.trimmed} <= {"blurred", "too dark", "overexposed", "no face"}
    # the clean stretches are kept as clips, and no clip holds a bad frame
    spans = [(c.start, c.end) for c in video.clips]
    assert len(spans) == 4 and all(abs(a - b) <= 2 for a, b in zip(
        [x for s in spans for x in s], [0, BLUR[0], BLUR[1], DARK[0], DARK[1], BRIGHT[0], BRIGHT[1], 175],
        strict=True)), spans
    for bad in (BLUR, DARK, BRIGHT):
        assert all(end <= bad[0] + 1 or start >= bad[1] - 1 for start, end in spans)
    assert sum(video.trimmed_frames().values()) + video.kept_frames == 175
    assert {c.id for c in dataset.clips} >= {c.id for c in video.clips}


@pytest.mark.slow
def test_noise_is_removed_and_long_silence_and_a_lost_face_are_trimmed(
        videos: dict[str, object], cleaned: tuple[object, Dataset]) -> None:
    report, dataset = cleaned
    video = _video(report, "speech.mp4")
    silence = [s for s in video.trimmed if s.reason == "silence"]
    pad = round(prepare_speech.DEFAULT_SILENCE_PAD * 25)
    # RNNoise's voice probability stays up about three frames (0.12 s) after speech stops
    assert len(silence) == 1 and SPEECH_END + pad <= silence[0].start <= SPEECH_END + pad + 4, silence
    assert SPEECH_AGAIN - pad - 2 <= silence[0].end <= SPEECH_AGAIN - pad, silence
    assert [(s.start, s.end) for s in video.trimmed if s.reason == "no face"] == [NO_FACE_SPAN]
    # the 0.2 s pauses between sentences elsewhere are kept: nothing else is trimmed
    assert len(video.trimmed) == 2
    assert video.snr_before is not None and abs(video.snr_before - NOISE_SNR_DB) < 3, video.snr_before
    assert video.snr_after is not None and video.snr_after > video.snr_before + 15

    clean = videos["clean_speech"]
    assert isinstance(clean, np.ndarray)
    gains = []
    for note in video.clips:
        clip = dataset.clip(note.id)
        original = np.load(clip.folder / ORIGINAL_AUDIO_FILE)
        assert clip.audio_original is not None and original.shape == clip.audio.shape
        assert not np.allclose(original, clip.audio)
        np.testing.assert_allclose(clip.mel, melspectrogram(np.asarray(clip.audio)), atol=1e-4)
        reference = clean[note.start * 640 : note.end * 640]
        # the stored original is the noisy track, the denoised one is nearer the clean speech
        assert abs(_snr(reference, original) - NOISE_SNR_DB) < 2.5
        gains.append(_snr(reference, np.asarray(clip.audio)) - _snr(reference, original))
    assert min(gains) > 2, gains  # measured 3.0-4.3 dB against the clean speech (waveform SNR)


@pytest.mark.slow
def test_without_denoise_and_trimming_the_sound_is_the_videos(videos: dict[str, object], tmp_path: Path) -> None:
    root = videos["root"]
    assert isinstance(root, Path)
    report = prepare_dataset([root / "anna" / "speech.mp4"], tmp_path / "set", min_seconds=0.6, max_seconds=6.0,
                             speaker="anna", cleaning=Cleaning(denoise=False, trim_silence=False))
    video = report.videos[0]
    assert [(s.start, s.end, s.reason) for s in video.trimmed] == [(*NO_FACE_SPAN, "no face")]
    assert video.snr_before is None and video.snr_after is None
    first = report.dataset.clips[0]
    assert first.audio_original is None and first.frames == NO_FACE_SPAN[0]  # the pause is kept
    clean = videos["clean_speech"]
    assert isinstance(clean, np.ndarray)
    assert abs(_snr(clean[: first.frames * 640], np.asarray(first.audio)) - NOISE_SNR_DB) < 2.5


@pytest.mark.slow
def test_two_people_in_one_folder_become_two_speakers(videos: dict[str, object], tmp_path: Path) -> None:
    root = videos["root"]
    assert isinstance(root, Path)
    report = prepare_dataset([root / "team"], tmp_path / "set", min_seconds=0.6, max_seconds=4.0)
    video = report.videos[0]
    assert SWITCH in video.cuts
    by_speaker = {c.speaker: c for c in video.clips}
    assert sorted(by_speaker) == ["team-1", "team-2"]
    assert (by_speaker["team-1"].start, by_speaker["team-1"].end) == (0, SWITCH)
    assert by_speaker["team-2"].start == SWITCH
    assert report.people_distance is not None and report.people_distance > 0.6
    dataset = Dataset.load(tmp_path / "set")
    assert dataset.speakers == ["team-1", "team-2"]
    assert all(c.id.startswith(c.speaker + "-") for c in dataset.clips)
    people = json.loads((tmp_path / "set" / "dataset.json").read_text())["people"]
    assert {name: len(p["clips"]) for name, p in people.items()} == {"team-1": 1, "team-2": 1}


@pytest.mark.slow
def test_the_mirrored_astronaut_is_one_person_for_dlib_and_the_head_another(videos: dict[str, object]) -> None:
    from anchorcast_plugins.engines.faces import FaceDetector

    detector, embedder = FaceDetector(), FaceEmbedder()
    mirrored = SyntheticTalker(SPEAKERS[1], size=320)
    pictures = {"astronaut": videos["astronaut"], "mirror": mirrored.speak([], 0.04).frames[0],
                "head": videos["head"]}
    mirrored.close()
    vectors = {}
    for name, picture in pictures.items():
        assert isinstance(picture, np.ndarray)
        face = detector.detect(picture)
        assert face is not None
        vectors[name] = embedder.embed(picture, face)
    assert np.linalg.norm(vectors["astronaut"] - vectors["mirror"]) < 0.4
    assert np.linalg.norm(vectors["astronaut"] - vectors["head"]) > 0.6


def test_a_low_bit_rate_video_is_dropped_whole(tmp_path: Path) -> None:
    import av

    talker = SyntheticTalker(SPEAKERS[0], size=320)
    clip = talker.speak([SENTENCES[7]], 1.2)
    talker.close()
    path = tmp_path / "anna" / "blocky.mp4"
    path.parent.mkdir()
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 320, 320, "yuv420p"
        stream.options = {"crf": "51", "preset": "ultrafast"}
        sound = container.add_stream("pcm_s16le", rate=16000, layout="mono")
        for image in clip.frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        frame = av.AudioFrame.from_ndarray((clip.audio * 32767).astype(np.int16)[None], format="s16",
                                           layout="mono")
        frame.sample_rate = 16000
        for packet in [*sound.encode(frame), *sound.encode()]:
            container.mux(packet)
    with pytest.raises(InputError, match=r"blocky.mp4: low bit rate: 0\.0\d+ bits per pixel per frame"):
        prepare_dataset([path], tmp_path / "set", min_seconds=0.6, speaker="anna")
    kept = prepare_dataset([path], tmp_path / "set", min_seconds=0.6, speaker="anna",
                           cleaning=Cleaning(quality=QualityGate(min_bits_per_pixel=0), trim_silence=False,
                                             denoise=False))
    assert kept.videos[0].bits_per_pixel is not None and kept.videos[0].bits_per_pixel < 0.02
    assert len(kept.dataset) == 1


@pytest.mark.parametrize(("kind", "snr_db", "used"), [("white", 0, True), ("pink", 10, True), ("babble", 5, False),
                                                    ("babble", 10, False)])
def test_denoising_that_lowers_the_speech_keeps_the_original(kind: str, snr_db: float, used: bool) -> None:
    """RNNoise keeps crowd voices as speech and lowers the presenter with them: that video keeps its sound."""
    from tests.noisy_speech import noisy_speech

    sample = noisy_speech(16000, snr_db, kind)
    track = prepare_speech.speech_track(sample.noisy, denoise=True, voice_activity=True)
    assert track.speech_change_db is not None
    assert track.denoised is used, (kind, snr_db, track.speech_change_db)
    if used:
        assert track.skipped is None and track.speech_change_db > -2.0
        assert sample.snr_db(track.audio) > sample.snr_db(sample.noisy) + 3
    else:
        assert track.speech_change_db < -prepare_speech.DEFAULT_MAX_SPEECH_LOSS_DB
        assert track.skipped is not None and "lowered the speech by" in track.skipped
        assert np.array_equal(track.audio, sample.noisy) and track.snr_after is None
    assert track.frame_speech is not None  # the voice activity is measured either way
    lenient = prepare_speech.speech_track(sample.noisy, denoise=True, voice_activity=True, max_speech_loss=40)
    assert lenient.denoised


def test_silence_mask_cuts_only_long_silences_with_padding() -> None:
    speech = np.ones(100, np.float32)
    speech[10:16] = 0.1  # 0.24 s: a pause between words, kept
    speech[40:70] = 0.2  # 1.2 s: cut, less 3 frames each side
    speech[90:] = 0.0  # 0.4 s at the end: under 0.5 s, kept
    cut = silence_mask(speech, 0.5, 0.5, 0.12)
    assert np.flatnonzero(cut).tolist() == list(range(43, 67))
    speech[:30] = 0.0  # a long silence at the start keeps no padding before it
    assert np.flatnonzero(silence_mask(speech, 0.5, 0.5, 0.12))[:3].tolist() == [0, 1, 2]
    assert not silence_mask(speech, 0.5, 2.0, 0.12)[:30].any()


def test_frame_probabilities_take_the_highest_10ms_value_of_each_frame() -> None:
    speech = np.zeros(20, np.float32)  # 0.2 s of 10 ms frames: five 40 ms video frames
    speech[5] = 0.9  # 50-60 ms: video frame 1
    speech[8] = 0.7  # 80-90 ms: video frame 2
    assert frame_probabilities(speech, 0.01, 5).tolist() == pytest.approx([0, 0.9, 0.7, 0, 0])


def test_clusters_are_named_after_folders_and_numbered_when_shared() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 128), rng.normal(0, 1, 128)
    a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)  # about 1.4 apart
    near = lambda v: v + rng.normal(0, 0.01, 128)  # noqa: E731
    clusters = cluster_people({"c1": near(a), "c2": near(b), "c3": near(a), "c4": near(b)},
                              {"c1": "news", "c2": "news", "c3": "news", "c4": "sport"})
    assert clusters.speakers == {"c1": "news-1", "c3": "news-1", "c2": "news-2", "c4": "news-2"}
    alone = cluster_people({"c1": near(a), "c2": near(b)}, {"c1": "news", "c2": "sport"})
    assert alone.speakers == {"c1": "news", "c2": "sport"}
    assert alone.nearest_other == pytest.approx(np.linalg.norm(a - b), abs=0.05)


def test_bad_threshold_values_are_input_errors() -> None:
    with pytest.raises(InputError, match="--min-sharpness must be 0 or more"):
        QualityGate(min_sharpness=-1)
    with pytest.raises(InputError, match="--max-clipped must be a fraction"):
        QualityGate(max_clipped=0)
    with pytest.raises(InputError, match="--min-brightness"):
        QualityGate(min_brightness=300)
    with pytest.raises(InputError, match="--speech-threshold"):
        prepare_dataset([Path("x.mp4")], "unused", cleaning=Cleaning(speech_threshold=1.5))
    with pytest.raises(InputError, match="--silence-pad"):
        prepare_dataset([Path("x.mp4")], "unused", cleaning=Cleaning(min_silence=0.2, silence_pad=0.2))


def test_the_flags_defaults_are_the_modules(tmp_path: Path) -> None:
    assert prepare_args.DEFAULT_MIN_SHARPNESS == prepare_quality.DEFAULT_MIN_SHARPNESS
    assert prepare_args.DEFAULT_MIN_BRIGHTNESS == prepare_quality.DEFAULT_MIN_BRIGHTNESS
    assert prepare_args.DEFAULT_MAX_CLIPPED == prepare_quality.DEFAULT_MAX_CLIPPED
    assert prepare_args.DEFAULT_MIN_BITS_PER_PIXEL == prepare_quality.DEFAULT_MIN_BITS_PER_PIXEL
    assert prepare_args.DEFAULT_SPEECH_THRESHOLD == prepare_speech.DEFAULT_SPEECH_THRESHOLD
    assert prepare_args.DEFAULT_MIN_SILENCE == prepare_speech.DEFAULT_MIN_SILENCE
    assert prepare_args.DEFAULT_SILENCE_PAD == prepare_speech.DEFAULT_SILENCE_PAD
    assert prepare_args.DEFAULT_MAX_SPEECH_LOSS_DB == prepare_speech.DEFAULT_MAX_SPEECH_LOSS_DB


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--min-sharpness", "-5", "--min-sharpness must be 0 or more"),
    ("--max-clipped", "2", "--max-clipped must be a fraction"),
    ("--min-silence", "0", "--min-silence must be more than 0 seconds"),
    ("--max-speech-loss", "-1", "--max-speech-loss must be 0 dB or more"),
])
def test_a_bad_flag_value_exits_with_a_clear_message(tmp_path: Path, flag: str, value: str, message: str) -> None:
    result = subprocess.run([sys.executable, "-m", "anchorcast", "train", "prepare", "v.mp4", "--out",
                             str(tmp_path / "set"), flag, value], capture_output=True, text=True, timeout=120,
                            cwd=tmp_path)
    assert result.returncode != 0
    assert message in " ".join(result.stderr.split()), result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "set").exists()
