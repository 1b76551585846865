"""The face3d renderer: the shipped head drawn by OpenGL (headless EGL, Mesa's llvmpipe) from expression
weights."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from anchorcast_plugins.engines.face3d.asset import SHIPPED_ASSET, FaceModel
from anchorcast_plugins.engines.face3d.materials import triangle_surfaces
from anchorcast_plugins.engines.face3d.render import HeadRenderer, Pose

SIZE = 512
TEETH = (0, 255, 0)  # the teeth drawn pure green in the tests that count them: no other surface is green


@pytest.fixture(scope="module")
def face() -> FaceModel:
    return FaceModel.load(SHIPPED_ASSET)


@pytest.fixture(scope="module")
def renderer(face: FaceModel) -> Iterator[HeadRenderer]:
    renderer = HeadRenderer(face, SIZE, SIZE, colours={"teeth": TEETH})
    yield renderer
    renderer.close()


def weights(face: FaceModel, **named: float) -> np.ndarray:
    out = np.zeros(len(face.expression_names), np.float32)
    for name, value in named.items():
        out[face.expression_index(name)] = value
    return out


def region(renderer: HeadRenderer, face: FaceModel, expression: np.ndarray, first: int, stop: int,
           pad: int = 2) -> tuple[slice, slice]:
    """The pixel box of landmarks ``first..stop-1`` of the head with ``expression`` (projected), padded."""
    points = renderer.project(renderer.vertices(expression)[face.landmarks[first:stop]])
    x0, y0 = np.floor(points.min(axis=0)).astype(int) - pad
    x1, y1 = np.ceil(points.max(axis=0)).astype(int) + pad
    return slice(max(y0, 0), y1), slice(max(x0, 0), x1)


def mouth_pixels(image: np.ndarray) -> dict[str, int]:
    """Counts in an RGBA crop: ``interior`` (dark, covered by the head: the mouth socket and the back of the
    tongue in shadow), ``teeth`` (the test's green)."""
    rgb = image[..., :3].astype(np.int16)
    covered = image[..., 3] == 255
    dark = covered & (rgb.max(axis=-1) < 70)
    green = covered & (rgb[..., 1] > rgb[..., 0] + 60) & (rgb[..., 1] > rgb[..., 2] + 60)
    return {"interior": int(dark.sum()), "teeth": int(green.sum())}


def test_open_jaw_shows_the_mouth_interior(renderer: HeadRenderer, face: FaceModel) -> None:
    """jawOpen = 1 opens a dark mouth between the lips; the neutral's lips are closed over it. The region is
    the open mouth's lip landmarks (48-67) projected, so both are counted over the same pixels."""
    neutral, open_jaw = weights(face), weights(face, jawOpen=1.0)
    box = region(renderer, face, open_jaw, 48, 68)
    closed = mouth_pixels(renderer.render(neutral)[box])
    opened = mouth_pixels(renderer.render(open_jaw)[box])
    print(f"mouth interior pixels: neutral {closed['interior']}, jawOpen {opened['interior']}")
    assert closed["interior"] < 20
    assert opened["interior"] > 1000
    # the opening is inside the lips: its dark pixels lie between the inner lip landmarks (60-67)
    inner = region(renderer, face, open_jaw, 60, 68, pad=0)
    assert mouth_pixels(renderer.render(open_jaw)[inner])["interior"] > 0.8 * opened["interior"]


def test_teeth_show_when_the_lips_part(renderer: HeadRenderer, face: FaceModel) -> None:
    """Teeth are drawn and seen between parted lips. ICT-FaceKit's upper lip covers the upper teeth at rest and
    at full jawOpen alone (the lower incisors drop behind the lower lip), so the shapes that part the lips from
    the teeth show them: the upper lip raised on an open jaw, and the funnel."""
    neutral = weights(face)
    speaking = weights(face, jawOpen=0.5, mouthUpperUp_L=0.7, mouthUpperUp_R=0.7)
    funnel = weights(face, mouthFunnel=1.0)
    box = region(renderer, face, speaking, 48, 68, pad=4)
    counts = {name: mouth_pixels(renderer.render(expression)[box])["teeth"]
              for name, expression in (("neutral", neutral), ("speaking", speaking), ("funnel", funnel))}
    print(f"teeth pixels: {counts}")
    assert counts["speaking"] > 200 and counts["funnel"] > 200
    assert counts["speaking"] > 4 * counts["neutral"] and counts["funnel"] > 4 * counts["neutral"]


def test_background_is_transparent_and_the_face_opaque(face: FaceModel, renderer: HeadRenderer) -> None:
    image = renderer.render(weights(face))
    assert image.shape == (SIZE, SIZE, 4) and image.dtype == np.uint8
    corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
    assert (corners[:, 3] == 0).all() and (corners[:, :3] == 0).all()  # black background: premultiplied
    nose = renderer.project(face.neutral[face.landmarks[[30]]])[0]
    cheeks = renderer.project(face.neutral[face.landmarks[[2, 14]]])
    for x, y in (nose, *cheeks):
        assert image[int(y), int(x), 3] == 255
    covered = (image[..., 3] > 0).mean()
    assert 0.2 < covered < 0.7, covered  # the head, not the whole frame nor a speck


def test_background_colour_fills_the_rest_and_alpha_stays_the_matte(face: FaceModel) -> None:
    renderer = HeadRenderer(face, 256, 192, background=(16, 24, 32), cull_hidden=False)
    try:
        image = renderer.render(weights(face))
    finally:
        renderer.close()
    assert tuple(image[0, 0]) == (16, 24, 32, 0)
    assert image[96, 128, 3] == 255 and tuple(image[96, 128, :3]) != (16, 24, 32)


def test_blink_closes_the_eyes(renderer: HeadRenderer, face: FaceModel) -> None:
    """eyeBlink_L/R = 1 covers the eyeballs with the lids: the eye regions lose their white (sclera) pixels
    but for a seam between the lids (about 10 %: the asset leaves out the eyelashes that would hide it)."""
    open_eyes, blink = weights(face), weights(face, eyeBlink_L=1.0, eyeBlink_R=1.0)

    def white(image: np.ndarray) -> int:
        total = 0
        for first, stop in ((36, 42), (42, 48)):
            crop = image[region(renderer, face, open_eyes, first, stop, pad=3)].astype(np.int16)
            rgb = crop[..., :3]
            total += int(((rgb.min(axis=-1) > 170) & (rgb.max(axis=-1) - rgb.min(axis=-1) < 30)).sum())
        return total

    seen, closed = white(renderer.render(open_eyes)), white(renderer.render(blink))
    print(f"sclera pixels: open {seen}, blink {closed}")
    assert seen > 60 and closed < seen / 5


def test_gaze_turns_the_eyeballs(renderer: HeadRenderer, face: FaceModel) -> None:
    """eyeLook* turn the eyeballs (the shapes themselves move only the lids): the pupils move sideways."""
    def pupil_x(image: np.ndarray) -> float:
        box = region(renderer, face, weights(face), 42, 48, pad=2)
        crop = image[box][..., :3].astype(np.int16)
        dark = np.argwhere(crop.max(axis=-1) < 40)
        return float(dark[:, 1].mean())

    ahead = pupil_x(renderer.render(weights(face)))
    aside = pupil_x(renderer.render(weights(face, eyeLookOut_L=1.0, eyeLookIn_R=1.0)))
    assert abs(aside - ahead) > 2


def test_pose_moves_the_head_and_projection_follows(renderer: HeadRenderer, face: FaceModel) -> None:
    nose = face.neutral[face.landmarks[[30]]]
    turned = Pose(yaw=0.2, shift=(10.0, 0.0))
    a, b = renderer.project(nose)[0], renderer.project(nose, turned)[0]
    assert b[0] - a[0] > 10 + 5  # the nose tip swings toward +x with a positive yaw, plus the shift
    image = renderer.render(weights(face), turned)
    assert image[int(b[1]), int(b[0]), 3] == 255


def test_hidden_triangles_are_left_out_without_holes(face: FaceModel, renderer: HeadRenderer) -> None:
    """The culled head draws far fewer triangles and, over the poses and shapes a frame shows, the same
    picture as the full head (within a few edge pixels)."""
    full = HeadRenderer(face, SIZE, SIZE, colours={"teeth": TEETH}, cull_hidden=False)
    try:
        drawn = int((triangle_surfaces(face) >= 0).sum())
        assert len(renderer.triangles) < 0.7 * drawn
        for expression, pose in ((weights(face), Pose()), (weights(face, jawOpen=0.7, mouthSmile_L=0.5), Pose()),
                                 (weights(face, mouthFunnel=0.6, eyeBlink_L=1.0), Pose(yaw=0.05, pitch=-0.03))):
            a, b = renderer.render(expression, pose), full.render(expression, pose)
            differ = (np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1) > 8).sum()
            assert differ < 30, differ
    finally:
        full.close()


