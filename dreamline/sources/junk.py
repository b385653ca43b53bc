"""The junk a real Objaverse dump contains, each kind with the reject reason curation owes it.

A junk object is otherwise an ordinary object, so exactly one thing is wrong with it and
the reason curation records is unambiguous.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import trimesh

from dreamline.sources.procedural import build_object, paint, colour_rgba


@dataclass
class Junk:
    kind: str
    expected_reason: str
    name: str
    glb: bytes | None  # None: the file is missing from the mirror
    record_overrides: dict = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    category: str = "shape"
    face_count: int | None = None  # what the record claims, when it differs from the file


def _glb(mesh_or_scene) -> bytes:
    return trimesh.exchange.gltf.export_glb(
        mesh_or_scene if isinstance(mesh_or_scene, trimesh.Scene) else trimesh.Scene(mesh_or_scene)
    )


def _ok_object(rng, category="chair"):
    return build_object(category, rng)


def point_cloud(rng):
    pts = rng.normal(size=(2000, 3)) * [0.5, 0.3, 0.4]
    cloud = trimesh.PointCloud(pts, colors=np.tile([200, 200, 200, 255], (len(pts), 1)))
    return Junk("point_cloud", "point_cloud", "Statue scan points", _glb(trimesh.Scene(cloud)),
                tags=["statue"], face_count=0)


def blocked_tag(rng):
    obj = _ok_object(rng, "house")
    tag = str(rng.choice(["lowpoly", "photogrammetry", "pointcloud", "scan"]))
    return Junk("blocked_tag", "blocked_tag", "Cottage", _glb(obj.mesh), tags=["house", tag],
                category="house")


def too_few_faces(rng):
    tet = paint(trimesh.creation.box(extents=(1, 1, 1)), colour_rgba("red"))
    return Junk("too_few_faces", "too_few_faces", "Crate", _glb(tet), tags=["crate"])


def too_many_faces(rng):
    obj = _ok_object(rng, "car")
    return Junk("too_many_faces", "too_many_faces", "Sports car hi-res", _glb(obj.mesh),
                tags=["car", "highpoly"], category="car", face_count=5_400_000)


def animated(rng):
    obj = _ok_object(rng, "airplane")
    return Junk("animated", "animated", "Flying plane", _glb(obj.mesh), tags=["airplane"],
                category="airplane", record_overrides={"animationCount": 3})


def age_restricted(rng):
    obj = _ok_object(rng, "bottle")
    return Junk("age_restricted", "age_restricted", "Whiskey bottle", _glb(obj.mesh),
                tags=["bottle", "alcohol"], category="bottle",
                record_overrides={"isAgeRestricted": True})


def bad_license(rng):
    obj = _ok_object(rng, "lamp")
    lic = str(rng.choice(["by-nc", "by-nc-sa", "by-nd", "by-nc-nd"]))
    return Junk("bad_license", "license", "Desk lamp", _glb(obj.mesh), tags=["lamp"],
                category="lamp", record_overrides={"license": lic})


def unreadable_name(rng):
    obj = _ok_object(rng, "mug")
    name = str(rng.choice(["", "   ", "\x00\x07\x1b", "Ã©Ã¨Ã¼Ã¶", "????", "untitled", "model_001"]))
    return Junk("unreadable_name", "unreadable_name", name, _glb(obj.mesh), tags=[],
                category="mug")


def missing_file(rng):
    return Junk("missing_file", "missing_file", "Office chair", None, tags=["chair"],
                category="chair", face_count=1200)


def corrupt_glb(rng):
    good = _glb(_ok_object(rng, "stool").mesh)
    # Valid glTF magic and header, then the JSON chunk cut and overwritten: what an
    # interrupted download looks like.
    body = bytearray(good[: len(good) // 3])
    body[40:120] = rng.integers(0, 256, 80, dtype=np.uint8).tobytes()
    return Junk("corrupt_glb", "corrupt_file", "Bar stool", bytes(body), tags=["stool"],
                category="stool", face_count=800)


def empty_mesh(rng):
    return Junk("empty_mesh", "empty_mesh", "Empty export", _glb(trimesh.Scene()),
                tags=["prop"], face_count=600)


def degenerate_mesh(rng):
    n = 300
    t = rng.uniform(-0.5, 0.5, size=n)
    verts = np.stack([t, 2 * t, -t], axis=1)  # all on one line: every face has zero area
    faces = rng.integers(0, n, size=(200, 3))
    mesh = trimesh.Trimesh(verts, faces, process=False)
    return Junk("degenerate_mesh", "degenerate_mesh", "Broken export", _glb(mesh),
                tags=["prop"], face_count=200)


def nan_vertices(rng):
    mesh = _ok_object(rng, "table").mesh.copy()
    v = mesh.vertices.copy()
    v[rng.choice(len(v), size=max(1, len(v) // 10), replace=False)] = np.nan
    mesh = trimesh.Trimesh(v, mesh.faces, vertex_colors=mesh.visual.vertex_colors, process=False)
    return Junk("nan_vertices", "non_finite_vertices", "Coffee table", _glb(mesh),
                tags=["table"], category="table")


def multi_object_scene(rng):
    meshes = []
    for i, cat in enumerate(["chair", "table", "lamp"]):
        m = _ok_object(rng, cat).mesh
        m.apply_translation((i * 2.5, 0, 0))
        meshes.append(m)
    return Junk("multi_object_scene", "multi_object_scene", "Living room set",
                _glb(trimesh.util.concatenate(meshes)), tags=["furniture", "interior"],
                category="chair")


def flat_card(rng):
    card = paint(trimesh.creation.box(extents=(1.0, 1.4, 0.002)), colour_rgba("white"))
    card = card.subdivide().subdivide().subdivide()
    return Junk("flat_card", "too_thin", "Poster", _glb(card), tags=["poster"])


JUNK_KINDS: dict[str, Callable[[np.random.Generator], Junk]] = {
    f.__name__: f
    for f in (
        point_cloud, blocked_tag, too_few_faces, too_many_faces, animated, age_restricted,
        bad_license, unreadable_name, missing_file, corrupt_glb, empty_mesh,
        degenerate_mesh, nan_vertices, multi_object_scene, flat_card,
    )
}
