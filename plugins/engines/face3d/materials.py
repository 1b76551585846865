"""What the head's surfaces look like: which triangles are skin, mouth, teeth or eye; their colours; the lips.

The face model has no texture the engine can use by default, so each surface has one colour
(:data:`DEFAULT_COLOURS`) and how much light reaches it; the lips are tinted inside their landmark contour, the
eyes' iris and pupil are drawn by the distance from the eye's axis (:mod:`.render`'s fragment shader).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from anchorcast.errors import InputError

from .asset import FaceModel

Float32Array = npt.NDArray[np.float32]

SURFACES = ("skin", "eye_socket", "mouth_socket", "gums_tongue", "teeth", "eye")
"""The groups the triangles are drawn in, each with one colour (:data:`DEFAULT_COLOURS`; the eye: sclera, iris
and pupil by the distance from its axis)."""
DEFAULT_SKIN = (224, 172, 140)
DEFAULT_COLOURS: dict[str, tuple[int, int, int]] = {
    "eye_socket": (196, 120, 110),
    "mouth_socket": (70, 18, 22),
    "gums_tongue": (196, 84, 92),
    "teeth": (240, 234, 218),
    "eye": (236, 234, 228),
    "iris": (84, 60, 40),
    "pupil": (12, 10, 10),
    "lips": (190, 118, 110),
}
IRIS_RADIUS = 0.56
PUPIL_RADIUS = 0.24
"""Centimetres from the eye's axis (the eyeball's radius is about 1.2)."""
# How much light reaches each surface (inside the mouth is shadowed by the lips and cheeks).
OCCLUSION = {"skin": 1.0, "eye_socket": 0.8, "mouth_socket": 0.35, "gums_tongue": 0.6, "teeth": 0.85, "eye": 0.9}
SPECULAR = {"skin": 0.12, "eye_socket": 0.05, "mouth_socket": 0.0, "gums_tongue": 0.15, "teeth": 0.25, "eye": 0.5}
INSIDE = ("mouth_socket", "gums_tongue", "teeth")
"""The surfaces inside the mouth: light fades with their depth behind the front teeth."""


def parse_colour(value: str, key: str = "colour") -> tuple[int, int, int]:
    """``"#RRGGBB"`` as an (r, g, b) tuple; an InputError naming ``key`` otherwise."""
    text = value.strip()
    if len(text) == 7 and text.startswith("#"):
        try:
            return int(text[1:3], 16), int(text[3:5], 16), int(text[5:7], 16)
        except ValueError:
            pass
    raise InputError(f"face3d: {key} = {value!r} is not a colour \"#RRGGBB\"",
                     hint=f'for example {key} = "#e0ac8c"')


def triangle_surfaces(model: FaceModel) -> npt.NDArray[np.int64]:
    """Each triangle's surface (an index into :data:`SURFACES`) by its first corner's part; -1 for the eyes'
    inner spheres (ICT-FaceKit's iris material, a textured ball inside the clear outer one), never drawn: the
    outer ball is coloured by the distance from the eye's axis instead."""
    part_of = {"face": "skin", "head_neck": "skin", "eye_socket_left": "eye_socket",
               "eye_socket_right": "eye_socket", "mouth_socket": "mouth_socket", "gums_tongue": "gums_tongue",
               "teeth_upper": "teeth", "teeth_lower": "teeth", "eyeball_left": "eye", "eyeball_right": "eye"}
    by_part = np.array([SURFACES.index(part_of.get(name, "skin")) for name in model.part_names])
    surfaces = by_part[model.vertex_parts[model.render_sources[model.triangles[:, 0]]]]
    for code, material in enumerate(model.material_names):
        if "iris" in material.lower():
            surfaces[model.triangle_materials == code] = -1
    return surfaces


def lip_weights(model: FaceModel, positions: Float32Array, soft: float = 0.25) -> Float32Array:
    """(V,) float32 in [0, 1]: how much of the lip colour each vertex takes: 1 inside the outer lip contour
    (landmarks 48-59, seen from the front), fading to 0 within ``soft`` centimetres outside it; face only."""
    weights = np.zeros(model.vertex_count, np.float32)
    if len(model.landmarks) < 60 or "face" not in model.part_names:
        return weights
    contour = positions[model.landmarks[48:60], :2].astype(np.float64)
    front = positions[model.landmarks[48:60], 2].min() - 1.5
    candidates = np.flatnonzero(model.part_mask("face") & (positions[:, 2] > front))
    points = positions[candidates, :2].astype(np.float64)
    a, b = contour, np.roll(contour, -1, axis=0)
    # inside: an even-odd ray cast to the right; distance: to the nearest contour segment
    crosses = ((a[:, 1] > points[:, None, 1]) != (b[:, 1] > points[:, None, 1])) & (
        points[:, None, 0] < a[:, 0] + (points[:, None, 1] - a[:, 1]) * (b[:, 0] - a[:, 0])
        / np.where(b[:, 1] == a[:, 1], 1e-12, b[:, 1] - a[:, 1]))
    inside = crosses.sum(axis=1) % 2 == 1
    edge = b - a
    t = np.clip(((points[:, None] - a) * edge).sum(-1) / np.maximum((edge * edge).sum(-1), 1e-12), 0, 1)
    distance = np.linalg.norm(points[:, None] - (a + t[..., None] * edge), axis=-1).min(axis=1)
    weights[candidates] = np.where(inside, 1.0, np.clip(1 - distance / soft, 0, 1))
    return weights
