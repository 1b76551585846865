"""The ICT-FaceKit importer: the model's own folder layout in, a compact :class:`~.asset.FaceModel` out.

ICT-FaceKit (USC Institute for Creative Technologies, MIT licence) keeps its head in ``FaceXModel/``:
``generic_neutral_mesh.obj``, one OBJ per expression at weight 1 (names in ``vertex_indices.json``'s
``"expressions"``, ARKit names such as ``jawOpen``), ``identityNNN.obj`` per identity mode, all with the neutral's
26,719 vertices in the same order. A blendshape or identity mode is its OBJ minus the neutral.

What is kept (vertex ranges from the model's documentation; see :data:`KEPT_PARTS`): the face, head and neck,
mouth socket, eye sockets, gums and tongue, upper and lower teeth and the eyeballs, vertices 0-24590. Dropped:
the lacrimal fluid, eye blend, eye occlusion and eyelash meshes (24591-26718), thin overlay layers made for
alpha blending that an opaque renderer draws as artefacts. The eye sockets, not named in the issue's list, are
kept with the eyes: they close the head behind the eyeballs, and keeping them keeps the kept vertices one
prefix of the source's, so vertex indices (landmarks) are the same as ICT-FaceKit's.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from anchorcast.errors import InputError

from .asset import FaceModel
from .obj_reader import ObjMesh, read_file_bytes, read_obj_mesh, read_obj_positions

MODEL_FOLDER = "FaceXModel"
NEUTRAL_FILE = "generic_neutral_mesh.obj"
INDEX_FILE = "vertex_indices.json"
SOURCE_VERTEX_COUNT = 26_719
FLOAT16_LIMIT = 65_504.0
_IDENTITY_FILE = re.compile(r"identity(\d{3})\.obj")

Progress = Callable[[int, int, str], None]
"""``progress(done, total, file_name)``: called after each OBJ file is read."""


@dataclasses.dataclass(frozen=True)
class Part:
    """A named run of source vertices (inclusive bounds, as the model's documentation gives them)."""

    name: str
    first: int
    last: int


KEPT_PARTS: tuple[Part, ...] = (
    Part("face", 0, 9408),
    Part("head_neck", 9409, 11247),
    Part("mouth_socket", 11248, 13293),
    Part("eye_socket_left", 13294, 13677),
    Part("eye_socket_right", 13678, 14061),
    Part("gums_tongue", 14062, 17038),
    Part("teeth_upper", 17039, 19246),
    Part("teeth_lower", 19247, 21450),
    Part("eyeball_left", 21451, 23020),
    Part("eyeball_right", 23021, 24590),
)
DROPPED_PARTS = "lacrimal fluid, eye blend, eye occlusion, eyelashes (source vertices 24591-26718)"

LANDMARKS_68: tuple[int, ...] = (
    1225, 1888, 1052, 367, 1719, 1722, 2199, 1447, 966, 3661, 4390, 3927, 3924, 2608, 3272, 4088, 3443,  # jaw
    268, 493, 1914, 2044, 1401, 3615, 4240, 4114, 2734, 2509,  # brows
    978, 4527, 4942, 4857, 1140, 2075, 1147, 4269, 3360,  # nose
    1507, 1542, 1537, 1528, 1518, 1511, 3742, 3751, 3756, 3721, 3725, 3732,  # eyes
    5708, 5695, 2081, 0, 4275, 6200, 6213, 6346, 6461, 5518, 5957, 5841, 5702, 5711, 5533, 6216, 6207, 6470, 5517,
    5966,  # mouth
)
"""Multi-PIE 68-point landmarks as source vertex indices, in the usual order (from the model's documentation)."""


@dataclasses.dataclass(frozen=True)
class ModelFiles:
    """The files of an ICT-FaceKit folder that the importer reads, all known to exist."""

    folder: Path
    index: Path
    neutral: Path
    expression_names: tuple[str, ...]
    landmarks: tuple[int, ...]
    """The 68 landmark source vertices: the index file's ``idx_to_landmark_verts``, else :data:`LANDMARKS_68`."""
    expressions: tuple[Path, ...]
    identities: tuple[Path, ...]
    identities_available: int
    licence: Path | None


def find_model_files(folder: Path, *, identity_limit: int | None = None) -> ModelFiles:
    """Checks the folder (the unpacked ``ict-facekit/`` or its ``FaceXModel/``) before anything heavy is read."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder", hint="give the unpacked ICT-FaceKit folder (with FaceXModel/)")
    model_dir = folder / MODEL_FOLDER if (folder / MODEL_FOLDER).is_dir() else folder
    index = model_dir / INDEX_FILE
    names, landmarks = read_model_index(index)
    neutral = model_dir / NEUTRAL_FILE
    if not neutral.is_file():
        raise InputError(f"{neutral}: the neutral mesh is missing", hint="is this an ICT-FaceKit folder?")
    expressions = tuple(model_dir / f"{name}.obj" for name in names)
    missing = [path for path in expressions if not path.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"{missing[0]}: expression OBJ missing{more}; "
                         f"{index.name} lists {len(names)} expressions")
    identities = _identity_files(model_dir)
    chosen = identities if identity_limit is None else identities[:identity_limit]
    licence = next((path for path in (folder / "LICENSE", model_dir.parent / "LICENSE", model_dir / "LICENSE")
                    if path.is_file()), None)
    return ModelFiles(model_dir, index, neutral, names, landmarks, expressions, tuple(chosen), len(identities),
                      licence)


def read_model_index(index: Path) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """From ``vertex_indices.json``: the ``"expressions"`` list (unique names usable as file names) and the 68
    landmark vertices (``"idx_to_landmark_verts"`` when there, else the documented :data:`LANDMARKS_68`)."""
    text = read_file_bytes(index)
    try:
        document = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise InputError(f"{index}: not valid JSON ({error})") from None
    names = document.get("expressions") if isinstance(document, dict) else None
    if not isinstance(names, list) or not names:
        raise InputError(f'{index}: no "expressions" list of blendshape names')
    for name in names:
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise InputError(f'{index}: "expressions" holds {name!r}, not a blendshape name')
    if len(set(names)) != len(names):
        raise InputError(f'{index}: "expressions" names a blendshape twice')
    landmarks = document.get("idx_to_landmark_verts", LANDMARKS_68)
    last_kept = max(part.last for part in KEPT_PARTS)
    if (not isinstance(landmarks, list | tuple) or len(landmarks) != len(LANDMARKS_68)
            or not all(isinstance(v, int) and 0 <= v <= last_kept for v in landmarks)):
        raise InputError(f'{index}: "idx_to_landmark_verts" is not {len(LANDMARKS_68)} vertex indices of the '
                         "kept parts")
    return tuple(names), tuple(landmarks)


def import_face_model(folder: Path, *, identity_limit: int | None = None,
                      progress: Progress | None = None) -> FaceModel:
    """Reads an ICT-FaceKit folder into a :class:`FaceModel` of the kept parts (float16 deltas).

    ``identity_limit`` keeps only the first N identity modes (they are ordered by importance, as PCA modes are).
    """
    files = find_model_files(folder, identity_limit=identity_limit)
    total = 1 + len(files.expressions) + len(files.identities)
    mesh = read_obj_mesh(files.neutral)
    if len(mesh.positions) != SOURCE_VERTEX_COUNT:
        raise InputError(f"{files.neutral}: {len(mesh.positions)} vertices; the ICT-FaceKit head has "
                         f"{SOURCE_VERTEX_COUNT} (the part ranges this importer selects need its layout)")
    if progress:
        progress(1, total, files.neutral.name)
    kept = _kept_vertices()
    neutral = mesh.positions[kept]

    def deltas(paths: Sequence[Path], done: int) -> np.ndarray:
        out = np.empty((len(paths), len(kept), 3), dtype=np.float16)
        for k, path in enumerate(paths):
            positions = read_obj_positions(path)
            if len(positions) != len(mesh.positions):
                raise InputError(f"{path}: {len(positions)} vertices, but {files.neutral.name} has "
                                 f"{len(mesh.positions)}; every OBJ of the model must share its topology")
            delta = positions[kept] - neutral
            if np.abs(delta).max(initial=0.0) > FLOAT16_LIMIT:
                raise InputError(f"{path}: moves vertices further than float16 can store")
            out[k] = delta
            if progress:
                progress(done + k + 1, total, path.name)
        return out

    expression_deltas = deltas(files.expressions, 1)
    identity_deltas = deltas(files.identities, 1 + len(files.expressions))
    triangles, render_sources, render_uvs, kept_triangles = split_uv_seams(mesh, kept)
    crossing = _crossing_triangles(mesh, kept)
    triangle_materials = mesh.triangle_materials[kept_triangles]
    used_materials = np.unique(triangle_materials[triangle_materials >= 0])  # the eyelashes' and such go
    parts = np.concatenate([np.full(part.last - part.first + 1, code, dtype=np.uint8)
                            for code, part in enumerate(KEPT_PARTS)])  # in the order of _kept_vertices
    model = FaceModel(
        neutral=neutral.astype(np.float32),
        expression_names=files.expression_names,
        expression_deltas=expression_deltas,
        identity_deltas=identity_deltas,
        part_names=tuple(part.name for part in KEPT_PARTS),
        vertex_parts=parts,
        source_vertices=kept.astype(np.int32),
        landmarks=_model_landmarks(kept, files.landmarks),
        triangles=triangles,
        render_sources=render_sources,
        render_uvs=render_uvs,
        material_names=tuple(mesh.material_names[code] for code in used_materials),
        triangle_materials=np.where(triangle_materials >= 0, np.searchsorted(used_materials, triangle_materials),
                                    -1).astype(np.int16),
        metadata=_metadata(files, mesh.polygon_count, crossing),
    )
    model.check(files.folder)
    return model


def _kept_vertices() -> np.ndarray:
    return np.concatenate([np.arange(part.first, part.last + 1) for part in KEPT_PARTS])


def _identity_files(model_dir: Path) -> list[Path]:
    numbered = sorted((int(match[1]), path) for path in model_dir.glob("identity*.obj")
                      if (match := _IDENTITY_FILE.fullmatch(path.name)))
    if not numbered:
        raise InputError(f"{model_dir / 'identity000.obj'}: no identity OBJs "
                         "(identity000.obj, identity001.obj ...)")
    for expected, (number, _) in enumerate(numbered):
        if number != expected:
            raise InputError(f"{model_dir / f'identity{expected:03d}.obj'}: missing, but identity{number:03d}.obj "
                             "is there; identity modes must be numbered from 000 without gaps")
    return [path for _, path in numbered]


def split_uv_seams(mesh: ObjMesh, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The triangles among the ``kept`` vertices, over render vertices: one per distinct (vertex, UV) pair that
    a triangle corner uses, so a vertex on a UV seam becomes one render vertex per UV it has there.

    Returns the triangles (render-vertex indices), each render vertex's model vertex (its position in ``kept``),
    its UV, and which of the mesh's triangles were kept (those whose corners all are).
    """
    model_index = np.full(len(mesh.positions), -1, dtype=np.int64)
    model_index[kept] = np.arange(len(kept))
    corners = model_index[mesh.triangles]
    inside = (corners >= 0).all(axis=1)
    corners, corner_uvs = corners[inside], mesh.triangle_uvs[inside]
    stride = len(mesh.uvs) + 1
    keys, inverse = np.unique(corners * stride + (corner_uvs + 1), return_inverse=True)
    render_sources = (keys // stride).astype(np.int32)
    uv_index = keys % stride - 1
    render_uvs = np.zeros((len(keys), 2), dtype=np.float32)
    has_uv = uv_index >= 0
    render_uvs[has_uv] = mesh.uvs[uv_index[has_uv]]
    return inverse.reshape(-1, 3).astype(np.int32), render_sources, render_uvs, inside


def _crossing_triangles(mesh: ObjMesh, kept: np.ndarray) -> int:
    """How many triangles join a kept vertex to a dropped one (they go with the dropped part)."""
    is_kept = np.zeros(len(mesh.positions), dtype=bool)
    is_kept[kept] = True
    corners_kept = is_kept[mesh.triangles]
    return int((corners_kept.any(axis=1) & ~corners_kept.all(axis=1)).sum())


def _model_landmarks(kept: np.ndarray, landmarks: tuple[int, ...]) -> np.ndarray:
    model_index = {int(source): k for k, source in enumerate(kept)}
    return np.array([model_index[source] for source in landmarks], dtype=np.int32)


def _metadata(files: ModelFiles, polygons: int, crossing: int) -> dict[str, Any]:
    licence = files.licence.read_text(encoding="utf-8", errors="replace") if files.licence else ""
    return {
        "source": "ICT-FaceKit (USC Institute for Creative Technologies)",
        "licence": "MIT" if "MIT" in licence or "Permission is hereby granted" in licence else "see the source",
        "licence_text": licence,
        "units": "centimetres",
        "source_vertices": SOURCE_VERTEX_COUNT,
        "source_polygons": polygons,
        "kept_parts": {part.name: [part.first, part.last] for part in KEPT_PARTS},
        "dropped_parts": DROPPED_PARTS,
        "dropped_crossing_triangles": crossing,
        "identity_modes_in_source": files.identities_available,
        "uv_convention": "OBJ (v = 0 at the bottom of the image)",
    }