def test_identity_changes_the_head(face: FaceModel, renderer: HeadRenderer) -> None:
    other = HeadRenderer(face, SIZE, SIZE, colours={"teeth": TEETH}, identity=[2.0, -2.0, 1.5], cull_hidden=False)
    try:
        a, b = renderer.render(weights(face)), other.render(weights(face))
    finally:
        other.close()
    assert (a[..., 3] != b[..., 3]).sum() > 500


def test_back_faces_left_out_change_nothing(face: FaceModel, renderer: HeadRenderer) -> None:
    """Skin, teeth and eyes are closed surfaces seen from outside: not drawing their back faces gives the same
    picture (their winding is consistent), for less rasterising."""
    both = HeadRenderer(face, SIZE, SIZE, colours={"teeth": TEETH}, cull_back_faces=False)
    try:
        for expression in (weights(face), weights(face, jawOpen=0.8, mouthFunnel=0.3)):
            a, b = renderer.render(expression), both.render(expression)
            assert (np.abs(a.astype(np.int16) - b.astype(np.int16)).max(axis=-1) > 8).sum() < 10
    finally:
        both.close()


def test_a_skin_texture_replaces_the_colour(face: FaceModel) -> None:
    """A texture laid out on the model's UVs colours the skin (here half blue, half yellow across u)."""
    texture = np.zeros((64, 64, 3), np.uint8)
    texture[:, :32] = (40, 60, 220)
    texture[:, 32:] = (230, 210, 40)
    renderer = HeadRenderer(face, 256, 256, texture=texture, cull_hidden=False)
    try:
        image = renderer.render(weights(face))[..., :3].astype(np.int16)
    finally:
        renderer.close()
    covered = image.sum(axis=-1) > 0
    blue = covered & (image[..., 2] > image[..., 0] + 60)
    yellow = covered & (image[..., 0] > image[..., 2] + 60) & (image[..., 1] > image[..., 2] + 60)
    assert blue.sum() > 500 and yellow.sum() > 500, (blue.sum(), yellow.sum())
