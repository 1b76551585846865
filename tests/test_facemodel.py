"""The face-model importer (ICT-FaceKit folder -> compact asset), the glTF export and the shipped asset.

The slow tests unpack ``../shared/facemodel/ict-facekit.tar.xz`` (265 MB) once per module into a temporary
folder; they skip only where ``../shared`` is not beside the checkout, and fail when it is there without the
archive.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pygltflib
import pytest

from anchorcast.errors import InputError
from anchorcast_plugins.engines.face3d.asset import SHIPPED_ASSET, FaceModel
from anchorcast_plugins.engines.face3d.facemodel import (
    KEPT_PARTS,
    LANDMARKS_68,
    import_face_model,
    split_uv_seams,
)
from anchorcast_plugins.engines.face3d.gltf_export import export_glb, gltf_uvs
from anchorcast_plugins.engines.face3d.obj_reader import read_obj_mesh, read_obj_positions

SHARED = Path(__file__).resolve().parents[2] / "shared"  # ../shared beside the checkout
ARCHIVE = SHARED / "facemodel" / "ict-facekit.tar.xz"
ASSET_LIMIT = 15_000_000
FLOAT16_STEP = 2.0**-11  # float16 rounds to within this fraction of the value (half a unit in the last place)


@pytest.fixture(scope="module")
def facekit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The unpacked ICT-FaceKit folder (``ict-facekit/``), once per module."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not beside this checkout; the ICT-FaceKit archive lives there")
    if not ARCHIVE.is_file():
        pytest.fail(f"{ARCHIVE} is missing from {SHARED}: the importer tests need it")
    target = tmp_path_factory.mktemp("facekit")
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(target, filter="data")
    return target / "ict-facekit"


@pytest.fixture(scope="module")
def imported(facekit: Path) -> FaceModel:
    return import_face_model(facekit)


def plain_obj_vertices(path: Path) -> np.ndarray:
    """The ``v`` lines of an OBJ, read the slow obvious way (to check the importer's fast reader against)."""
    with path.open() as lines:
        return np.array([line.split()[1:4] for line in lines if line.startswith("v ")], dtype=np.float64)


def run_cli(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "anchorcast", "facemodel", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})


def accessor_data(gltf: pygltflib.GLTF2, index: int) -> np.ndarray:
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    dtype = {pygltflib.FLOAT: np.float32, pygltflib.UNSIGNED_SHORT: np.uint16,
             pygltflib.UNSIGNED_INT: np.uint32}[accessor.componentType]
    width = {pygltflib.SCALAR: 1, pygltflib.VEC2: 2, pygltflib.VEC3: 3}[accessor.type]
    data = np.frombuffer(gltf.binary_blob(), dtype=dtype, count=accessor.count * width,
                         offset=view.byteOffset + (accessor.byteOffset or 0))
    return data.reshape(accessor.count, width)


def target_position(target: pygltflib.Attributes | dict[str, int]) -> int:
    return target["POSITION"] if isinstance(target, dict) else target.POSITION


def assert_glb_matches(path: Path, model: FaceModel) -> None:
    """The glb reloads, has one named morph target per expression, and its data is the asset's."""
    gltf = pygltflib.GLTF2().load(str(path))
    (mesh,) = gltf.meshes
    assert mesh.extras["targetNames"] == list(model.expression_names)
    assert len(mesh.weights) == len(model.expression_names)
    render_sources = model.render_sources
    triangles = []
    for primitive in mesh.primitives:
        assert len(primitive.targets) == len(model.expression_names)
        triangles.append(accessor_data(gltf, primitive.indices).reshape(-1, 3))
        assert target_position(primitive.targets[0]) == target_position(mesh.primitives[0].targets[0])
    first_target = accessor_data(gltf, target_position(mesh.primitives[0].targets[0]))
    np.testing.assert_array_equal(first_target, model.expression_deltas[0][render_sources].astype(np.float32))
    attributes = mesh.primitives[0].attributes
    np.testing.assert_array_equal(accessor_data(gltf, attributes.POSITION), model.neutral[render_sources])
    np.testing.assert_array_equal(accessor_data(gltf, attributes.TEXCOORD_0), gltf_uvs(model.render_uvs))
    assert sorted(map(tuple, np.concatenate(triangles).tolist())) == sorted(map(tuple, model.triangles.tolist()))
    try:
        import trimesh
    except ImportError:
        return
    scene = trimesh.load(path, process=False)
    assert sum(len(geometry.faces) for geometry in scene.geometry.values()) == len(model.triangles)


