"""glTF 2.0 (``.glb``) export of a face model, its expressions as named morph targets, with pygltflib.

One mesh, one primitive per material (skin, mouth interior, teeth, iris, sclera); they share the vertex
attributes and the morph targets, one per expression, named in ``mesh.extras.targetNames`` (the convention
three.js, Blender and most avatar tools read) so a page can drive them by ARKit name. Positions and deltas are
written in the model's units, exactly as the asset stores them (float16 deltas widened to float32); the node's
scale turns ICT-FaceKit's centimetres into glTF's metres. UVs are flipped to glTF's convention (v = 0 at the top
of the image). Normals are smooth normals of the neutral, shared across UV seams so the seams do not show.
The eyes' iris and pupil and the lips are vertex colours (``COLOR_0``, white elsewhere), as the engine's renderer
draws them: the iris by the distance from each eye's axis on its front half (ICT-FaceKit's sclera shell covers its
iris sphere, which a texture would show through; flat colours cannot), the lips inside their landmark contour.

``sparse=True`` writes each morph target as a sparse accessor (glTF 2.0 core: only the vertices an expression
moves, with their indices; the others read as zero), dropping displacements of at most ``min_delta`` metres:
an expression moves a fifth to two fifths of the head, so the shipped head shrinks from 18.2 MB to 5.5 MB for the
browser page (``/avatar3d``), which three.js's GLTFLoader reads like any other glb.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pygltflib

from anchorcast.errors import InputError

from .asset import FaceModel
from .materials import DEFAULT_COLOURS, IRIS_RADIUS, PUPIL_RADIUS, lip_weights

METRES_PER_UNIT = {"centimetres": 0.01, "millimetres": 0.001, "metres": 1.0}


@dataclasses.dataclass(frozen=True)
class Material:
    """A flat PBR material for the triangles of some parts (colours are linear, as glTF's factors are); with
    ``source_materials``, only for their triangles that have one of those source materials."""

    name: str
    parts: tuple[str, ...]
    colour: tuple[float, float, float, float]
    roughness: float
    source_materials: tuple[str, ...] = ()


MATERIALS: tuple[Material, ...] = (
    Material("skin", ("face", "head_neck"), (0.70, 0.45, 0.34, 1.0), 0.6),
    Material("mouth", ("mouth_socket", "gums_tongue", "eye_socket_left", "eye_socket_right"),
             (0.40, 0.08, 0.08, 1.0), 0.5),
    Material("teeth", ("teeth_upper", "teeth_lower"), (0.86, 0.83, 0.74, 1.0), 0.3),
    Material("iris", ("eyeball_left", "eyeball_right"), (1.0, 1.0, 1.0, 1.0), 0.2,
             ("M_IrisLeft", "M_IrisRight")),
    Material("sclera", ("eyeball_left", "eyeball_right"), (1.0, 1.0, 1.0, 1.0), 0.2),  # colours: COLOR_0
)
"""In order: a triangle takes the first that matches it."""
OTHER_MATERIAL = Material("other", (), (0.6, 0.6, 0.6, 1.0), 0.6)


@dataclasses.dataclass(frozen=True)
class GlbSummary:
    """What :func:`export_glb` wrote."""

    path: Path
    size: int
    vertices: int
    triangles: int
    targets: int
    primitives: int


SPARSE_MIN_DELTA_M = 1e-5
"""Displacements of at most this (0.01 mm) are left out of a sparse target: far below a pixel on any screen."""


def export_glb(model: FaceModel, path: Path, *, sparse: bool = False,
               min_delta: float = SPARSE_MIN_DELTA_M) -> GlbSummary:
    """Writes the model's neutral head with its expressions as morph targets to a binary glTF file (sparse
    targets with ``sparse``: see the module docstring)."""
    scale = METRES_PER_UNIT.get(str(model.metadata.get("units", "metres")), 1.0)
    buffer = _Buffer()
    gltf = pygltflib.GLTF2()
    positions = model.neutral[model.render_sources].astype(np.float32)
    attributes = pygltflib.Attributes(
        POSITION=buffer.accessor(gltf, positions, with_bounds=True),
        NORMAL=buffer.accessor(gltf, smooth_normals(model)),
        TEXCOORD_0=buffer.accessor(gltf, gltf_uvs(model.render_uvs)),
        COLOR_0=buffer.accessor(gltf, vertex_colours(model)),
    )
    write_target = (lambda data, name: buffer.sparse_accessor(gltf, data, min_delta / scale, name)) if sparse \
        else (lambda data, name: buffer.accessor(gltf, data, with_bounds=True, name=name))
    targets = [write_target(deltas[model.render_sources].astype(np.float32), name)
               for name, deltas in zip(model.expression_names, model.expression_deltas, strict=True)]
    primitives = []
    for material, triangles in _triangles_by_material(model):
        gltf.materials.append(pygltflib.Material(
            name=material.name, doubleSided=False,
            pbrMetallicRoughness=pygltflib.PbrMetallicRoughness(
                baseColorFactor=list(material.colour), metallicFactor=0.0, roughnessFactor=material.roughness)))
        primitives.append(pygltflib.Primitive(
            attributes=attributes, indices=buffer.indices(gltf, triangles, model.render_vertex_count),
            material=len(gltf.materials) - 1, mode=pygltflib.TRIANGLES,
            targets=[pygltflib.Attributes(POSITION=index) for index in targets]))
    gltf.meshes.append(pygltflib.Mesh(name="head", primitives=primitives,
                                      weights=[0.0] * len(targets),
                                      extras={"targetNames": list(model.expression_names)}))
    gltf.nodes.append(pygltflib.Node(name="head", mesh=0, scale=[scale] * 3))
    gltf.scenes.append(pygltflib.Scene(nodes=[0]))
    gltf.scene = 0
    gltf.asset = pygltflib.Asset(generator="anchorcast facemodel export-glb", copyright=_copyright(model))
    gltf.buffers.append(pygltflib.Buffer(byteLength=buffer.size))
    gltf.set_binary_blob(buffer.blob())
    _write(gltf, path)
    return GlbSummary(path, path.stat().st_size, model.render_vertex_count, len(model.triangles), len(targets),
                      len(primitives))


def smooth_normals(model: FaceModel) -> np.ndarray:
    """(R, 3) float32 unit normals of the neutral, area-weighted over the triangles around each model vertex."""
    corners = model.render_sources[model.triangles]
    points = model.neutral.astype(np.float64)
    faces = np.cross(points[corners[:, 1]] - points[corners[:, 0]], points[corners[:, 2]] - points[corners[:, 0]])
    normals = np.zeros_like(points)
    for k in range(3):
        np.add.at(normals, corners[:, k], faces)
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    normals = np.where(length > 0, normals / np.maximum(length, 1e-30), [0.0, 0.0, 1.0])
    return normals[model.render_sources].astype(np.float32)


def _linear(srgb: tuple[int, int, int]) -> np.ndarray:
    value = np.asarray(srgb, np.float64) / 255.0
    return np.where(value <= 0.04045, value / 12.92, ((value + 0.055) / 1.055) ** 2.4)


def vertex_colours(model: FaceModel) -> np.ndarray:
    """(R, 3) float32 linear vertex colours, which multiply the materials' (white ones show them unchanged):
    sclera, iris and pupil on the eyeballs (by the distance from the eye's axis on the front half, the eye's
    centre taken behind its cornea as the renderer takes it); the lip colour over the skin's inside the lips."""
    colours = np.ones((model.vertex_count, 3), np.float64)
    lips = lip_weights(model, model.neutral.astype(np.float32)).astype(np.float64)[:, None]
    tint = _linear(DEFAULT_COLOURS["lips"]) / np.asarray(MATERIALS[0].colour[:3])  # over the skin material
    colours += lips * (tint - 1.0)
    for side in ("left", "right"):
        part = f"eyeball_{side}"
        if part not in model.part_names:
            continue
        vertices = np.flatnonzero(model.part_mask(part))
        points = model.neutral[vertices].astype(np.float64)
        centre = 0.5 * (points.min(axis=0) + points.max(axis=0))
        centre[2] = points[:, 2].min() + 0.5 * (points[:, 0].max() - points[:, 0].min())
        offset = points - centre
        radius = np.where(offset[:, 2] > 0, np.hypot(offset[:, 0], offset[:, 1]), np.inf)
        colours[vertices] = _linear(DEFAULT_COLOURS["eye"])
        colours[vertices[radius < IRIS_RADIUS]] = _linear(DEFAULT_COLOURS["iris"])
        colours[vertices[radius < PUPIL_RADIUS]] = _linear(DEFAULT_COLOURS["pupil"])
    return colours[model.render_sources].astype(np.float32)


