"""Which triangles of the head a front camera can ever see: the rest are not drawn.

About 60 % of the head's triangles are hidden in every frame the engine draws: the back of the head, the roots
of the teeth inside the gums, the eyeballs' inner spheres, the far side of the mouth socket. Mesa's llvmpipe
spends most of a frame on vertex and triangle setup, not on pixels, so leaving those out roughly halves the
render time. The set is measured, not guessed: the head is drawn with each triangle's number as its colour in
the poses and expressions a frame can show (neutral, every expression at full weight, the wide mouth shapes
together, the head turned further than the idle motion turns it), every number found is kept, and then every
triangle that shares a vertex with a kept one, twice over, so that in-between shapes find no hole.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse

_ID_VERTEX = """
#version 330
in vec3 in_position;
uniform mat3 rotation;
uniform vec3 pivot;
uniform float scale;
uniform vec2 centre;
uniform vec2 viewport;
void main() {
    vec3 p = rotation * (in_position - pivot) + pivot;
    vec2 pixel = centre + vec2(p.x, -p.y) * scale;
    gl_Position = vec4(pixel.x / viewport.x * 2.0 - 1.0, pixel.y / viewport.y * 2.0 - 1.0, -p.z / 64.0, 1.0);
}
"""
_ID_FRAGMENT = """
#version 330
out uint id;
void main() { id = uint(gl_PrimitiveID) + 1u; }
"""
WIDE_MOUTHS: tuple[tuple[str, ...], ...] = (
    ("jawOpen", "mouthFunnel"),
    ("jawOpen", "mouthSmile_L", "mouthSmile_R"),
    ("jawOpen", "mouthStretch_L", "mouthStretch_R"),
    ("jawOpen", "mouthUpperUp_L", "mouthUpperUp_R", "mouthLowerDown_L", "mouthLowerDown_R"),
    ("mouthUpperUp_L", "mouthUpperUp_R", "mouthLowerDown_L", "mouthLowerDown_R", "mouthSmile_L", "mouthSmile_R"),
    ("jawOpen", "jawLeft"), ("jawOpen", "jawRight"), ("jawOpen", "jawForward"),
)
"""Expression sets drawn together at full weight: the widest mouths the model can open."""
TURNS = ((0.25, 0.0, 0.0), (-0.25, 0.0, 0.0), (0.0, 0.2, 0.0), (0.0, -0.2, 0.0), (0.0, 0.0, 0.2), (0.0, 0.0, -0.2))
"""(yaw, pitch, roll) radians the head is drawn at, neutral and with the jaw open: more than idle motion turns."""


_CACHE: dict[tuple[object, ...], tuple[object, npt.NDArray[np.bool_]]] = {}
_CACHE_LOCK = threading.Lock()


def visible_triangles(renderer: object, expression_names: Sequence[str], size: int = 384,
                      rings: int = 2) -> npt.NDArray[np.bool_]:
    """(T,) bool: the triangles of ``renderer``'s head (a :class:`~.render.HeadRenderer`, whose context, head
    and framing are used) seen in any of the probe views, grown by ``rings`` rings of neighbours. Kept for the
    process per head, identity and framing (relative to the picture), so another renderer of the same head
    (another session, a test) does not measure again."""
    model = renderer.model  # type: ignore[attr-defined]
    framing = renderer.framing  # type: ignore[attr-defined]
    width, height = renderer.width, renderer.height  # type: ignore[attr-defined]
    key = (id(model), renderer.base.tobytes(), round(framing.scale / height, 6),  # type: ignore[attr-defined]
           round(framing.centre[0] / width, 6), round(framing.centre[1] / height, 6), round(width / height, 6),
           size, rings)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
    if cached is not None and cached[0] is model:
        return cached[1].copy()
    seen = _measure(renderer, expression_names, size, rings)
    with _CACHE_LOCK:
        _CACHE[key] = (model, seen)  # the model kept with it: its id is not reused while the entry lives
    return seen.copy()


def _measure(renderer: object, expression_names: Sequence[str], size: int, rings: int) -> npt.NDArray[np.bool_]:
    from .render import NECK_PIVOT, Pose

    model = renderer.model  # type: ignore[attr-defined]
    ctx = renderer.ctx  # type: ignore[attr-defined]
    program = ctx.program(vertex_shader=_ID_VERTEX, fragment_shader=_ID_FRAGMENT)
    triangles = np.ascontiguousarray(model.triangles, np.int32)
    indices = ctx.buffer(triangles.tobytes())
    positions = ctx.buffer(reserve=model.render_vertex_count * 12, dynamic=True)
    vao = ctx.vertex_array(program, [(positions, "3f", "in_position")], index_buffer=indices, index_element_size=4)
    fbo = ctx.framebuffer(color_attachments=[ctx.renderbuffer((size, size), 1, dtype="u4")],
                          depth_attachment=ctx.depth_renderbuffer((size, size)))
    framing = renderer.framing  # type: ignore[attr-defined]
    ratio = size / max(renderer.width, renderer.height)  # type: ignore[attr-defined]
    program["pivot"].value = NECK_PIVOT
    program["scale"].value = framing.scale * ratio
    program["centre"].value = (framing.centre[0] * ratio, framing.centre[1] * ratio)
    program["viewport"].value = (float(size), float(size))
    seen = np.zeros(len(triangles) + 1, bool)
    try:
        for weights, pose in _probes(expression_names):
            vertices = renderer.vertices(weights)[model.render_sources]  # type: ignore[attr-defined]
            positions.write(np.ascontiguousarray(vertices, np.float32).tobytes())
            program["rotation"].write(np.ascontiguousarray(Pose(*pose).matrix().T).tobytes())
            fbo.use()
            ctx.enable(ctx.DEPTH_TEST)
            fbo.clear(0, 0, 0, 0, depth=1.0)
            vao.render()
            ids = np.frombuffer(fbo.read(components=1, dtype="u4"), np.uint32)
            seen[np.unique(ids)] = True
    finally:
        for resource in (vao, fbo, positions, indices, program):
            resource.release()
    return _grow(seen[1:], model.render_sources[model.triangles], model.vertex_count, rings)


def _probes(names: Sequence[str]) -> Iterable[tuple[npt.NDArray[np.float32], tuple[float, float, float]]]:
    count = len(names)
    neutral = np.zeros(count, np.float32)
    yield neutral, (0.0, 0.0, 0.0)
    for index in range(count):
        weights = neutral.copy()
        weights[index] = 1.0
        yield weights, (0.0, 0.0, 0.0)
    for group in WIDE_MOUTHS:
        weights = neutral.copy()
        weights[[names.index(name) for name in group if name in names]] = 1.0
        yield weights, (0.0, 0.0, 0.0)
    open_jaw = neutral.copy()
    if "jawOpen" in names:
        open_jaw[names.index("jawOpen")] = 1.0
    for turn in TURNS:
        yield neutral, turn
        yield open_jaw, turn


def _grow(seen: npt.NDArray[np.bool_], corners: npt.NDArray[np.integer], vertices: int,
          rings: int) -> npt.NDArray[np.bool_]:
    """``seen`` plus the triangles sharing a (model) vertex with a seen one, ``rings`` times."""
    count = len(corners)
    incidence = scipy.sparse.csr_matrix(
        (np.ones(corners.size, np.float32), (corners.reshape(-1), np.repeat(np.arange(count), 3))),
        shape=(vertices, count))
    keep = seen.copy()
    for _ in range(rings):
        touched = np.asarray(incidence @ keep.astype(np.float32)) > 0
        keep |= np.asarray(incidence.T @ touched.astype(np.float32)) > 0
    return keep