def test_obj_reader_triangulates_quads_and_keeps_uvs(tmp_path: Path) -> None:
    obj = tmp_path / "quad.obj"
    obj.write_text("# a quad and a triangle\nmtllib x.mtl\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0 0.5 0.5 0.5\n"
                   "v 2 0 0\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvn 0 0 1\ns off\nusemtl skin\n"
                   "f 1/1/1 2/2/1 3/3/1 4/4/1\nusemtl eye\nf 2//1 5//1 3//1\n")
    mesh = read_obj_mesh(obj)
    assert mesh.polygon_count == 2
    np.testing.assert_array_equal(mesh.triangles, [[0, 1, 2], [0, 2, 3], [1, 4, 2]])
    np.testing.assert_array_equal(mesh.triangle_uvs, [[0, 1, 2], [0, 2, 3], [-1, -1, -1]])
    assert mesh.material_names == ("skin", "eye")
    np.testing.assert_array_equal(mesh.triangle_materials, [0, 0, 1])
    np.testing.assert_array_equal(read_obj_positions(obj)[3], [0, 1, 0])


@pytest.mark.parametrize("body, complaint", [
    ("v 0 0 0\nv 1 0 0\nf 1 2 3\n", "refers to vertex 3"),
    ("v 0 0 zero\nf 1 1 1\n", "not a number"),
    ("v 0 0 0\nv 1 0 0\nv 0 1 0\nf -3 -2 -1\n", "negative"),
    ("vt 0 0\n", "no vertices"),
])
def test_obj_reader_names_the_file_of_a_broken_obj(tmp_path: Path, body: str, complaint: str) -> None:
    obj = tmp_path / "broken.obj"
    obj.write_text(body)
    with pytest.raises(InputError, match=complaint) as raised:
        read_obj_mesh(obj)
    assert str(obj) in str(raised.value)


def test_a_vertex_on_a_uv_seam_becomes_one_render_vertex_per_uv(tmp_path: Path) -> None:
    obj = tmp_path / "seam.obj"
    obj.write_text("v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 9 9 9\nvt 0 0\nvt 1 0\nvt 1 1\nvt 0 1\nvt 0.5 0.5\n"
                   "f 1/1 2/2 3/3\nf 1/5 3/3 4/4\nf 4/4 3/3 5/1\n")
    triangles, sources, uvs, kept_triangles = split_uv_seams(read_obj_mesh(obj), np.arange(4))
    np.testing.assert_array_equal(kept_triangles, [True, True, False])  # vertex 5 is not kept
    assert len(triangles) == 2 and len(sources) == 5  # vertex 1 has two UVs (1 and 5): two render vertices
    np.testing.assert_array_equal(np.sort(sources), [0, 0, 1, 2, 3])
    corner_uvs = uvs[triangles]
    np.testing.assert_array_equal(corner_uvs[1, 0], [0.5, 0.5])
    np.testing.assert_array_equal(corner_uvs[0, 0], [0.0, 0.0])
    np.testing.assert_array_equal(sources[triangles], [[0, 1, 2], [0, 2, 3]])


