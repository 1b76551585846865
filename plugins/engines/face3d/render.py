"""Draws the morphable head with OpenGL (moderngl on a headless EGL context; Mesa's llvmpipe without a GPU).

One frame: the expression weights are blended onto the identity's head in numpy (only the weights that are not
about zero, float32 deltas, only the vertices drawn), the eyeballs turn with the ``eyeLook*`` weights (the face
model's gaze shapes move the lids only), smooth normals are recomputed from the blended mesh, and the triangles
are drawn in surface groups (skin with tinted lips, eye sockets, the mouth socket, gums and tongue, teeth, the
eyes with iris and pupil; :mod:`.materials`), each with its colour, under an ambient light and a key light
(Lambert plus a little Blinn-Phong specular); inside the mouth the light fades with depth. The projection is
weak perspective: a head pose rotation about the neck, then orthographic scale and 2D translation; a depth test
decides what is in front. Triangles a front camera never sees are measured once and left out
(:mod:`.visibility`): on llvmpipe a frame's cost is mostly per triangle.

Measured (``scripts/bench_face3d.py``): blending in numpy costs a millisecond or two a frame; the drawing is
most of a frame's time.

The picture is RGBA with premultiplied colour over ``background``: pixels the head does not cover keep the
background's colour with alpha 0, antialiased edges are mixed (multisampling), so ``rgba[..., :3]`` is the frame
composited on the background and ``rgba[..., 3]`` the head's matte. With a black background this is the usual
premultiplied transparent image.

The rows are drawn top-down (the projection flips y), so the framebuffer reads back in image order.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
import scipy.sparse

from anchorcast.errors import InputError

from .asset import FaceModel
from .materials import (
    DEFAULT_COLOURS,
    DEFAULT_SKIN,
    INSIDE,
    IRIS_RADIUS,
    OCCLUSION,
    PUPIL_RADIUS,
    SPECULAR,
    SURFACES,
    lip_weights,
    triangle_surfaces,
)
from .shaders import FRAGMENT_SHADER, VERTEX_SHADER

Float32Array = npt.NDArray[np.float32]

CLOSED = ("skin", "teeth", "eye")
"""Surfaces seen only from outside, whose back faces need not be drawn (the mouth's inside is seen from within)."""
MIN_WEIGHT = 0.004
"""Weights below this are not blended (a sigmoid never outputs 0; 0.004 of the widest shape is under 0.02 cm)."""
GAZE_DEGREES = 25.0
"""How far an eye turns at eyeLook* = 1 (ARKit's shapes span about that)."""
NECK_PIVOT = (0.0, -8.0, 0.0)
"""The point (model centimetres) the head pose turns about: the top of the neck."""

@dataclasses.dataclass(frozen=True)
class Pose:
    """A head pose: rotations in radians about the neck (yaw turns left/right, pitch nods, roll tilts) and a
    shift of the projected head in pixels."""

    yaw: float = 0.0
    pitch: float = 0.0
    roll: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)

    def matrix(self) -> Float32Array:
        cy, sy, cp, sp, cr, sr = (math.cos(self.yaw), math.sin(self.yaw), math.cos(self.pitch),
                                  math.sin(self.pitch), math.cos(self.roll), math.sin(self.roll))
        yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
        roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        return (roll @ pitch @ yaw).astype(np.float32)


NEUTRAL_POSE = Pose()


@dataclasses.dataclass(frozen=True)
class Framing:
    """The weak-perspective projection: ``pixel = centre + scale * (x, -y)`` of the posed head."""

    scale: float
    centre: tuple[float, float]

    @classmethod
    def for_size(cls, model: FaceModel, width: int, height: int) -> Framing:
        """A head-and-shoulders framing: the top of the head 5 % below the top edge, the chin at about 70 % of
        the height, the neck running out of the picture; centred horizontally."""
        top = float(model.neutral[:, 1].max())
        chin = float(model.neutral[model.landmarks[8], 1])
        scale = 0.65 * height / (top - chin)
        return cls(scale, (width / 2, 0.05 * height + scale * top))


