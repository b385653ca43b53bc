import numpy as np
import pytest
import trimesh

from dreamline.config import GeometryParams
from dreamline.curation.geometry import check_and_normalise, parse_glb
from dreamline.sources.junk import JUNK_KINDS
from dreamline.sources.procedural import CATEGORY_BUILDERS, build_object

P = GeometryParams()


def glb(mesh) -> bytes:
    return trimesh.exchange.gltf.export_glb(trimesh.Scene(mesh))


@pytest.mark.parametrize("category", sorted(CATEGORY_BUILDERS))
def test_every_category_passes_and_is_normalised(category):
    for seed in range(4):  # part-based objects must not look like multi-object scenes
        obj = build_object(category, np.random.default_rng(seed))
        obj.mesh.apply_scale(3.7)
        obj.mesh.apply_translation((10, -4, 2))
        v = check_and_normalise(glb(obj.mesh), P)
        assert v.reason is None, (category, seed, v.reason, v.detail)
        out = parse_glb(v.glb).to_geometry()
        lo, hi = out.bounds
        assert np.isclose((hi - lo).max(), 1.0, atol=1e-6)
        assert np.allclose((hi + lo) / 2, 0, atol=1e-6)
        assert v.stats["colour"] == obj.colour or category in ("lamp", "car", "rocket")


GEOMETRY_KINDS = {k: f for k, f in JUNK_KINDS.items()
                  if f(np.random.default_rng(0)).expected_reason in
                  {"point_cloud", "empty_mesh", "degenerate_mesh", "non_finite_vertices",
                   "corrupt_file", "multi_object_scene", "too_thin"}}


@pytest.mark.parametrize("kind", sorted(GEOMETRY_KINDS))
def test_geometry_junk_gets_its_reason(kind):
    junk = JUNK_KINDS[kind](np.random.default_rng(3))
    v = check_and_normalise(junk.glb, P)
    assert v.reason == junk.expected_reason and v.glb is None


def test_garbage_bytes_and_target_size():
    assert check_and_normalise(b"", P).reason == "corrupt_file"
    assert check_and_normalise(b"glTF\x02\x00\x00\x00garbage", P).reason == "corrupt_file"
    box = trimesh.creation.box(extents=(2, 4, 1)).subdivide()
    v = check_and_normalise(glb(box), GeometryParams(target_size=2.0))
    assert np.isclose(parse_glb(v.glb).to_geometry().extents.max(), 2.0)


def test_scene_threshold_is_a_parameter():
    junk = JUNK_KINDS["multi_object_scene"](np.random.default_rng(0))
    assert check_and_normalise(junk.glb, GeometryParams(scene_gap=1.0)).reason is None