def tiny_model() -> FaceModel:
    """Two triangles, two expressions, one identity mode: exporter and asset tests that need no archive."""
    neutral = np.array([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=np.float32)
    return FaceModel(
        neutral=neutral, expression_names=("jawOpen", "mouthFunnel"),
        expression_deltas=np.array([np.full((4, 3), 0.25), np.eye(4, 3)], dtype=np.float16),
        identity_deltas=np.full((1, 4, 3), -0.5, dtype=np.float16), part_names=("face", "teeth_upper"),
        vertex_parts=np.array([0, 0, 0, 1], dtype=np.uint8), source_vertices=np.arange(4, dtype=np.int32),
        landmarks=np.array([0, 2], dtype=np.int32), triangles=np.array([[0, 1, 2], [3, 0, 2]], dtype=np.int32),
        render_sources=np.arange(4, dtype=np.int32), render_uvs=np.array([[0, 0], [1, 0], [1, 1], [0, 1]], "f4"),
        material_names=("M_Face",), triangle_materials=np.zeros(2, dtype=np.int16),
        metadata={"units": "centimetres", "source": "test", "licence": "MIT"})


def test_asset_round_trip_and_morphing(tmp_path: Path) -> None:
    model = tiny_model()
    path = tmp_path / "tiny.npz"
    model.save(path)
    loaded = FaceModel.load(path)
    assert loaded.expression_names == model.expression_names and loaded.metadata == model.metadata
    np.testing.assert_array_equal(loaded.expression_deltas, model.expression_deltas)
    moved = loaded.vertices(np.array([1.0, 0.0]), np.array([1.0]))
    np.testing.assert_allclose(moved, model.neutral - 0.25)
    np.testing.assert_array_equal(loaded.part_mask("teeth_upper"), [False, False, False, True])


def test_a_file_that_is_not_an_asset_is_an_input_error_naming_it(tmp_path: Path) -> None:
    bad = tmp_path / "not-an-asset.npz"
    bad.write_bytes(b"hello")
    for path in (bad, tmp_path / "missing.npz"):
        with pytest.raises(InputError, match=path.name):
            FaceModel.load(path)


def test_glb_export_of_a_small_model(tmp_path: Path) -> None:
    model = tiny_model()
    out = tmp_path / "tiny.glb"
    summary = export_glb(model, out)
    assert summary.targets == 2 and summary.primitives == 2 and summary.size == out.stat().st_size
    assert_glb_matches(out, model)
    gltf = pygltflib.GLTF2().load(str(out))
    assert gltf.nodes[0].scale == [0.01, 0.01, 0.01]  # centimetres to glTF's metres
    assert [material.name for material in gltf.materials] == ["skin", "teeth"]


def test_the_shipped_asset_loads_with_its_licence() -> None:
    assert SHIPPED_ASSET.stat().st_size <= ASSET_LIMIT
    licence = SHIPPED_ASSET.with_name("ICT-FaceKit-LICENSE.txt").read_text()
    assert "MIT" in licence or "Permission is hereby granted" in licence
    model = FaceModel.load(SHIPPED_ASSET)
    assert len(model.expression_names) == 53
    assert {"jawOpen", "mouthFunnel", "eyeBlink_L"} <= set(model.expression_names)
    assert model.expression_deltas.dtype == np.float16 and model.identity_deltas.dtype == np.float16
    assert model.neutral.dtype == np.float32
    assert model.part_names == tuple(part.name for part in KEPT_PARTS)
    np.testing.assert_array_equal(model.source_vertices[model.landmarks], LANDMARKS_68)
    assert model.metadata["licence"] == "MIT"


@pytest.mark.slow
def test_neutral_plus_jaw_open_reproduces_jaw_open_obj(facekit: Path, imported: FaceModel) -> None:
    folder = facekit / "FaceXModel"
    names = json.loads((folder / "vertex_indices.json").read_text())["expressions"]
    assert imported.expression_names == tuple(names) and len(names) == 53
    assert len(imported.identity_deltas) == 50
    kept = imported.source_vertices
    neutral = plain_obj_vertices(folder / "generic_neutral_mesh.obj")[kept]
    target = plain_obj_vertices(folder / "jawOpen.obj")[kept]
    np.testing.assert_allclose(imported.neutral, neutral, rtol=2**-23, atol=0)
    weights = np.zeros(len(names))
    weights[imported.expression_index("jawOpen")] = 1.0
    error = np.abs(imported.vertices(weights).astype(np.float64) - target)
    allowed = np.abs(target - neutral) * FLOAT16_STEP + np.abs(target) * 2**-22 + 1e-7
    assert (error <= allowed).all(), f"off by up to {(error - allowed).max():.3g} more than float16 allows"
    assert np.abs(target - neutral).max() > 0.5  # the jaw really moves (centimetres)
    identity = plain_obj_vertices(folder / "identity007.obj")[kept]
    np.testing.assert_allclose(imported.identity_deltas[7].astype(np.float64), identity - neutral,
                               rtol=FLOAT16_STEP, atol=1e-7)


@pytest.mark.slow
def test_the_import_keeps_the_named_parts_triangulated_with_their_uvs(facekit: Path, imported: FaceModel) -> None:
    mesh = read_obj_mesh(facekit / "FaceXModel" / "generic_neutral_mesh.obj")
    assert imported.vertex_count == 24_591 and imported.source_vertices.max() == 24_590
    for code, part in enumerate(KEPT_PARTS):
        assert (imported.vertex_parts[part.first:part.last + 1] == code).all()
    kept_source = mesh.triangles[(mesh.triangles < imported.vertex_count).all(axis=1)]
    assert len(imported.triangles) == len(kept_source)
    assert imported.metadata["dropped_crossing_triangles"] == 0
    # every triangle corner keeps the position and the UV the OBJ gives it
    kept = (mesh.triangles < imported.vertex_count).all(axis=1)
    corner_sources = imported.source_vertices[imported.render_sources[imported.triangles]]
    np.testing.assert_array_equal(corner_sources, mesh.triangles[kept])
    np.testing.assert_array_equal(imported.render_uvs[imported.triangles],
                                  mesh.uvs[mesh.triangle_uvs[kept]].astype(np.float32))
    assert imported.render_vertex_count > imported.vertex_count  # UV seams were split
    np.testing.assert_array_equal(imported.source_vertices[imported.landmarks], LANDMARKS_68)


def broken_copy(facekit: Path, root: Path, *, drop: str = "", replace: dict[str, str] | None = None) -> Path:
    """A copy of the folder made of links to the real files, less ``drop``, with ``replace``'s files written."""
    copy = root / "ict-facekit"
    (copy / "FaceXModel").mkdir(parents=True)
    for path in facekit.rglob("*"):
        relative = path.relative_to(facekit)
        if path.is_file() and str(relative) != drop and str(relative) not in (replace or {}):
            (copy / relative).parent.mkdir(parents=True, exist_ok=True)
            (copy / relative).symlink_to(path)
    for relative, text in (replace or {}).items():
        (copy / relative).write_text(text)
    return copy


BROKEN_CASES = ("missing neutral", "missing expression", "expression with other vertices", "bad json",
                "identity gap")


@pytest.fixture(scope="module")
def broken_folders(facekit: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    """Each broken case: the folder, and the file its error must name."""
    first = json.loads((facekit / "FaceXModel" / "vertex_indices.json").read_text())["expressions"][0]
    changes = {
        "missing neutral": ({"drop": "FaceXModel/generic_neutral_mesh.obj"}, "generic_neutral_mesh.obj"),
        "missing expression": ({"drop": "FaceXModel/jawOpen.obj"}, "jawOpen.obj"),
        "expression with other vertices": (
            {"replace": {f"FaceXModel/{first}.obj": "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"}}, f"{first}.obj"),
        "bad json": ({"replace": {"FaceXModel/vertex_indices.json": '{"expressions": ["jawOpen",'}},
                     "vertex_indices.json"),
        "identity gap": ({"drop": "FaceXModel/identity003.obj"}, "identity003.obj"),
    }
    root = tmp_path_factory.mktemp("broken")
    return {case: (broken_copy(facekit, root / case.replace(" ", "-"), **change), named)
            for case, (change, named) in changes.items()}


@pytest.mark.slow
@pytest.mark.parametrize("case", BROKEN_CASES)
def test_a_broken_folder_is_an_input_error_naming_the_file(broken_folders: dict[str, tuple[Path, str]],
                                                           case: str) -> None:
    folder, named = broken_folders[case]
    with pytest.raises(InputError) as raised:
        import_face_model(folder)
    assert named in str(raised.value)


@pytest.mark.slow
def test_cli_import_of_a_broken_folder_is_one_clear_message(broken_folders: dict[str, tuple[Path, str]],
                                                            tmp_path: Path) -> None:
    result = run_cli("import", broken_folders["missing expression"][0], "--out", tmp_path / "x.npz", cwd=tmp_path)
    assert result.returncode != 0
    assert "error:" in result.stderr and "jawOpen.obj" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.slow
def test_cli_import_then_export_glb(facekit: Path, imported: FaceModel, tmp_path: Path) -> None:
    asset = tmp_path / "head.npz"
    result = run_cli("import", facekit, "--out", asset, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "53" in result.stderr and "Traceback" not in result.stderr
    from_cli = FaceModel.load(asset)
    for key in ("neutral", "expression_deltas", "identity_deltas", "triangles", "render_sources", "render_uvs"):
        np.testing.assert_array_equal(getattr(from_cli, key), getattr(imported, key), err_msg=key)
    glb = tmp_path / "head.glb"
    result = run_cli("export-glb", glb, "--asset", asset, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_glb_matches(glb, imported)


@pytest.mark.slow
def test_cli_export_glb_of_the_shipped_asset(tmp_path: Path) -> None:
    glb = tmp_path / "out" / "head.glb"
    result = run_cli("export-glb", glb, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert_glb_matches(glb, FaceModel.load(SHIPPED_ASSET))
    gltf = pygltflib.GLTF2().load(str(glb))
    assert [material.name for material in gltf.materials] == ["skin", "mouth", "teeth", "iris", "sclera"]
    sparse = tmp_path / "out" / "sparse.glb"
    result = run_cli("export-glb", sparse, "--sparse", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    stored = pygltflib.GLTF2().load(str(sparse))
    targets = stored.meshes[0].primitives[0].targets
    assert len(targets) == 53 and all(stored.accessors[target["POSITION"]].sparse is not None for target in targets)
    assert sparse.stat().st_size < 0.5 * glb.stat().st_size


@pytest.mark.slow
def test_the_shipped_asset_is_the_importers_output_from_the_archive(imported: FaceModel) -> None:
    shipped = FaceModel.load(SHIPPED_ASSET)
    modes = len(shipped.identity_deltas)
    assert 0 < modes <= len(imported.identity_deltas)
    np.testing.assert_array_equal(shipped.identity_deltas, imported.identity_deltas[:modes])
    for key in ("neutral", "expression_deltas", "triangles", "render_sources", "render_uvs", "vertex_parts",
                "landmarks", "source_vertices"):
        np.testing.assert_array_equal(getattr(shipped, key), getattr(imported, key), err_msg=key)
    assert shipped.expression_names == imported.expression_names