def gltf_uvs(obj_uvs: np.ndarray) -> np.ndarray:
    """OBJ texture coordinates (v up from the bottom) in glTF's convention (v down from the top)."""
    uvs = obj_uvs.astype(np.float32, copy=True)
    uvs[:, 1] = 1.0 - uvs[:, 1]
    return uvs


def _triangles_by_material(model: FaceModel) -> list[tuple[Material, np.ndarray]]:
    triangle_parts = model.vertex_parts[model.render_sources[model.triangles[:, 0]]]
    groups = []
    claimed = np.zeros(len(model.triangles), dtype=bool)
    for material in MATERIALS:
        codes = [model.part_names.index(name) for name in material.parts if name in model.part_names]
        chosen = np.isin(triangle_parts, codes) & ~claimed
        if material.source_materials:
            sources = [model.material_names.index(name) for name in material.source_materials
                       if name in model.material_names]
            chosen &= np.isin(model.triangle_materials, sources)
        claimed |= chosen
        if chosen.any():
            groups.append((material, model.triangles[chosen]))
    if not claimed.all():
        groups.append((OTHER_MATERIAL, model.triangles[~claimed]))
    return groups


def _copyright(model: FaceModel) -> str:
    notice = re.search(r"^\s*Copyright.*$", str(model.metadata.get("licence_text", "")), re.MULTILINE)
    source = str(model.metadata.get("source", "face model"))
    return f"{source}: {notice[0].strip() if notice else 'see the licence of the source'}; " \
           f"licence {model.metadata.get('licence', 'unknown')}"


