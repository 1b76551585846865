"""The compact face-model asset: a morphable head in one ``.npz`` file, and :class:`FaceModel` to use it.

Geometry lives on *model vertices* (one per vertex of the source model that was kept): the neutral positions
(float32), the expression deltas and the identity deltas (float16; a head is ``neutral + Σ w·delta``). Texture
coordinates live on *render vertices*: where the source gives one vertex several UVs (a seam of the UV layout),
that vertex has one render vertex per UV, and ``render_sources`` says which model vertex each render vertex
copies. The triangles index render vertices, so a renderer or a glTF file (one UV per vertex) can use them as
they are, while deltas are stored once per model vertex rather than once per seam copy and landmark indices
stay model-vertex indices.

Keys of the file (all arrays; strings as numpy unicode arrays):

==================== ============ =======================================================================
key                  shape, type  meaning
==================== ============ =======================================================================
format               ()           ``anchorcast-facemodel/1``
neutral              (V, 3) f32   neutral positions, the source's units (ICT-FaceKit: centimetres)
expression_names     (E,) str     blendshape names (ARKit names for ICT-FaceKit), in the source's order
expression_deltas    (E, V, 3) f16 each expression at weight 1 minus the neutral
identity_deltas      (I, V, 3) f16 each identity mode minus the neutral
part_names           (P,) str     the kept parts of the head
vertex_parts         (V,) u8      each model vertex's part, an index into ``part_names``
source_vertices      (V,) i32     each model vertex's index in the source OBJ
landmarks            (L,) i32     the 68 Multi-PIE landmarks as model-vertex indices
triangles            (T, 3) i32   render-vertex indices, counter-clockwise as in the source
render_sources       (R,) i32     the model vertex of each render vertex
render_uvs           (R, 2) f32   texture coordinates, OBJ convention (v = 0 at the bottom of the image)
material_names       (M,) str     the source's materials (``usemtl``; ICT-FaceKit's split iris from sclera)
triangle_materials   (T,) i16     each triangle's material, an index into ``material_names`` (-1: none)
metadata             ()           JSON: source, licence, what was dropped
==================== ============ =======================================================================
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from anchorcast.errors import InputError

ASSET_FORMAT = "anchorcast-facemodel/1"
SHIPPED_ASSET = Path(__file__).resolve().parent / "assets" / "ict_face.npz"
"""The asset the package ships, made by ``anchorcast facemodel import`` from ICT-FaceKit."""

_ARRAY_KEYS = ("neutral", "expression_deltas", "identity_deltas", "vertex_parts", "source_vertices", "landmarks",
               "triangles", "render_sources", "render_uvs", "triangle_materials")


@dataclasses.dataclass(frozen=True, eq=False)
class FaceModel:
    """A morphable head: neutral mesh, expression and identity deltas, triangles with UVs, part labels."""

    neutral: np.ndarray
    expression_names: tuple[str, ...]
    expression_deltas: np.ndarray
    identity_deltas: np.ndarray
    part_names: tuple[str, ...]
    vertex_parts: np.ndarray
    source_vertices: np.ndarray
    landmarks: np.ndarray
    triangles: np.ndarray
    render_sources: np.ndarray
    render_uvs: np.ndarray
    material_names: tuple[str, ...]
    triangle_materials: np.ndarray
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def vertex_count(self) -> int:
        return len(self.neutral)

    @property
    def render_vertex_count(self) -> int:
        return len(self.render_sources)

    def expression_index(self, name: str) -> int:
        """The position of an expression by name (``jawOpen``); KeyError for an unknown name."""
        try:
            return self.expression_names.index(name)
        except ValueError:
            raise KeyError(f"no expression {name!r} in this face model") from None

    def vertices(self, expression: np.ndarray | None = None, identity: np.ndarray | None = None) -> np.ndarray:
        """(V, 3) float32 model-vertex positions for expression weights (E,) and identity coefficients (I,) or
        fewer (the first modes); None means all zero."""
        positions = self.neutral.astype(np.float32, copy=True)
        for weights, deltas in ((expression, self.expression_deltas), (identity, self.identity_deltas)):
            if weights is None:
                continue
            weights = np.asarray(weights, dtype=np.float32)
            if weights.ndim != 1 or len(weights) > len(deltas):
                raise ValueError(f"expected at most {len(deltas)} weights, got shape {weights.shape}")
            used = np.flatnonzero(weights)
            if used.size:
                positions += np.tensordot(weights[used], deltas[used].astype(np.float32), axes=1)
        return positions

    def render_vertices(self, expression: np.ndarray | None = None,
                        identity: np.ndarray | None = None) -> np.ndarray:
        """(R, 3) float32 positions of the render vertices (what :attr:`triangles` index)."""
        return self.vertices(expression, identity)[self.render_sources]

    def part_mask(self, *names: str) -> np.ndarray:
        """(V,) bool: the model vertices of the named parts."""
        unknown = set(names) - set(self.part_names)
        if unknown:
            raise KeyError(f"no part {sorted(unknown)} in this face model (parts: {', '.join(self.part_names)})")
        codes = [self.part_names.index(name) for name in names]
        return np.isin(self.vertex_parts, codes)

    def save(self, path: Path) -> int:
        """Writes the asset (zip-compressed npz) and returns its size in bytes."""
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays = {key: getattr(self, key) for key in _ARRAY_KEYS}
        partial = path.with_name(path.name + ".partial")
        with partial.open("wb") as stream:
            np.savez_compressed(
                stream, format=np.array(ASSET_FORMAT), expression_names=np.array(self.expression_names),
                part_names=np.array(self.part_names), material_names=np.array(self.material_names, dtype=str),
                metadata=np.array(json.dumps(self.metadata)), **arrays)
        partial.replace(path)
        return path.stat().st_size

    @classmethod
    def load(cls, path: Path) -> FaceModel:
        """Reads an asset written by :meth:`save`; an InputError naming the file when it is not one."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                stored = {key: archive[key] for key in archive.files}
        except FileNotFoundError:
            raise InputError(f"{path}: face model not found",
                             hint="make one with `anchorcast facemodel import DIR --out PATH`") from None
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise InputError(f"{path}: not a face-model asset ({error})") from None
        if str(stored.get("format", "")) != ASSET_FORMAT:
            raise InputError(f"{path}: not a face-model asset (format {str(stored.get('format', 'missing'))!r}, "
                             f"expected {ASSET_FORMAT!r})")
        missing = [key for key in (*_ARRAY_KEYS, "expression_names", "part_names", "material_names")
                   if key not in stored]
        if missing:
            raise InputError(f"{path}: face-model asset without {', '.join(missing)}")
        model = cls(
            expression_names=tuple(str(name) for name in stored["expression_names"]),
            part_names=tuple(str(name) for name in stored["part_names"]),
            material_names=tuple(str(name) for name in stored["material_names"]),
            metadata=json.loads(str(stored.get("metadata", "{}"))),
            **{key: stored[key] for key in _ARRAY_KEYS},
        )
        model.check(path)
        return model

    def check(self, origin: Path | str = "face model") -> None:
        """Raises an InputError when the arrays do not fit together (a truncated or hand-edited asset)."""
        vertices, renders = self.vertex_count, self.render_vertex_count
        problems = []
        if self.neutral.shape != (vertices, 3):
            problems.append(f"neutral has shape {self.neutral.shape}")
        for key in ("expression_deltas", "identity_deltas"):
            deltas = getattr(self, key)
            if deltas.ndim != 3 or deltas.shape[1:] != (vertices, 3):
                problems.append(f"{key} has shape {deltas.shape}, expected (N, {vertices}, 3)")
        if len(self.expression_deltas) != len(self.expression_names):
            problems.append(f"{len(self.expression_names)} expression names for "
                            f"{len(self.expression_deltas)} expression deltas")
        for key, size in (("vertex_parts", vertices), ("source_vertices", vertices), ("render_uvs", renders)):
            if len(getattr(self, key)) != size:
                problems.append(f"{key} has {len(getattr(self, key))} rows, expected {size}")
        if self.triangles.size and (self.triangles.min() < 0 or self.triangles.max() >= renders):
            problems.append("triangles refer to render vertices that do not exist")
        if self.render_sources.size and (self.render_sources.min() < 0 or self.render_sources.max() >= vertices):
            problems.append("render_sources refer to model vertices that do not exist")
        if self.landmarks.size and (self.landmarks.min() < 0 or self.landmarks.max() >= vertices):
            problems.append("landmarks refer to model vertices that do not exist")
        if len(self.triangle_materials) != len(self.triangles) or (
                self.triangle_materials.size and self.triangle_materials.max() >= len(self.material_names)):
            problems.append("triangle_materials do not match the triangles and material_names")
        if self.vertex_parts.size and self.vertex_parts.max() >= len(self.part_names):
            problems.append("vertex_parts refer to parts that do not exist")
        if problems:
            raise InputError(f"{origin}: inconsistent face-model asset: {'; '.join(problems)}")
