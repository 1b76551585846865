"""The ``viseme`` lip engine on the bundled portrait, on images without a face, and with sprite sets."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from anchorcast.components import FrameJob, LipEngine
from anchorcast.errors import InputError
from anchorcast.media import StreamFormat, Timing
from anchorcast_plugins.engines import viseme as viseme_plugin
from anchorcast_plugins.engines.viseme.engine import VisemeEngine, bundled_avatar, create_engine
from anchorcast_plugins.engines.viseme.portrait import MouthGeometry, detect_face, load_image
from anchorcast_plugins.engines.viseme.shapes import Viseme, phoneme_viseme, shape_from_audio

FMT = StreamFormat(1280, 720, Fraction(25), 16000)
RATE = FMT.sample_rate
FRAME = RATE // 25  # samples per frame
PAD = int(VisemeEngine.lookbehind * RATE)


def voiced(amplitude: float, seconds: float = 0.2, harmonics: tuple[tuple[float, float], ...] = (
        (150.0, 1.0), (750.0, 1.0), (1200.0, 0.6))) -> np.ndarray:
    """A steady vowel-like sound: a few harmonics at ``amplitude``."""
    t = np.arange(int(seconds * RATE)) / RATE
    wave = sum(weight * np.sin(2 * np.pi * freq * t) for freq, weight in harmonics)
    return (amplitude * wave / max(w for _, w in harmonics)).astype(np.float32)


def job(index: int = 10, *, audio: np.ndarray | None = None, speech: float = 1.0,
        phonemes: tuple[Timing, ...] = ()) -> FrameJob:
    """Frame ``index`` with its context (lookbehind + frame + lookahead) taken from ``audio`` (or silence)."""
    context = np.zeros(PAD + FRAME + PAD, np.float32) if audio is None else audio[: PAD + FRAME + PAD]
    return FrameJob(index, index / 25, context, PAD, FRAME, speech, phonemes)


def phoneme_job(label: str, index: int = 10) -> FrameJob:
    """A frame in the middle of a long phoneme ``label``."""
    centre = index / 25 + 0.02
    return job(index, audio=voiced(0.1), phonemes=(Timing(label, centre - 0.3, centre + 0.3),))


def darkening(frame: np.ndarray, idle: np.ndarray) -> float:
    """How much darker than the idle frame the image got (the mouth cavity), summed over all pixels."""
    grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.int32)
    grey_idle = cv2.cvtColor(np.ascontiguousarray(idle), cv2.COLOR_RGB2GRAY).astype(np.int32)
    return float(np.clip(grey_idle - grey, 0, None).sum())


def outside(frame: np.ndarray, region: tuple[int, int, int, int]) -> np.ndarray:
    """``frame`` with the region blanked, to compare everything else."""
    x0, y0, x1, y1 = region
    copy = np.array(frame)
    copy[y0:y1, x0:x1] = 0
    return copy


@pytest.fixture(scope="module")
def engine() -> VisemeEngine:
    created = create_engine({})
    created.open(FMT)
    return created


# --- the portrait and its face ---------------------------------------------------------------------------------


def test_haar_cascade_finds_the_astronauts_face_and_mouth() -> None:
    image = load_image(bundled_avatar())
    face = detect_face(image)
    assert face is not None
    assert 60 <= face.w <= 160 and face.y + face.h < image.shape[0] / 2

    mouth = MouthGeometry.from_face(face)
    assert face.y + 0.6 * face.h < mouth.lip_y < face.bottom + 0.1 * face.h
    assert face.x + 0.4 * face.w < mouth.centre_x < face.x + 0.6 * face.w
    x0, y0, x1, _ = mouth.region()
    assert face.x - 0.1 * face.w <= x0 < x1 <= face.right + 0.1 * face.w
    assert y0 > face.y + face.h / 2  # the region starts in the lower part of the face

    # OpenCV's smile cascade, run on the lower face, agrees where the mouth is.
    grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    top = face.y + face.h // 2
    smile = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_smile.xml")
    found = smile.detectMultiScale(grey[top : face.y + int(1.3 * face.h), face.x : face.right], 1.1, 10)
    assert len(found) >= 1
    sx, sy, sw, sh = max(found, key=lambda f: int(f[2]) * int(f[3]))
    assert top + sy <= mouth.lip_y <= top + sy + sh
    assert face.x + sx <= mouth.centre_x <= face.x + sx + sw


def test_mouth_region_in_output_lies_on_the_fitted_face(engine: VisemeEngine) -> None:
    region = engine.mouth_region
    assert region is not None
    x0, y0, x1, y1 = region
    scale = FMT.height / 512  # the square portrait is fitted to the frame height, centred
    face = engine.renderer.face  # type: ignore[attr-defined]
    left = (FMT.width - 512 * scale) / 2
    assert left + face.x * scale - 10 <= x0 < x1 <= left + face.right * scale + 10
    assert face.y * scale + face.h * scale / 2 <= y0 < y1 <= FMT.height


def test_an_image_without_a_face_names_the_file_and_the_ways_out(tmp_path: Path) -> None:
    gradient = np.tile(np.linspace(0, 255, 400, dtype=np.uint8), (300, 1))
    path = tmp_path / "sunset-gradient.png"
    cv2.imwrite(str(path), cv2.merge([gradient, gradient // 2, 255 - gradient]))
    with pytest.raises(InputError) as caught:
        create_engine({"avatar": path})
    assert "sunset-gradient.png" in str(caught.value)
    assert "sprites" in caught.value.hint and "face_box" in caught.value.hint


def test_a_face_box_replaces_detection(tmp_path: Path) -> None:
    gradient = np.tile(np.linspace(0, 255, 400, dtype=np.uint8), (300, 1))
    path = tmp_path / "plain.png"
    cv2.imwrite(str(path), cv2.merge([gradient] * 3))
    engine = create_engine({"avatar": path, "face_box": [150, 60, 100, 100]})
    engine.open(FMT)
    assert engine.renderer.face.x == 150  # type: ignore[attr-defined]
    frame = engine.render([phoneme_job("a")])[0]
    assert not np.array_equal(frame, engine.idle(0))

    with pytest.raises(InputError, match="face_box"):
        create_engine({"avatar": path, "face_box": [150, 60, 100]})
    with pytest.raises(InputError, match="outside"):
        create_engine({"avatar": path, "face_box": [350, 60, 100, 100]})


def test_an_unreadable_image_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken-portrait.png"
    path.write_bytes(b"this is not a PNG at all")
    with pytest.raises(InputError, match="broken-portrait.png"):
        create_engine({"avatar": path})


def test_a_bad_background_is_a_clear_error() -> None:
    with pytest.raises(InputError, match="background"):
        create_engine({"background": "purple"})


# --- frames ----------------------------------------------------------------------------------------------------


def test_frames_have_the_output_size_and_are_the_callers_own(engine: VisemeEngine) -> None:
    assert isinstance(engine, LipEngine)
    jobs = [job(i, audio=voiced(0.2)) for i in range(3)] + [job(3, speech=0.0)]
    frames = engine.render(jobs)
    assert len(frames) == 4
    for frame in frames:
        assert frame.shape == (FMT.height, FMT.width, 3) and frame.dtype == np.uint8
        assert frame.flags.writeable
    idle = engine.idle(0)
    assert idle.shape == (FMT.height, FMT.width, 3) and idle.dtype == np.uint8
    assert not idle.flags.writeable  # the cached idle frame is shared: callers must copy it to draw on it
    assert frames[3] is not idle and not np.shares_memory(frames[3], idle)
    frames[3][:] = 0
    assert idle.any() and np.array_equal(engine.render([job(4, speech=0.0)])[0], idle)


def test_silence_shows_the_idle_frame_exactly(engine: VisemeEngine) -> None:
    loud = voiced(0.3)
    idle = engine.idle(7)
    assert np.array_equal(engine.render([job(audio=loud, speech=0.0)])[0], idle)
    assert np.array_equal(engine.render([job(audio=np.zeros(2000, np.float32))])[0], idle)
    silent_a = FrameJob(10, 0.4, loud[: 3 * FRAME], PAD, FRAME, 0.0, (Timing("a", 0.0, 1.0),))
    assert np.array_equal(engine.render([silent_a])[0], idle)


@pytest.mark.parametrize("make_job", [lambda: job(audio=voiced(0.3)), lambda: phoneme_job("a")],
                         ids=["loud-audio", "open-phoneme"])
def test_speech_moves_the_mouth_and_nothing_else(engine: VisemeEngine, make_job: Any) -> None:
    idle = engine.idle(0)
    frame = engine.render([make_job()])[0]
    region = engine.mouth_region
    assert region is not None
    x0, y0, x1, y1 = region
    inside = np.abs(frame[y0:y1, x0:x1].astype(np.int16) - idle[y0:y1, x0:x1])
    assert inside.max() > 60 and (inside.sum(axis=2) > 30).sum() > 200
    assert np.array_equal(outside(frame, region), outside(idle, region))
    # Feathered: the region's border rows and columns are still the idle frame's.
    for edge in (inside[0], inside[-1], inside[:, 0], inside[:, -1]):
        assert edge.max() <= 1


def test_openness_grows_with_audio_energy(engine: VisemeEngine) -> None:
    levels = (0.003, 0.01, 0.03, 0.1, 0.3)
    jobs = [job(audio=voiced(level)) for level in levels]
    openness = [engine.shape(j).openness for j in jobs]
    assert openness[0] < 0.05 and openness[-1] > 0.6
    assert (np.diff(openness) > 0).all()
    idle = engine.idle(0)
    dark = [darkening(frame, idle) for frame in engine.render(jobs)]
    assert (np.diff(dark) >= 0).all() and dark[-1] > 3 * dark[1] + 1000


def test_speech_presence_scales_the_mouth(engine: VisemeEngine) -> None:
    idle = engine.idle(0)
    dark = [darkening(engine.render([job(audio=voiced(0.3), speech=s)])[0], idle) for s in (0.0, 0.3, 0.6, 1.0)]
    assert dark[0] == 0 and dark[0] < dark[1] < dark[2] < dark[3]


def test_an_onset_opens_the_mouth_over_several_frames(engine: VisemeEngine) -> None:
    onset_frame = 20
    audio = np.concatenate([np.zeros(onset_frame * FRAME, np.float32), voiced(0.3, seconds=1.0)])
    audio = np.concatenate([np.zeros(PAD, np.float32), audio, np.zeros(PAD, np.float32)])
    openness = [engine.shape(job(i, audio=audio[i * FRAME:])).openness for i in range(onset_frame - 3,
                                                                                        onset_frame + 4)]
    assert openness[0] == 0 and openness[-1] > 0.6
    steps = np.diff(openness)
    assert (steps >= -1e-9).all() and steps.max() < 0.8 * openness[-1]


def test_spectrum_spreads_or_rounds_the_lips() -> None:
    ee = voiced(0.1, harmonics=((300.0, 1.0), (2300.0, 0.8), (3000.0, 0.5)))
    oo = voiced(0.1, harmonics=((150.0, 1.0), (300.0, 0.7), (450.0, 0.2)))
    assert shape_from_audio(ee[:1920], RATE).width > 0.3
    assert shape_from_audio(oo[:1920], RATE).width < -0.3


def test_phoneme_labels_map_to_visemes() -> None:
    assert phoneme_viseme("a") is Viseme.OPEN and phoneme_viseme("ˈɑː") is Viseme.OPEN
    assert phoneme_viseme("aɪ") is Viseme.OPEN
    assert phoneme_viseme("m") is Viseme.CLOSED and phoneme_viseme("b") is Viseme.CLOSED
    assert phoneme_viseme("iː") is Viseme.WIDE and phoneme_viseme("ɛ") is Viseme.WIDE
    assert phoneme_viseme("uː") is Viseme.ROUND and phoneme_viseme("w") is Viseme.ROUND
    assert phoneme_viseme("f") is Viseme.TEETH and phoneme_viseme("v") is Viseme.TEETH
    assert phoneme_viseme("t") is Viseme.MID and phoneme_viseme("tʃ") is Viseme.MID
    for ignored in ("ˈ", "ˌ", "ː", " ", ",", "?", "_"):
        assert phoneme_viseme(ignored) is None


def test_an_open_vowel_opens_the_mouth_more_than_m(engine: VisemeEngine) -> None:
    idle = engine.idle(0)
    shape_a, shape_m = engine.shape(phoneme_job("a")), engine.shape(phoneme_job("m"))
    assert shape_a.openness > shape_m.openness
    frame_a, frame_m = engine.render([phoneme_job("a"), phoneme_job("m")])
    assert darkening(frame_a, idle) > darkening(frame_m, idle) + 1000
    assert np.array_equal(frame_m, idle)  # lips together


def test_phonemes_blend_across_a_boundary(engine: VisemeEngine) -> None:
    # "m" then "a" at 0.5 s: the frame spanning the boundary is between the two.
    phonemes = (Timing("m", 0.2, 0.5), Timing("a", 0.5, 0.9))
    sound = voiced(0.1)[: 3 * FRAME]
    openness = [engine.shape(FrameJob(i, i / 25, sound, PAD, FRAME, 1.0, phonemes)).openness for i in (9, 12, 15)]
    assert openness[0] == 0 and 0 < openness[1] < openness[2]


def test_phoneme_lips_close_over_silence(engine: VisemeEngine) -> None:
    # a voice's last phoneme often runs into the silence that ends its sentence: no sound, no open vowel
    vowel = (Timing("a", 0.0, 2.0),)
    loud = engine.shape(job(10, audio=voiced(0.1), phonemes=vowel))
    quiet = engine.shape(job(10, audio=voiced(0.01), phonemes=vowel))
    silent = engine.shape(job(10, phonemes=vowel))
    assert loud.openness > quiet.openness > silent.openness == 0
    assert np.array_equal(engine.render([job(10, phonemes=vowel)])[0], engine.idle(10))


def test_mouth_scale_zero_keeps_the_mouth_still() -> None:
    still = create_engine({"mouth_scale": 0.0, "background": "#102030"})
    still.open(FMT)
    idle = still.idle(0)
    assert tuple(idle[0, 0]) == (0x10, 0x20, 0x30)
    assert np.array_equal(still.render([phoneme_job("a")])[0], idle)


# --- sprite sets -----------------------------------------------------------------------------------------------


def write_sprite(path: Path, mouth_height: int) -> np.ndarray:
    """A 360x360 RGBA sprite: a round face (opaque), a half-transparent halo, transparent corners."""
    sprite = np.zeros((360, 360, 4), np.uint8)
    cv2.circle(sprite, (180, 180), 170, (40, 160, 230, 128), -1)  # BGRA in the file
    cv2.circle(sprite, (180, 180), 150, (90, 190, 250, 255), -1)
    cv2.ellipse(sprite, (180, 250), (50, max(1, mouth_height)), 0, 0, 360, (30, 20, 60, 255), -1)
    cv2.imwrite(str(path), sprite)
    return cv2.cvtColor(sprite, cv2.COLOR_BGRA2RGBA)


@pytest.fixture
def sprite_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "my-sprites"
    folder.mkdir()
    write_sprite(folder / "closed.png", 2)
    write_sprite(folder / "open.png", 40)
    return folder


def expected_composite(sprite: np.ndarray, background: tuple[int, int, int]) -> np.ndarray:
    """The sprite, doubled to 720x720 (exact for these flat shapes away from edges), over the background."""
    big = cv2.resize(sprite, (720, 720), interpolation=cv2.INTER_NEAREST).astype(np.float64)
    frame = np.empty((720, 1280, 3), np.float64)
    frame[:] = background
    alpha = big[:, :, 3:] / 255
    frame[:, 280:1000] = frame[:, 280:1000] * (1 - alpha) + big[:, :, :3] * alpha
    return frame


def test_sprite_mode_shows_open_or_closed(sprite_folder: Path) -> None:
    engine = create_engine({"sprites": sprite_folder, "background": "#203040"})
    engine.open(FMT)
    idle = engine.idle(0)
    closed = cv2.cvtColor(cv2.imread(str(sprite_folder / "closed.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    expected = expected_composite(closed, (0x20, 0x30, 0x40))
    assert np.array_equal(idle[:, :280], expected[:, :280].astype(np.uint8))  # pillarbox: background only
    assert np.array_equal(idle[:, 1000:], expected[:, 1000:].astype(np.uint8))
    for y, x in ((40, 300), (360, 640), (40, 640)):  # transparent corner, face, half-transparent halo
        assert np.abs(idle[y, x].astype(float) - expected[y, x]).max() <= 1.0, (y, x)

    frames = engine.render([phoneme_job("a"), phoneme_job("m"), job(speech=0.0), job(audio=voiced(0.3))])
    mouth = (slice(480, 540), slice(600, 680))  # inside the open sprite's mouth, outside the closed one's
    open_colour = expected_composite(
        cv2.cvtColor(cv2.imread(str(sprite_folder / "open.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA),
        (0x20, 0x30, 0x40))[500, 640]
    assert np.abs(frames[0][500, 640] - open_colour).max() <= 1
    assert np.array_equal(frames[3], frames[0])
    assert not np.array_equal(frames[0][mouth], idle[mouth])
    assert np.array_equal(frames[1], idle) and np.array_equal(frames[2], idle)


def test_optional_viseme_sprites_are_used(sprite_folder: Path) -> None:
    wide = write_sprite(sprite_folder / "wide.png", 12)
    engine = create_engine({"sprites": sprite_folder})
    engine.open(FMT)
    frame_i, frame_u = engine.render([phoneme_job("i"), phoneme_job("u")])
    background = engine.renderer.background  # type: ignore[attr-defined]
    opened = cv2.cvtColor(cv2.imread(str(sprite_folder / "open.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGRA2RGBA)
    expected_wide, expected_open = expected_composite(wide, background), expected_composite(opened, background)
    below_wide_mouth = (545, 640)  # skin in wide.png, inside the mouth in open.png
    assert np.abs(expected_wide[below_wide_mouth] - expected_open[below_wide_mouth]).max() > 50
    assert np.abs(frame_i[below_wide_mouth] - expected_wide[below_wide_mouth]).max() <= 1
    # "u" has no round.png in this set: it falls back to open.png
    assert np.abs(frame_u[below_wide_mouth] - expected_open[below_wide_mouth]).max() <= 1


def test_a_sprite_set_without_open_png_names_folder_and_file(tmp_path: Path) -> None:
    folder = tmp_path / "half-done"
    folder.mkdir()
    write_sprite(folder / "closed.png", 2)
    with pytest.raises(InputError) as caught:
        create_engine({"sprites": folder})
    assert "half-done" in str(caught.value) and "open.png" in str(caught.value)


def test_sprites_and_avatar_together_are_refused(sprite_folder: Path) -> None:
    with pytest.raises(InputError, match="either"):
        create_engine({"sprites": sprite_folder, "avatar": bundled_avatar()})


# --- the plugin --------------------------------------------------------------------------------------------------


def test_the_plugin_registers_without_importing_opencv() -> None:
    code = ("import sys, anchorcast_plugins.engines.viseme as p; calls = []; "
            "p.anchorcast_register_engines(None, lambda name, factory, **kw: calls.append((name, kw))); "
            "assert calls[0][0] == 'viseme', calls; assert 'cv2' not in sys.modules, 'cv2 imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_factory_builds_the_default_engine() -> None:
    schema = viseme_plugin.SETTINGS
    defaults = {key: setting.default for key, setting in schema.items()}
    assert defaults == {"avatar": None, "sprites": None, "face_box": None, "background": "blur",
                        "mouth_scale": 1.0, "idle_motion": "auto"}
    engine = viseme_plugin.create(None, defaults)  # type: ignore[arg-type]
    engine.open(StreamFormat(640, 360, Fraction(30), 22050))
    frame = engine.render([FrameJob(0, 0.0, voiced(0.3)[:2200], 882, 735, 1.0)])[0]
    assert frame.shape == (360, 640, 3)
    engine.close()


def test_idle_motion_blinks_and_breathes_deterministically_and_only_when_asked() -> None:
    from anchorcast_plugins.engines.viseme.engine import create_engine

    fmt = StreamFormat(640, 360, Fraction(25), 16000)
    still = create_engine({"idle_motion": "auto"})  # auto outside a studio session: still
    still.open(fmt)
    assert still.motion is None and still.idle(0) is still.idle(100)
    alive = create_engine({"idle_motion": "on"})
    alive.open(fmt)
    assert alive.motion is not None
    closures = [alive.motion.closure(i) for i in range(25 * 30)]
    blinks = [i for i in range(1, len(closures)) if closures[i] > 0 and closures[i - 1] == 0]
    gaps = np.diff(blinks) / 25
    assert len(blinks) >= 5 and gaps.min() >= 1.0 and gaps.max() <= 12.0  # every few seconds, not a twitch
    closed = next(i for i, c in enumerate(closures) if c == 1.0)
    base = alive.renderer.idle_frame.astype(np.int16)
    x, y, w, h = alive.renderer.face_in_frame
    eye_band = (slice(int(y + 0.25 * h), int(y + 0.55 * h)), slice(int(x), int(x + w)))
    mouth_band = (slice(int(y + 0.7 * h), int(y + h)), slice(int(x), int(x + w)))
    at_rest = np.abs(alive.idle(0).astype(np.int16) - base)
    blink = np.abs(alive.idle(closed).astype(np.int16) - alive.idle(closed - 10).astype(np.int16))
    assert at_rest.max() == 0  # frame 0: eyes open, no breath yet
    assert blink[eye_band].mean() > 4 * max(1.0, blink[mouth_band].mean())  # the lids move, not the mouth
    assert np.array_equal(alive.idle(closed), alive.idle(closed))  # the same frame every time
    breath = np.abs(alive.idle(round(25 * 2.25)).astype(np.int16) - base)  # half a breath in, no blink
    assert 0 < breath.mean() < 6
