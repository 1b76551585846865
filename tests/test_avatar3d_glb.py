"""The shipped head as the /avatar3d page gets it: a glb whose 53 morph targets are sparse accessors, with the
same data as the dense export wherever an expression moves a vertex by more than 0.01 mm."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pygltflib
import pytest

from anchorcast_plugins.engines.face3d.asset import SHIPPED_ASSET, FaceModel
from anchorcast_plugins.engines.face3d.gltf_export import SPARSE_MIN_DELTA_M, export_glb


def read_view(gltf: pygltflib.GLTF2, view_index: int, dtype: type, count: int, width: int) -> np.ndarray:
    view = gltf.bufferViews[view_index]
    return np.frombuffer(gltf.binary_blob(), dtype=dtype, count=count * width,
                         offset=view.byteOffset or 0).reshape(count, width)


def target_values(gltf: pygltflib.GLTF2, index: int) -> np.ndarray:
    """A morph target as a reader sees it: the dense data, or zeros with the sparse rows substituted."""
    accessor = gltf.accessors[index]
    if accessor.bufferView is not None:
        return read_view(gltf, accessor.bufferView, np.float32, accessor.count, 3)
    values = np.zeros((accessor.count, 3), np.float32)
    if accessor.sparse is not None:
        kind = {pygltflib.UNSIGNED_SHORT: np.uint16, pygltflib.UNSIGNED_INT: np.uint32}[
            accessor.sparse.indices.componentType]
        rows = read_view(gltf, accessor.sparse.indices.bufferView, kind, accessor.sparse.count, 1)[:, 0]
        values[rows] = read_view(gltf, accessor.sparse.values.bufferView, np.float32, accessor.sparse.count, 3)
    return values


@pytest.fixture(scope="module")
def model() -> FaceModel:
    return FaceModel.load(SHIPPED_ASSET)


def test_sparse_targets_hold_what_the_dense_ones_hold_in_a_third_of_the_size(model: FaceModel,
                                                                             tmp_path: Path) -> None:
    dense = export_glb(model, tmp_path / "dense.glb")
    sparse = export_glb(model, tmp_path / "sparse.glb", sparse=True)
    assert sparse.targets == dense.targets == 53
    assert sparse.size < 0.4 * dense.size, (sparse.size, dense.size)

    gltf = pygltflib.GLTF2().load(str(tmp_path / "sparse.glb"))
    (mesh,) = gltf.meshes
    assert mesh.extras["targetNames"] == list(model.expression_names)
    threshold = SPARSE_MIN_DELTA_M / gltf.nodes[0].scale[0]  # in the model's units
    for k, target in enumerate(mesh.primitives[0].targets):
        index = target["POSITION"] if isinstance(target, dict) else target.POSITION
        accessor = gltf.accessors[index]
        assert accessor.bufferView is None and accessor.sparse is not None  # every expression moves something
        got = target_values(gltf, index)
        want = model.expression_deltas[k][model.render_sources].astype(np.float32)
        kept = np.abs(want).max(axis=1) > threshold
        np.testing.assert_array_equal(got[kept], want[kept])
        assert np.abs(got[~kept]).max(initial=0.0) == 0.0 and np.abs(want[~kept]).max(initial=0.0) <= threshold
        assert np.all(np.asarray(accessor.min) <= got.min(axis=0))
        assert np.all(np.asarray(accessor.max) >= got.max(axis=0))
    jaw = mesh.primitives[0].targets[model.expression_names.index("jawOpen")]
    moved = gltf.accessors[jaw["POSITION"] if isinstance(jaw, dict) else jaw.POSITION].sparse.count
    assert 0.05 * model.render_vertex_count < moved < 0.6 * model.render_vertex_count
