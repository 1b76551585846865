"""Where the overlay's alpha comes from (a portrait's alpha channel, a matte file beside it, a sprite set's
outlines, a key colour) and how it is packed beside the colour for VP8."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import pytest

from anchorcast.errors import InputError
from anchorcast.media import StreamFormat
from anchorcast_plugins.engines.viseme.engine import bundled_avatar, create_engine
from anchorcast_plugins.engines.viseme.portrait import load_matte
from anchorcast_plugins.outputs.webrtc.encoding import Layout, key_alpha

FMT = StreamFormat(320, 180, Fraction(25), 16000)


def portrait_with_alpha(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """The bundled portrait as an RGBA PNG whose alpha is a disc around the face."""
    rgb = cv2.imread(str(bundled_avatar()))
    alpha = np.zeros(rgb.shape[:2], np.uint8)
    cv2.circle(alpha, (230, 200), 180, 255, -1)
    path = tmp_path / "disc.png"
    cv2.imwrite(str(path), np.dstack([rgb, alpha]))
    return path, alpha


def test_a_portraits_alpha_channel_becomes_the_engines_matte_fitted_into_the_frame(tmp_path: Path) -> None:
    path, alpha = portrait_with_alpha(tmp_path)
    assert np.array_equal(load_matte(path), alpha)
    engine = create_engine({"avatar": path})
    engine.open(FMT)
    matte = engine.matte
    assert matte is not None and matte.shape == (180, 320)
    # The 512x512 portrait is fitted into 180x180 at x = 70: the disc's centre lands at (70 + 230*180/512, ...).
    centre = (round(70 + 230 * 180 / 512), round(200 * 180 / 512))
    assert matte[centre[1], centre[0]] == 255
    assert matte[:, :70].max() == 0 and matte[:, 251:].max() == 0  # the pillarbox
    assert matte[175, 75] == 0  # a corner of the portrait outside the disc


def test_a_matte_file_beside_the_portrait_is_used_and_a_wrong_sized_one_is_named(tmp_path: Path) -> None:
    portrait = tmp_path / "anna.jpg"
    cv2.imwrite(str(portrait), cv2.imread(str(bundled_avatar())))
    assert load_matte(portrait) is None  # neither alpha nor a matte: the whole portrait is the anchor
    engine = create_engine({"avatar": portrait})
    engine.open(FMT)
    assert engine.matte[:, 75:245].min() == 255 and engine.matte[:, :70].max() == 0

    cv2.imwrite(str(tmp_path / "anna-matte.png"), np.full((512, 512), 200, np.uint8))
    assert load_matte(portrait).min() == 200
    cv2.imwrite(str(tmp_path / "anna-matte.png"), np.zeros((100, 80), np.uint8))
    with pytest.raises(InputError) as caught:
        load_matte(portrait)
    assert "anna-matte.png" in str(caught.value) and "80x100" in str(caught.value)


def test_the_bundled_portrait_ships_a_cut_out() -> None:
    matte = load_matte(bundled_avatar())
    assert matte is not None and matte.shape == (512, 512)
    assert matte[130, 225] == 255 and matte[300, 200] == 255  # the face, the suit
    assert matte[40, 40] == 0 and matte[150, 420] == 0  # the flag, the shuttle


def test_a_sprite_sets_matte_is_where_any_sprite_is_opaque(tmp_path: Path) -> None:
    folder = tmp_path / "sprites"
    folder.mkdir()
    for name, chin in (("closed", 60), ("open", 70)):
        sprite = np.zeros((100, 100, 4), np.uint8)
        cv2.circle(sprite, (50, 40), 30, (200, 150, 120, 255), -1)
        cv2.rectangle(sprite, (45, 40), (55, chin), (200, 150, 120, 255), -1)
        cv2.imwrite(str(folder / f"{name}.png"), sprite)
    engine = create_engine({"sprites": folder})
    engine.open(StreamFormat(200, 100, Fraction(25), 16000))
    matte = engine.matte
    assert matte[40, 100] == 255 and matte[5, 5] == 0 and matte[40, 160] == 0
    assert matte[66, 100] == 255  # only the open sprite reaches this far down


def test_packed_alpha_puts_the_alpha_beside_the_colour_and_a_key_colour_cuts_out() -> None:
    image = np.zeros((4, 6, 3), np.uint8)
    image[:] = (0, 255, 0)
    image[1:3, 2:4] = (200, 50, 50)
    assert Layout().picture(image, None) is image
    packed = Layout(alpha=True).picture(image, None)
    assert packed.shape == (4, 12, 3) and np.array_equal(packed[:, :6], image) and packed[:, 6:].min() == 255
    matte = np.zeros((4, 6), np.uint8)
    matte[:, :3] = 255
    packed = Layout(alpha=True).picture(image, matte)
    assert np.array_equal(packed[:, 6:, 1], matte)
    keyed = Layout(alpha=True, key=(0, 255, 0)).picture(image, None)
    assert np.array_equal(keyed[:, 6:, 0], np.where((image == (200, 50, 50)).all(axis=2), 255, 0))
    both = Layout(alpha=True, key=(0, 255, 0)).picture(image, matte)
    assert both[1, 8, 0] == 255 and both[1, 9, 0] == 0  # keyed in, and the matte cuts the rest
    assert Layout(alpha=True, key=(0, 255, 0)).name == "packed-alpha-key-00ff00"
    near = np.array([[[20, 235, 20], [120, 160, 120]]], np.uint8)
    assert key_alpha(near, (0, 255, 0)).tolist() == [[0, 255]]