def _write(gltf: pygltflib.GLTF2, path: Path) -> None:
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not gltf.save_binary(str(partial)):
            raise InputError(f"{path}: pygltflib wrote nothing")
        partial.replace(path)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise InputError(f"{path}: cannot write there: {error.strerror or error}") from None


class _Buffer:
    """The GLB's binary chunk, built view by view (each view 4-byte aligned, as accessors of floats need)."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self.size = 0

    def view(self, gltf: pygltflib.GLTF2, data: np.ndarray, target: int | None) -> int:
        raw = np.ascontiguousarray(data).tobytes()
        gltf.bufferViews.append(pygltflib.BufferView(buffer=0, byteOffset=self.size, byteLength=len(raw),
                                                     target=target))
        padding = -len(raw) % 4
        self._chunks.append(raw + b"\0" * padding)
        self.size += len(raw) + padding
        return len(gltf.bufferViews) - 1

    def accessor(self, gltf: pygltflib.GLTF2, data: np.ndarray, *, with_bounds: bool = False,
                 name: str | None = None) -> int:
        """A float32 VEC2/VEC3 vertex attribute; POSITION accessors (targets too) must carry min and max."""
        kind = {2: pygltflib.VEC2, 3: pygltflib.VEC3}[data.shape[1]]
        view = self.view(gltf, data.astype(np.float32), pygltflib.ARRAY_BUFFER)
        bounds = {"min": data.min(axis=0).tolist(), "max": data.max(axis=0).tolist()} if with_bounds else {}
        gltf.accessors.append(pygltflib.Accessor(bufferView=view, componentType=pygltflib.FLOAT, count=len(data),
                                                 type=kind, name=name, **bounds))
        return len(gltf.accessors) - 1

    def sparse_accessor(self, gltf: pygltflib.GLTF2, data: np.ndarray, threshold: float, name: str) -> int:
        """A float32 VEC3 morph target holding only the rows moved more than ``threshold`` (model units): no
        buffer view (zeros) plus a sparse substitution. Bounds cover the zeros too, as they are part of it."""
        moved = np.flatnonzero(np.abs(data).max(axis=1) > threshold)
        bounds = np.concatenate([data[moved], np.zeros((1, 3), np.float32)])
        accessor = pygltflib.Accessor(componentType=pygltflib.FLOAT, count=len(data), type=pygltflib.VEC3,
                                      name=name, min=bounds.min(axis=0).tolist(), max=bounds.max(axis=0).tolist())
        if len(moved):  # a sparse block needs at least one entry; an expression that moves nothing has none
            small = len(data) <= np.iinfo(np.uint16).max
            indices = self.view(gltf, moved.astype(np.uint16 if small else np.uint32), None)
            values = self.view(gltf, data[moved].astype(np.float32), None)
            kind = pygltflib.UNSIGNED_SHORT if small else pygltflib.UNSIGNED_INT
            accessor.sparse = pygltflib.Sparse(
                count=len(moved),
                indices=pygltflib.AccessorSparseIndices(bufferView=indices, componentType=kind),
                values=pygltflib.AccessorSparseValues(bufferView=values))
        gltf.accessors.append(accessor)
        return len(gltf.accessors) - 1

    def indices(self, gltf: pygltflib.GLTF2, triangles: np.ndarray, vertex_count: int) -> int:
        small = vertex_count <= np.iinfo(np.uint16).max
        flat = triangles.reshape(-1).astype(np.uint16 if small else np.uint32)
        view = self.view(gltf, flat, pygltflib.ELEMENT_ARRAY_BUFFER)
        gltf.accessors.append(pygltflib.Accessor(
            bufferView=view, componentType=pygltflib.UNSIGNED_SHORT if small else pygltflib.UNSIGNED_INT,
            count=len(flat), type=pygltflib.SCALAR, min=[int(flat.min())], max=[int(flat.max())]))
        return len(gltf.accessors) - 1

    def blob(self) -> bytes:
        return b"".join(self._chunks)
