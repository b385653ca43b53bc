"""Moving pixels between views through depth: unproject, project, warp, and overlap PSNR.

Conventions are those of dreamline.rendering.cameras: depth is -z_cam (0 = background),
pixel centres sit at (j + 0.5, i + 0.5), u right, v down. Shared by the renderer's tests
and by multi-view consistency evaluation.
"""
from __future__ import annotations

import math

import numpy as np

from dreamline.rendering.cameras import Camera


def pixel_centres(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """(u, v) of every pixel centre, each HxW."""
    return np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)


def unproject(depth: np.ndarray, camera: Camera) -> np.ndarray:
    """HxWx3 world points seen at each pixel centre; NaN where depth is 0 or not finite."""
    depth = np.asarray(depth, dtype=np.float64)
    h, w = depth.shape
    if (w, h) != (camera.width, camera.height):
        raise ValueError(f"depth is {w}x{h}, camera {camera.width}x{camera.height}")
    K = camera.K
    u, v = pixel_centres(w, h)
    x = (u - K[0, 2]) / K[0, 0] * depth
    y = -(v - K[1, 2]) / K[1, 1] * depth
    cam = np.stack([x, y, -depth], axis=-1)
    world = cam @ camera.c2w[:3, :3].T + camera.c2w[:3, 3]
    world[~(np.isfinite(depth) & (depth > 0.0))] = np.nan
    return world


def project(points_world: np.ndarray, camera: Camera) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (..., 2) as (u, v) and depth (...) of world points.

    Pixel (i, j) holds the points with floor(v) == i and floor(u) == j. Points behind the
    camera get depth <= 0 and NaN coordinates.
    """
    pts = np.asarray(points_world, dtype=np.float64)
    w2c = camera.w2c
    cam = pts @ w2c[:3, :3].T + w2c[:3, 3]
    depth = -cam[..., 2]
    K = camera.K
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(depth > 0.0, 1.0 / depth, np.nan)
    u = K[0, 2] + K[0, 0] * cam[..., 0] * inv
    v = K[1, 2] - K[1, 1] * cam[..., 1] * inv
    return np.stack([u, v], axis=-1), depth


def warp(src_image: np.ndarray, src_depth: np.ndarray, src_cam: Camera,
         dst_depth: np.ndarray, dst_cam: Camera, depth_tol: float,
         mode: str = "nearest") -> tuple[np.ndarray, np.ndarray]:
    """Resample the source image into the destination view through geometry.

    Each destination foreground pixel is lifted to world through `dst_depth`, projected
    into the source camera and sampled there. It is valid only where the source also sees
    foreground and the source depth there matches the projected depth within `depth_tol`
    (world units) - i.e. the point is not occluded in the source. With "bilinear" all four
    taps must pass that test, so values never mix surfaces. Invalid pixels are 0.
    """
    if mode not in ("nearest", "bilinear"):
        raise ValueError(f"mode must be 'nearest' or 'bilinear', got {mode!r}")
    src = np.asarray(src_image)
    squeeze = src.ndim == 2
    if squeeze:
        src = src[..., None]
    sh, sw = src.shape[:2]
    if (sw, sh) != (src_cam.width, src_cam.height) or src_depth.shape != (sh, sw):
        raise ValueError("source image, depth and camera sizes disagree")
    src_depth = np.asarray(src_depth, dtype=np.float64)

    world = unproject(dst_depth, dst_cam)
    dst_fg = np.all(np.isfinite(world), axis=-1)
    uv, z = project(np.where(dst_fg[..., None], world, 0.0), src_cam)
    u, v = uv[..., 0], uv[..., 1]
    ok = dst_fg & np.isfinite(u) & np.isfinite(v) & (z > 0.0)
    u = np.where(ok, u, -1.0)
    v = np.where(ok, v, -1.0)

    def tap(ix, iy):
        inside = ok & (ix >= 0) & (ix < sw) & (iy >= 0) & (iy < sh)
        cx, cy = np.clip(ix, 0, sw - 1), np.clip(iy, 0, sh - 1)
        d = src_depth[cy, cx]
        good = inside & (d > 0.0) & (np.abs(d - z) <= depth_tol)
        return src[cy, cx].astype(np.float64), good

    if mode == "nearest":
        out, valid = tap(np.floor(u).astype(np.int64), np.floor(v).astype(np.int64))
    else:
        # Bilinear weights between the four surrounding pixel centres.
        fu, fv = u - 0.5, v - 0.5
        x0, y0 = np.floor(fu).astype(np.int64), np.floor(fv).astype(np.int64)
        ax, ay = (fu - x0)[..., None], (fv - y0)[..., None]
        valid = ok.copy()
        out = 0.0
        for dx, dy, wgt in ((0, 0, (1 - ax) * (1 - ay)), (1, 0, ax * (1 - ay)),
                            (0, 1, (1 - ax) * ay), (1, 1, ax * ay)):
            val, good = tap(x0 + dx, y0 + dy)
            out = out + wgt * val
            valid &= good
    out = np.where(valid[..., None], out, 0.0)
    if np.issubdtype(src.dtype, np.integer):
        out = np.rint(out)
    out = out.astype(src.dtype)
    return (out[..., 0] if squeeze else out), valid


def overlap_psnr(a: np.ndarray, b: np.ndarray, valid: np.ndarray,
                 data_range: float | None = None) -> float:
    """PSNR (dB) of a against b over the pixels where `valid` is set.

    `data_range` defaults to 255 for integer images and 1 otherwise. Identical images give
    inf; an empty overlap is an error rather than a silent number.
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != a.shape[:2]:
        raise ValueError(f"valid mask {valid.shape} does not match image {a.shape[:2]}")
    if not valid.any():
        raise ValueError("no overlapping pixels")
    if data_range is None:
        data_range = 255.0 if np.issubdtype(a.dtype, np.integer) else 1.0
    diff = a[valid].astype(np.float64) - b[valid].astype(np.float64)
    mse = float(np.mean(diff ** 2))
    return math.inf if mse == 0.0 else 10.0 * math.log10(data_range ** 2 / mse)
