"""Geometry checks and normalisation of one object (pure: bytes in, verdict + bytes out).

Checks run in a fixed order and the first failure is the reject reason: the file parses,
it has triangles (not a point cloud, not empty), vertices are finite, faces are not mostly
degenerate, the object is not a flat card, and it is one object rather than a scene of
several. A kept object is centred at the origin and scaled so the longest side of its tight
bounding box is `target_size`.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import trimesh

from dreamline.config import GeometryParams
from dreamline.sources.procedural import PALETTE, SECONDARY

# Components beyond this many are not clustered pairwise (cost is quadratic); the largest
# ones decide whether the object is a scene.
MAX_COMPONENTS_CLUSTERED = 2048

_COLOUR_NAMES = list(PALETTE) + ["grey", "brown"]
_COLOUR_RGB = np.array([PALETTE[c] for c in PALETTE] + [SECONDARY["grey"], SECONDARY["brown"]], float)


@dataclass
class GeometryVerdict:
    reason: str | None
    detail: str = ""
    stats: dict[str, Any] = field(default_factory=dict)
    glb: bytes | None = None  # normalised object, kept objects only


def parse_glb(data: bytes) -> trimesh.Scene:
    return trimesh.load(io.BytesIO(data), file_type="glb", force="scene", process=False)


def _union_find_clusters(lo: np.ndarray, hi: np.ndarray, grow: float) -> np.ndarray:
    """Cluster axis-aligned boxes that overlap once grown by `grow`; returns labels."""
    n = len(lo)
    lo, hi = lo - grow, hi + grow
    overlap = np.all((lo[:, None, :] <= hi[None, :, :]) & (lo[None, :, :] <= hi[:, None, :]), axis=2)
    labels = np.arange(n)
    changed = True
    while changed:  # label propagation to the smallest connected index
        new = np.where(overlap, labels[None, :], n).min(axis=1)
        new = np.minimum(new, labels)
        changed = bool((new != labels).any())
        labels = new[new]
    return labels


def component_boxes(mesh: trimesh.Trimesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Bounding boxes of connected components (vertices welded by position first)."""
    v = mesh.vertices
    extent = float(np.ptp(v, axis=0).max()) or 1.0
    key = np.round(v / (extent * 1e-6)).astype(np.int64)
    _, weld = np.unique(key, axis=0, return_inverse=True)
    faces = weld.reshape(-1)[mesh.faces]
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    n_nodes = int(weld.max()) + 1
    labels = trimesh.graph.connected_component_labels(edges, node_count=n_nodes)
    face_label = labels[faces[:, 0]]
    counts = np.bincount(face_label)
    order = np.argsort(-counts)[: MAX_COMPONENTS_CLUSTERED]
    order = order[counts[order] > 0]
    tri = mesh.vertices[mesh.faces]  # (F, 3, 3)
    lo = np.full((len(counts), 3), np.inf)
    hi = np.full((len(counts), 3), -np.inf)
    np.minimum.at(lo, face_label, tri.min(axis=1))
    np.maximum.at(hi, face_label, tri.max(axis=1))
    return lo[order], hi[order], counts[order]


def dominant_colour(mesh: trimesh.Trimesh) -> str | None:
    """Area-weighted nearest named colour of the faces, if the mesh has colours."""
    visual = mesh.visual
    if getattr(visual, "kind", None) not in ("vertex", "face"):
        return None
    fc = np.asarray(visual.face_colors, float)[:, :3]
    nearest = np.argmin(((fc[:, None, :] - _COLOUR_RGB[None]) ** 2).sum(-1), axis=1)
    weight = np.bincount(nearest, weights=mesh.area_faces, minlength=len(_COLOUR_NAMES))
    return _COLOUR_NAMES[int(np.argmax(weight))]


def check_and_normalise(data: bytes, p: GeometryParams) -> GeometryVerdict:
    try:
        scene = parse_glb(data)
    except Exception as err:  # any parser failure is the file's fault, not the run's
        return GeometryVerdict("corrupt_file", f"{type(err).__name__}: {err}"[:200])

    geoms = scene.dump()
    meshes = [g for g in geoms if isinstance(g, trimesh.Trimesh) and len(g.faces) > 0]
    if not meshes:
        has_points = any(isinstance(g, trimesh.PointCloud) and len(g.vertices) for g in geoms)
        return GeometryVerdict("point_cloud" if has_points else "empty_mesh")
    mesh = meshes[0] if len(meshes) == 1 else trimesh.util.concatenate(meshes)
    stats: dict[str, Any] = {"n_faces": int(len(mesh.faces)), "n_vertices": int(len(mesh.vertices))}

    if not np.isfinite(mesh.vertices).all():
        stats["n_non_finite"] = int((~np.isfinite(mesh.vertices)).any(axis=1).sum())
        return GeometryVerdict("non_finite_vertices", stats=stats)
    if len(mesh.faces) < p.min_faces:
        return GeometryVerdict("too_few_faces", stats=stats)

    lo, hi = mesh.vertices.min(axis=0), mesh.vertices.max(axis=0)
    extents = hi - lo
    longest = float(extents.max())
    stats.update({f"extent_{a}": float(e) for a, e in zip("xyz", extents)})
    if longest <= 0:
        return GeometryVerdict("degenerate_mesh", "zero-size bounding box", stats)
    degenerate = float((mesh.area_faces <= (longest ** 2) * 1e-12).mean())
    stats["degenerate_fraction"] = degenerate
    if degenerate > p.max_degenerate_fraction:
        return GeometryVerdict("degenerate_mesh", f"{degenerate:.0%} zero-area faces", stats)
    thickness = float(extents.min() / longest)
    stats["thickness_ratio"] = thickness
    if thickness < p.min_thickness_ratio:
        return GeometryVerdict("too_thin", f"thinnest side {thickness:.4f} of the longest", stats)

    clo, chi, counts = component_boxes(mesh)
    labels = _union_find_clusters(clo, chi, p.scene_gap * longest)
    stats["n_components"] = int(len(counts))
    big = []
    for lab in np.unique(labels):
        members = labels == lab
        size = float((chi[members].max(axis=0) - clo[members].min(axis=0)).max())
        big.append(size)
    big = sorted(big, reverse=True)
    stats["n_clusters"] = len(big)
    if len(big) > 1 and big[1] > p.scene_min_cluster_size * longest:
        return GeometryVerdict("multi_object_scene",
                               f"{len(big)} separate clusters, second spans {big[1] / longest:.0%}", stats)

    centre = (lo + hi) / 2.0
    scale = p.target_size / longest
    out = mesh.copy()
    out.apply_translation(-centre)
    out.apply_scale(scale)
    stats["scale"] = scale
    stats["colour"] = dominant_colour(mesh)
    glb = trimesh.exchange.gltf.export_glb(trimesh.Scene(out))
    return GeometryVerdict(None, stats=stats, glb=glb)
