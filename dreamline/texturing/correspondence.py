"""Pixel correspondences between posed views through depth (MVDiffusion's depth-to-image case).

For every pixel s of view i and every other view l: the point seen at s (unprojected with
view i's depth) projected into view l gives t^l; it is valid when it lands inside view l,
in front of its camera, and view l's depth there agrees (the point is not occluded in l).
These feed the correspondence-aware attention (dreamline.texturing.caa.py) at each UNet
resolution. The projection maths is the render stage's (dreamline/rendering/reprojection.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from dreamline.rendering.cameras import Camera
from dreamline.rendering.reprojection import project, unproject


@dataclass
class Correspondences:
    """Correspondences of N views at one feature resolution (h, w).

    target: (N, N-1, h, w, 2) float, (u, v) pixel coordinates in view others[i][k] of the
        point seen at each pixel of view i (pixel centres at +0.5); 0 where invalid.
    valid: (N, N-1, h, w) bool.
    others: for view i, the other views in the order of the second axis.
    """
    target: torch.Tensor
    valid: torch.Tensor
    others: list[list[int]]

    @property
    def size(self) -> tuple[int, int]:
        return int(self.valid.shape[2]), int(self.valid.shape[3])


def depth_at(depth: np.ndarray, height: int, width: int) -> np.ndarray:
    """A full-resolution depth map read at the pixel centres of a (height, width) grid
    (nearest sample: a coarser pixel takes the surface under its centre, never a blend of
    foreground and background)."""
    H, W = depth.shape
    rows = np.minimum(((np.arange(height) + 0.5) * H / height).astype(np.int64), H - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * W / width).astype(np.int64), W - 1)
    return np.asarray(depth, dtype=np.float64)[np.ix_(rows, cols)]


def correspondences(depths: list[np.ndarray], cameras: list[Camera], height: int, width: int,
                    depth_tol: float) -> Correspondences:
    """Correspondences between all ordered pairs of views at a (height, width) grid.

    `depths` are the views' depth maps (any resolution, 0 = background) and `cameras` their
    cameras; `depth_tol` (world units) is the occlusion test's tolerance.
    """
    n = len(cameras)
    if len(depths) != n or n < 2:
        raise ValueError(f"need at least 2 views with a depth map each, got {len(depths)} depths, {n} cameras")
    cams = [c.resized(width, height) for c in cameras]
    small = [depth_at(d, height, width) for d in depths]
    target = np.zeros((n, n - 1, height, width, 2), dtype=np.float32)
    valid = np.zeros((n, n - 1, height, width), dtype=bool)
    others = [[l for l in range(n) if l != i] for i in range(n)]
    for i in range(n):
        world = unproject(small[i], cams[i])
        fg = np.all(np.isfinite(world), axis=-1)
        for k, l in enumerate(others[i]):
            uv, z = project(np.where(fg[..., None], world, 0.0), cams[l])
            u, v = uv[..., 0], uv[..., 1]
            inside = fg & np.isfinite(u) & np.isfinite(v) & (z > 0) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
            cu = np.clip(np.nan_to_num(u), 0, width - 1e-6).astype(np.int64)
            cv = np.clip(np.nan_to_num(v), 0, height - 1e-6).astype(np.int64)
            seen = small[l][cv, cu]
            ok = inside & (seen > 0) & (np.abs(seen - z) <= depth_tol)
            valid[i, k] = ok
            target[i, k] = np.where(ok[..., None], np.stack([u, v], axis=-1), 0.0)
    return Correspondences(torch.from_numpy(target), torch.from_numpy(valid), others)
