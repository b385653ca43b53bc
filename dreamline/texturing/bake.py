"""Baking generated views onto a mesh: per-vertex colours from every view that sees the vertex.

A vertex takes the colour under its projection in each view where it is visible (inside
the frame, in front of the camera, and not occluded: the view's depth there agrees with
the vertex's within `depth_tol`), weighted by how squarely the view sees the surface
(cos^2 of the angle between the vertex normal and the direction to the camera), so grazing
views, whose pixels smear the surface, count least. Vertices no view sees get the average
of their coloured neighbours, spreading over the mesh's edges.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dreamline.rendering.cameras import Camera
from dreamline.rendering.reprojection import project


@dataclass
class Baked:
    colours: np.ndarray      # (V, 3) in [0, 1]
    seen: np.ndarray         # (V,) bool: coloured from at least one view
    views_per_vertex: np.ndarray   # (V,) int

    @property
    def coverage(self) -> float:
        return float(self.seen.mean()) if len(self.seen) else 0.0


def _bilinear(image: np.ndarray, depth: np.ndarray, u: np.ndarray, v: np.ndarray, z: np.ndarray,
              depth_tol: float) -> np.ndarray:
    """Bilinear colour at (u, v) from the taps that show the same surface (depth within
    `depth_tol` of z), weights renormalised: a silhouette never blends in the background,
    nor an edge the surface behind it."""
    h, w = image.shape[:2]
    fu, fv = np.clip(u - 0.5, 0, w - 1), np.clip(v - 0.5, 0, h - 1)
    x0, y0 = np.floor(fu).astype(np.int64), np.floor(fv).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    ax, ay = fu - x0, fv - y0
    acc, total = 0.0, 0.0
    for xs, ys, wgt in ((x0, y0, (1 - ax) * (1 - ay)), (x1, y0, ax * (1 - ay)),
                        (x0, y1, (1 - ax) * ay), (x1, y1, ax * ay)):
        d = depth[ys, xs]
        wgt = np.where((d > 0) & (np.abs(d - z) <= depth_tol), wgt, 0.0)
        acc = acc + wgt[:, None] * image[ys, xs]
        total = total + wgt
    return acc / np.maximum(total, 1e-12)[:, None]


def bake_vertex_colours(vertices: np.ndarray, normals: np.ndarray, faces: np.ndarray, images: np.ndarray,
                        depths: np.ndarray, cameras: list[Camera], depth_tol: float,
                        fill_iterations: int = 64) -> Baked:
    """Colours for `vertices` (V, 3) with unit `normals` from `images` (N, H, W, 3) in [0, 1]
    seen through `cameras` with the mesh's own `depths` (N, H, W)."""
    vertices, normals = np.asarray(vertices, np.float64), np.asarray(normals, np.float64)
    images, depths = np.asarray(images, np.float64), np.asarray(depths, np.float64)
    if not (len(images) == len(depths) == len(cameras)):
        raise ValueError(f"{len(images)} images, {len(depths)} depth maps, {len(cameras)} cameras")
    total = np.zeros((len(vertices), 3))
    weight = np.zeros(len(vertices))
    count = np.zeros(len(vertices), dtype=np.int64)
    for image, depth, cam in zip(images, depths, cameras):
        h, w = depth.shape
        cam = cam.resized(w, h)
        if image.shape[:2] != (h, w):
            raise ValueError(f"image {image.shape[:2]} and depth {depth.shape} sizes differ")
        uv, z = project(vertices, cam)
        u, v = uv[:, 0], uv[:, 1]
        ok = np.isfinite(u) & np.isfinite(v) & (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        cu = np.clip(np.nan_to_num(u), 0, w - 1e-6).astype(np.int64)
        cv = np.clip(np.nan_to_num(v), 0, h - 1e-6).astype(np.int64)
        seen_depth = depth[cv, cu]
        ok &= (seen_depth > 0) & (np.abs(seen_depth - z) <= depth_tol)
        to_cam = cam.c2w[:3, 3] - vertices
        to_cam /= np.linalg.norm(to_cam, axis=1, keepdims=True)
        cos = np.clip(np.sum(normals * to_cam, axis=1), 0.0, 1.0)
        wgt = np.where(ok, cos ** 2, 0.0)
        if ok.any():
            total[ok] += wgt[ok, None] * _bilinear(image, depth, u[ok], v[ok], z[ok], depth_tol)
        weight += wgt
        count += (wgt > 0)
    seen = weight > 1e-8
    colours = np.where(seen[:, None], total / np.maximum(weight, 1e-8)[:, None], 0.0)
    colours = _fill_unseen(colours, seen, np.asarray(faces, np.int64), fill_iterations)
    return Baked(np.clip(colours, 0.0, 1.0), seen, count)


def _fill_unseen(colours: np.ndarray, seen: np.ndarray, faces: np.ndarray, iterations: int) -> np.ndarray:
    """Unseen vertices take the mean of coloured neighbours, front by front; what stays
    unreached (a part no edge connects to a seen vertex) gets the mean seen colour."""
    if seen.all() or not seen.any():
        return colours if seen.any() else np.full_like(colours, 0.5)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    known = seen.copy()
    out = colours.copy()
    for _ in range(iterations):
        src, dst = edges[:, 0], edges[:, 1]
        use = known[src] & ~known[dst]
        if not use.any():
            break
        acc = np.zeros_like(out)
        n = np.zeros(len(out))
        np.add.at(acc, dst[use], out[src[use]])
        np.add.at(n, dst[use], 1)
        new = n > 0
        out[new] = acc[new] / n[new, None]
        known |= new
    out[~known] = colours[seen].mean(0)
    return out
