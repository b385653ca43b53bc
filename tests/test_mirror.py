"""The mirror is a real objaverse cache: the package's API reads it with no network."""
import gzip
import json
import socket

import objaverse
import pytest
import trimesh

from dreamline.config import MirrorParams
from dreamline.sources import objaverse_reader as ov
from dreamline.sources.mirror import N_SHARDS, build_mirror, write_annotation_only

from conftest import write_test_meshes

RECORD_KEYS = {"uri", "uid", "name", "tags", "categories", "license", "faceCount", "vertexCount",
               "animationCount", "description", "isAgeRestricted", "archives", "viewerUrl",
               "thumbnails", "user", "publishedAt"}


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mirror")
    write_test_meshes(tmp / "meshes", ["bunny00.off", "cow.off"])
    p = MirrorParams(instances_per_category=2, packaged_meshes=2, packaged_meshes_dir=str(tmp / "meshes"))
    summary = build_mirror(p, tmp / "root")
    return tmp / "root", p, summary


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_objaverse_api_reads_the_mirror_offline(mirror, no_network):
    root, p, summary = mirror
    ov.use_objaverse_root(root)
    uids = objaverse.load_uids()
    assert len(uids) == summary["objects"] == 12 * 2 + 2 + 15
    everything = objaverse.load_annotations()  # reads all 160 shards, downloads none
    assert set(everything) == set(uids)
    some = objaverse.load_annotations(uids[:5])
    assert set(some) == set(uids[:5])
    for r in some.values():
        assert RECORD_KEYS <= set(r)
        assert len(r["uid"]) == 32 and all(c in "0123456789abcdef" for c in r["uid"])
        assert all({"name", "slug"} <= set(t) for t in r["tags"] + r["categories"])
    manifest = json.loads((root / "dreamline-manifest.json").read_text())
    present = [u for u in uids if manifest[u]["kind"] != "missing_file"]
    paths = objaverse.load_objects(present[:10])
    assert len(paths) == 10
    for path in paths.values():
        assert trimesh.load(path, force="scene") is not None
    lvis = objaverse.load_lvis_annotations()
    assert {"chair", "mug", "snowman", "rabbit", "cow"} <= set(lvis)
    assert len(list((root / "hf-objaverse-v1/metadata").glob("*.json.gz"))) == N_SHARDS


def test_procedural_objects_are_canonically_oriented(mirror):
    root, p, _ = mirror
    manifest = json.loads((root / "dreamline-manifest.json").read_text())
    ov.use_objaverse_root(root)
    for uid, m in manifest.items():
        if m["source"] != "procedural" or m["category"] not in ("chair", "tree", "snowman", "lamp"):
            continue
        mesh = trimesh.load(ov.load_object(uid), force="mesh")
        ext = mesh.extents
        # Upright things are taller (Y) than deep, and stand on y >= 0.
        assert ext[1] >= 0.8 * ext[2], (m["category"], ext)
        assert mesh.bounds[0][1] > -0.05


def test_mirror_is_deterministic_and_incremental(mirror, tmp_path):
    root, p, _ = mirror
    again = build_mirror(p, root)
    assert again["glbs_written"] == 0, "rebuilding with the same params rewrites nothing"
    other = tmp_path / "other"
    build_mirror(p, other)
    for f in sorted((root / "hf-objaverse-v1").rglob("*.*")):
        rel = f.relative_to(root)
        assert (other / rel).read_bytes() == f.read_bytes(), rel
    bigger = p.model_copy(update={"instances_per_category": 3})
    s = build_mirror(bigger, other)
    assert s["glbs_written"] == 12


def test_annotation_only_mirror(tmp_path, no_network):
    write_annotation_only(tmp_path, 3000, seed=1)
    ov.use_objaverse_root(tmp_path)
    uids = objaverse.load_uids()
    assert len(uids) == 3000
    shards = list(ov.iter_annotation_shards(uids))
    assert sum(len(s) for s in shards) == 3000
    raw = json.loads(gzip.decompress((tmp_path / "hf-objaverse-v1/object-paths.json.gz").read_bytes()))
    assert not (tmp_path / "hf-objaverse-v1" / raw[uids[0]]).exists()


def test_parallel_candidate_loading_matches_serial(tmp_path, monkeypatch):
    from dreamline.curation import candidates

    write_annotation_only(tmp_path, 2000, seed=2)
    serial = candidates.load_candidates(tmp_path, workers=1)
    monkeypatch.setattr(candidates, "PARALLEL_LOAD_MIN", 100)
    parallel = candidates.load_candidates(tmp_path, workers=2)
    key = [("uid", "ascending")]
    assert serial.sort_by(key).equals(parallel.sort_by(key))
    assert serial.num_rows == 2000