class HeadRenderer:
    """Renders the head of ``model`` at ``width`` x ``height`` pixels; one OpenGL context, used from the thread
    that made the renderer (callers from other threads go through one worker thread, as the engine does).

    ``colours`` overrides :data:`DEFAULT_COLOURS` by surface (and ``iris``, ``pupil``, ``lips``). ``samples``:
    multisampling for smooth edges (4 is smooth; on llvmpipe it costs about 2.5 times the render time, see
    ``scripts/bench_face3d.py``); 0, the default, draws aliased edges. ``cull_hidden`` leaves out the
    triangles a front camera never sees (:mod:`.visibility`)."""

    def __init__(self, model: FaceModel, width: int, height: int, *, identity: npt.ArrayLike | None = None,
                 skin: tuple[int, int, int] = DEFAULT_SKIN, texture: npt.NDArray[np.uint8] | None = None,
                 background: tuple[int, int, int] = (0, 0, 0), framing: Framing | None = None,
                 samples: int = 0, cull_hidden: bool = True,
                 colours: Mapping[str, tuple[int, int, int]] | None = None, cull_back_faces: bool = True) -> None:
        import moderngl

        self.model = model
        self.width, self.height = width, height
        self.framing = framing or Framing.for_size(model, width, height)
        self.background = background
        self.cull_back_faces = cull_back_faces
        identity_weights = None if identity is None else np.asarray(identity, np.float32)
        self.base = model.vertices(None, identity_weights)
        self._deltas = model.expression_deltas.astype(np.float32).reshape(len(model.expression_names), -1)
        self._moving: npt.NDArray[np.intp] | None = None  # the vertices blended (None: all)
        self._eyes = [self._eye(side) for side in ("left", "right")]
        # The mouth's depth range: from well behind the teeth (dark) to the front of the upper teeth (lit).
        teeth = self.base[model.part_mask("teeth_upper"), 2] if "teeth_upper" in model.part_names \
            else self.base[:, 2]
        self._cavity = (float(teeth.max()) - 4.0, float(teeth.max()))
        self._gaze_index = {name: i for i, name in enumerate(model.expression_names) if name.startswith("eyeLook")}
        colours = {"skin": skin, **DEFAULT_COLOURS, **(colours or {})}
        self._albedo = {name: tuple((c / 255) ** 2 for c in colours[name]) for name in colours}  # linear

        try:
            self.ctx = moderngl.create_context(standalone=True, backend="egl")
        except Exception as error:  # glcontext raises plain Exceptions naming the EGL call
            raise InputError(f"face3d: no OpenGL context ({error})",
                             hint="the face3d engine needs EGL and Mesa (apt install libegl1 libgl1-mesa-dri); "
                             "see scripts/install-test-deps.sh") from None
        ctx = self.ctx
        # one program per kind of surface: a CPU rasteriser runs every branch of a shader, taken or not
        self._programs = {kind: ctx.program(vertex_shader=VERTEX_SHADER, fragment_shader=FRAGMENT_SHADER.replace(
            "{eye}", str(int(kind == "eye"))).replace("{inside}", str(int(kind == "inside"))))
            for kind in ("surface", "eye", "inside")}
        self.program = self._programs["surface"]
        self.triangles = np.flatnonzero(triangle_surfaces(model) >= 0)
        if cull_hidden:
            from .visibility import visible_triangles

            shown = visible_triangles(self, model.expression_names)
            self.triangles = self.triangles[shown[self.triangles]]
        self._use_triangles(self.triangles)
        # only the drawn triangles' vertices need blending: the rest of the head keeps its rest shape
        count = len(self._deltas)
        self._deltas = self._deltas.reshape(count, -1, 3)[:, self._moving].reshape(count, -1)
        renders = len(self._drawn)
        self._positions = ctx.buffer(reserve=renders * 12, dynamic=True)
        self._normals = ctx.buffer(reserve=renders * 12, dynamic=True)
        uvs = ctx.buffer(np.ascontiguousarray(model.render_uvs[self._drawn], np.float32).tobytes())
        eye_radius = ctx.buffer(self._eye_radii()[self._drawn].tobytes())
        lip = ctx.buffer(np.ascontiguousarray(lip_weights(model, self.base)[self._drawn_sources]).tobytes())
        indices = ctx.buffer(self._indices.tobytes())
        attributes = [(self._positions, "3f", "in_position"), (self._normals, "3f", "in_normal"),
                      (uvs, "2f", "in_uv"), (eye_radius, "1f", "in_eye"), (lip, "1f", "in_lip")]
        self._vaos = {kind: ctx.vertex_array(program, attributes, index_buffer=indices, index_element_size=4,
                                             skip_errors=True)  # a variant may not read every attribute
                      for kind, program in self._programs.items()}
        samples = min(samples, ctx.max_samples) if samples > 1 else 0  # moderngl: 0 is a plain renderbuffer
        size = (width, height)
        self._fbo = ctx.framebuffer(color_attachments=[ctx.renderbuffer(size, 4, samples=samples)],
                                    depth_attachment=ctx.depth_renderbuffer(size, samples=samples))
        self._resolved = (ctx.framebuffer(color_attachments=[ctx.renderbuffer(size, 4)])
                          if samples else self._fbo)
        self._texture = None
        if texture is not None:
            image = np.ascontiguousarray(texture[..., :3], np.uint8)
            self._texture = ctx.texture((image.shape[1], image.shape[0]), 3, image.tobytes())
            self._texture.build_mipmaps()
        uniforms = {"pivot": NECK_PIVOT, "scale": self.framing.scale, "viewport": (float(width), float(height)),
                    "light_direction": tuple(_unit((-0.35, 0.45, 0.82))), "light_colour": (0.9, 0.88, 0.84),
                    "ambient": (0.32, 0.33, 0.36), "skin_texture": 0, "iris": self._albedo["iris"],
                    "pupil": self._albedo["pupil"], "lips": self._albedo["lips"],
                    "eye_radii": (PUPIL_RADIUS, IRIS_RADIUS)}
        for program in self._programs.values():
            for name, value in uniforms.items():
                _set(program, name, value)

    def _use_triangles(self, triangles: npt.NDArray[np.intp]) -> None:
        """Draws only ``triangles`` (indices into the model's), grouped by surface; normals come from them."""
        model = self.model
        corners = model.render_sources[model.triangles[triangles]]  # model-vertex corners, for normals
        self._moving = np.unique(corners)
        self._corners = corners
        rows = corners.reshape(-1)
        columns = np.repeat(np.arange(len(corners)), 3)
        self._incidence = scipy.sparse.csr_matrix((np.ones(rows.size, np.float32), (rows, columns)),
                                                  shape=(model.vertex_count, len(corners)))
        surfaces = triangle_surfaces(model)[triangles]
        order = np.argsort(surfaces, kind="stable")
        bounds = np.searchsorted(surfaces[order], np.arange(len(SURFACES) + 1))
        # Only the render vertices the drawn triangles use go to OpenGL, each group's its own copies: llvmpipe
        # shades every vertex in a draw's index range, so a compact range per draw saves most of the vertex work.
        drawn, indices = [], []
        for k in range(len(SURFACES)):
            group = model.triangles[triangles[order][bounds[k]:bounds[k + 1]]]
            used, local = np.unique(group.reshape(-1), return_inverse=True)
            local = local.reshape(-1, 3)
            local = local[np.argsort(local.min(axis=1), kind="stable")]  # neighbours together: vertex reuse
            indices.append(local.astype(np.int32) + sum(len(d) for d in drawn))
            drawn.append(used)
        self._drawn = np.concatenate(drawn)
        self._indices = np.ascontiguousarray(np.concatenate(indices), np.int32)
        self._drawn_sources = model.render_sources[self._drawn]
        self._groups = [(SURFACES[k], int(bounds[k]) * 3, int(bounds[k + 1] - bounds[k]) * 3)
                        for k in range(len(SURFACES)) if bounds[k + 1] > bounds[k]]

    def _eye_radii(self) -> Float32Array:
        """(R,) float32: for the eyeballs' render vertices, the distance from the eye's axis on the front half
        (where the iris and pupil are drawn), 9 on the back half; 0 elsewhere (not used)."""
        radii = np.zeros(self.model.vertex_count, np.float32)
        for vertices, centre in self._eyes:
            offset = self.base[vertices] - centre
            radii[vertices] = np.where(offset[:, 2] > 0, np.hypot(offset[:, 0], offset[:, 1]), 9.0)
        return np.ascontiguousarray(radii[self.model.render_sources])

    def _eye(self, side: str) -> tuple[npt.NDArray[np.intp], Float32Array]:
        """The vertices of one eyeball and the centre it turns about."""
        vertices = np.flatnonzero(self.model.part_mask(f"eyeball_{side}"))
        points = self.base[vertices]
        centre = 0.5 * (points.min(axis=0) + points.max(axis=0))
        # the ball's centre, not the cornea's bulge: its back plus its radius
        centre[2] = points[:, 2].min() + 0.5 * (points[:, 0].max() - points[:, 0].min())
        return vertices, centre.astype(np.float32)

    def vertices(self, expression: npt.ArrayLike | None = None) -> Float32Array:
        """(V, 3) model-vertex positions for the weights (E,): the identity's head, the expression weights of
        at least :data:`MIN_WEIGHT` blended in, the eyeballs turned by the gaze weights. With ``cull_hidden``
        only the drawn triangles' vertices move; the rest keep the rest shape."""
        positions = self.base.copy()
        if expression is None:
            return positions
        weights = np.asarray(expression, np.float32)
        used = np.flatnonzero(np.abs(weights) >= MIN_WEIGHT)
        if used.size:
            moved = (weights[used] @ self._deltas[used]).reshape(-1, 3)
            if self._moving is None:
                positions += moved
            else:
                positions[self._moving] += moved
        self._turn_eyes(positions, weights)
        return positions

    def _turn_eyes(self, positions: Float32Array, weights: Float32Array) -> None:
        def weight(name: str) -> float:
            index = self._gaze_index.get(name)
            return float(weights[index]) if index is not None else 0.0

        for (vertices, centre), side, outward in zip(self._eyes, "LR", (1.0, -1.0), strict=True):
            yaw = outward * (weight(f"eyeLookOut_{side}") - weight(f"eyeLookIn_{side}"))
            pitch = weight(f"eyeLookDown_{side}") - weight(f"eyeLookUp_{side}")
            if yaw == 0.0 and pitch == 0.0:
                continue
            angle = math.radians(GAZE_DEGREES)
            turn = Pose(yaw=yaw * angle, pitch=pitch * angle).matrix()
            positions[vertices] = (positions[vertices] - centre) @ turn.T + centre

    def normals(self, positions: Float32Array) -> Float32Array:
        """(V, 3) smooth unit normals: the area-weighted normals of the drawn triangles around each vertex
        (zero where none is drawn)."""
        a, b, c = (positions[self._corners[:, k]] for k in range(3))
        faces = np.cross(b - a, c - a)
        summed = np.asarray(self._incidence @ faces, np.float32)
        length = np.linalg.norm(summed, axis=1, keepdims=True)
        return summed / np.maximum(length, 1e-12)

    def project(self, points: npt.ArrayLike, pose: Pose = NEUTRAL_POSE) -> Float32Array:
        """(N, 2) pixel positions (x right, y down) of model-space points under ``pose`` and the framing."""
        p = np.asarray(points, np.float32)
        pivot = np.asarray(NECK_PIVOT, np.float32)
        posed = (p - pivot) @ pose.matrix().T + pivot
        centre = np.asarray(self.framing.centre, np.float32) + np.asarray(pose.shift, np.float32)
        return centre + self.framing.scale * posed[:, :2] * np.array([1.0, -1.0], np.float32)

    def render(self, expression: npt.ArrayLike | None = None, pose: Pose = NEUTRAL_POSE) -> npt.NDArray[np.uint8]:
        """(H, W, 4) uint8: the head with ``expression`` (E,) weights in ``pose`` over the background (see the
        module doc: premultiplied over the background colour, alpha the head's coverage)."""
        positions = self.vertices(expression)
        normals = self.normals(positions)
        sources = self._drawn_sources
        with self.ctx:  # current on this thread for the draw (another renderer's context may be)
            self._positions.write(np.ascontiguousarray(positions[sources]).tobytes())
            self._normals.write(np.ascontiguousarray(normals[sources]).tobytes())
            rotation = np.ascontiguousarray(pose.matrix().T).tobytes()  # column-major
            centre = (self.framing.centre[0] + pose.shift[0], self.framing.centre[1] + pose.shift[1])
            for program in self._programs.values():
                program["rotation"].write(rotation)
                program["centre"].value = centre
            data = self._draw()
        return np.frombuffer(data, np.uint8).reshape(self.height, self.width, 4)

    def _draw(self) -> bytes:
        ctx = self.ctx
        self._fbo.use()
        ctx.enable(ctx.DEPTH_TEST)
        ctx.front_face = "cw"  # counter-clockwise in the model; the projection flips y
        r, g, b = (c / 255 for c in self.background)
        ctx.clear(r, g, b, 0.0, depth=1.0)
        if self._texture is not None:
            self._texture.use(0)
        for name, first, count in self._groups:
            if self.cull_back_faces and name in CLOSED:  # the rasteriser then skips the far side's pixels
                ctx.enable(ctx.CULL_FACE)
            else:
                ctx.disable(ctx.CULL_FACE)
            kind = "eye" if name == "eye" else "inside" if name in INSIDE else "surface"
            program = self._programs[kind]
            _set(program, "textured", self._texture is not None and name == "skin")
            _set(program, "cavity", self._cavity)
            program["albedo"].value = self._albedo[name]
            program["occlusion"].value = OCCLUSION[name]
            program["specular"].value = SPECULAR[name]
            program["shininess"].value = 200.0 if name == "eye" else 40.0
            self._vaos[kind].render(first=first, vertices=count)
        if self._resolved is not self._fbo:
            ctx.copy_framebuffer(self._resolved, self._fbo)
        return self._resolved.read(components=4, alignment=1)

    def close(self) -> None:
        self.ctx.release()


def _set(program: object, name: str, value: object) -> None:
    """Sets a uniform the program has (a shader variant may have compiled another away)."""
    uniform = program.get(name, None)  # type: ignore[attr-defined]
    if uniform is not None:
        uniform.value = value


def _unit(vector: tuple[float, float, float]) -> Float32Array:
    v = np.asarray(vector, np.float32)
    return v / np.linalg.norm(v)
