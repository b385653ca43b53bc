"""3D Gaussian splatting (Kerbl et al. 2023) with a differentiable pure-torch rasteriser.

The torch rasteriser follows the reference CUDA one: EWA splatting of each Gaussian's
projected covariance (plus a 0.3 px^2 low-pass), alpha = opacity * exp(-d^T conic d / 2)
clamped to 0.99 and dropped below 1/255, front-to-back compositing in camera depth order.
It runs on CPU. Instead of the reference's early ray termination it culls per tile of
pixels: a tile only sees the Gaussians whose alpha can reach 1/255 somewhere in it, which
gives exactly the dense (all pixels x all Gaussians) result, only cheaper.

Colours are a single albedo per Gaussian (no spherical harmonics), shaded per camera with
`shade` from base.py; a Gaussian's normal is its shortest axis, turned to face the camera.
On CUDA with gsplat installed, gsplat's rasteriser can be used instead (see `_use_gsplat`).
"""
from __future__ import annotations

import importlib
import math
from pathlib import Path

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from dreamline.representations.configs import GaussianParams
from dreamline.representations.base import (REPRESENTATIONS, BackgroundMLP, Cameras, Lighting,
                                            Representation, RenderOutput, canonical,
                                            shade)

NEAR = 0.01              # Gaussians whose centre is nearer than this (or behind) are dropped
LOW_PASS = 0.3           # px^2 added to the 2D covariance: every splat covers about a pixel
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99         # keeps every 1 - alpha > 0, so transmittance stays invertible
TILE = 8                 # pixels per tile side for culling
CHUNK_PAIRS = 4_000_000  # (pixel, Gaussian) pairs evaluated at once
GRAD_PAIRS = 12_000_000  # beyond this many pairs per render, chunks are recomputed in backward

# Feature channels composited by the torch rasteriser.
RGB, DEPTH, NORMAL, CCM = slice(0, 3), slice(3, 4), slice(4, 7), slice(7, 10)


# ---------------------------------------------------------------------------- geometry

def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """(..., 4) wxyz quaternions (any norm) -> (..., 3, 3) rotation matrices."""
    w, x, y, z = (quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)).unbind(-1)
    rows = [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
            2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
            2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]
    return torch.stack(rows, dim=-1).reshape(quats.shape[:-1] + (3, 3))


def covariance_3d(rot: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """R S S^T R^T for rotations (G, 3, 3) and per-axis standard deviations (G, 3)."""
    m = rot * scales[:, None, :]
    return m @ m.transpose(-1, -2)


def inverse_covariance_3d(rot: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """R S^-2 R^T, without a general matrix inversion."""
    m = rot / scales.clamp_min(1e-8)[:, None, :]
    return m @ m.transpose(-1, -2)


def shortest_axis(rot: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """(G, 3) the axis of least extent: the normal of a flattened Gaussian."""
    pick = scales.detach().argmin(dim=-1)
    return torch.gather(rot, 2, pick[:, None, None].expand(-1, 3, 1)).squeeze(-1)


def project(means: torch.Tensor, cov3d: torch.Tensor, opacity: torch.Tensor, c2w: torch.Tensor,
            focal: torch.Tensor, width: int, height: int) -> dict[str, torch.Tensor]:
    """EWA projection of G Gaussians into V views.

    Returns per (view, Gaussian): `xy` (V, G, 2) pixel position, `conic` (V, G, 3) the
    inverse 2D covariance as (a, b, c) of [[a, b], [b, c]], `depth` (V, G) = -z_cam,
    `extent` (V, G, 2) half-size in pixels of the box where alpha can reach 1/255 (0 for
    Gaussians that cannot be seen at all)."""
    rot, pos = c2w[:, :3, :3], c2w[:, :3, 3]
    p = torch.einsum("vji,vgj->vgi", rot, means[None] - pos[:, None])
    depth = -p[..., 2]
    # Clamping keeps the Jacobian finite for Gaussians behind the camera; they are culled
    # below, and a finite (rather than masked inf) value keeps their gradients at 0, not NaN.
    d = depth.clamp_min(NEAR)
    f = focal[:, None]
    x, y = p[..., 0] / d, p[..., 1] / d
    # As in the reference: the Jacobian of far off-screen Gaussians is taken at the frustum
    # edge (with a margin), otherwise their footprints blow up.
    lim_x, lim_y = 1.3 * 0.5 * width / f, 1.3 * 0.5 * height / f
    tx = torch.maximum(torch.minimum(x, lim_x), -lim_x)
    ty = torch.maximum(torch.minimum(y, lim_y), -lim_y)
    zero = torch.zeros_like(d)
    # d(u, v)/d(x, y, z) for u = cx + f x / -z, v = cy - f y / -z.
    jac = torch.stack([f / d, zero, f * tx / d, zero, -f / d, -f * ty / d], -1).reshape(d.shape + (2, 3))
    t = jac @ rot.transpose(-1, -2)[:, None]
    cov2d = t @ cov3d[None] @ t.transpose(-1, -2)
    a = cov2d[..., 0, 0] + LOW_PASS
    b = cov2d[..., 0, 1]
    c = cov2d[..., 1, 1] + LOW_PASS
    det = a * c - b * b
    conic = torch.stack([c / det, -b / det, a / det], dim=-1)
    xy = torch.stack([0.5 * width + f * x, 0.5 * height - f * y], dim=-1)
    with torch.no_grad():
        # opacity * exp(-m^2 / 2) >= 1/255  <=>  m^2 <= 2 ln(255 opacity); the box around
        # that ellipse has half-sizes m * sqrt(cov_xx), m * sqrt(cov_yy).
        m2 = (2.0 * torch.log(opacity.detach() / ALPHA_MIN)).clamp_min(0.0)[None].expand_as(a)
        m2 = torch.where(depth > NEAR, m2, torch.zeros_like(m2))
        extent = torch.stack([(m2 * a).sqrt(), (m2 * c).sqrt()], dim=-1)
    return {"xy": xy, "conic": conic, "depth": depth, "extent": extent}


# --------------------------------------------------------------------------- compositing

def _tile_lists(xy: torch.Tensor, extent: torch.Tensor, depth: torch.Tensor, width: int,
                height: int, tile: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per (view, tile) the Gaussians that can touch the tile's pixel centres, nearest first.

    Returns tile origins (T, 2), indices (V, T, K) packed at the front and counts (V, T)."""
    nx, ny = -(-width // tile), -(-height // tile)
    dev = xy.device
    ty, tx = torch.meshgrid(torch.arange(ny, device=dev), torch.arange(nx, device=dev),
                            indexing="ij")
    origin = torch.stack([tx.reshape(-1), ty.reshape(-1)], dim=-1).to(xy.dtype) * tile
    lo, hi = origin + 0.5, origin + tile - 0.5                           # pixel centres
    eps = 1e-3
    near_hi = (xy - extent - eps)[:, None] <= hi[None, :, None]          # (V, T, G, 2)
    near_lo = (xy + extent + eps)[:, None] >= lo[None, :, None]
    seen = (extent > 0).all(-1)[:, None]
    hit = (near_hi & near_lo).all(-1) & seen                             # (V, T, G)
    order = depth.detach().argsort(dim=-1)
    hit = torch.gather(hit, 2, order[:, None].expand_as(hit))
    counts = hit.sum(-1)
    k = int(counts.max()) if counts.numel() else 0
    # Scatter each hit to its rank among the tile's hits; misses all go to a spare slot K.
    slot = torch.where(hit, hit.cumsum(-1) - 1, torch.full_like(counts[..., None], k))
    index = torch.zeros(hit.shape[:2] + (k + 1,), dtype=torch.long, device=dev)
    index.scatter_(2, slot, order[:, None].expand_as(slot))
    return origin, index[..., :k], counts


def _composite_chunk(geom: torch.Tensor, feats: torch.Tensor, index: torch.Tensor,
                     counts: torch.Tensor, centre: torch.Tensor, local: torch.Tensor,
                     dirs: torch.Tensor):
    """Composite one chunk of t tiles of P pixels each.

    geom (V, G, 6): x, y, conic a, b, c, log opacity; feats (V, G, C); index (V, t, K)
    and counts (V, t) from `_tile_lists`; centre (t, 2) tile centres; local (P, 2) pixel
    centres relative to their tile's centre; dirs (V, t, P, 3) world ray directions.
    Returns features (V, t, P, C), accumulated alpha (V, t, P), orientation (V, t, P)."""
    k = index.shape[-1]
    views = torch.arange(geom.shape[0], device=geom.device)[:, None, None]
    g = geom[views, index]                                               # (V, t, K, 6)
    f = feats[views, index]                                              # (V, t, K, C)
    # The exponent is a quadratic in the pixel position, so for all pixels of a tile it is
    # one matrix product with the monomials of the pixel's offset from the tile centre
    # (small offsets: no cancellation in float32).
    mx, my = g[..., 0] - centre[:, 0, None], g[..., 1] - centre[:, 1, None]
    a, b, c = g[..., 2], g[..., 3], g[..., 4]
    constant = g[..., 5] - 0.5 * (a * mx * mx + c * my * my) - b * mx * my
    used = torch.arange(k, device=geom.device) < counts[..., None]     # not a padding slot
    constant = torch.where(used, constant, -math.inf)                   # padding: alpha 0
    coef = torch.stack([constant, a * mx + b * my, b * mx + c * my, -0.5 * a, -b, -0.5 * c], dim=-1)
    qx, qy = local[:, 0], local[:, 1]
    monomials = torch.stack([torch.ones_like(qx), qx, qy, qx * qx, qx * qy, qy * qy], dim=-1)
    alpha = torch.exp(monomials @ coef.transpose(-1, -2)).clamp_max(ALPHA_MAX)   # (V, t, P, K)
    alpha = torch.where(alpha >= ALPHA_MIN, alpha, 0.0)
    # Transmittance as a sum of logs: the product of many (1 - alpha) underflows.
    log_1m = torch.log1p(-alpha)
    w = alpha * torch.exp(torch.cumsum(log_1m, dim=-1) - log_1m)      # exclusive product
    out = w @ f
    # orientation_penalty's sum_i w_i max(0, n_i . d)^2 per pixel, without materialising
    # the normals per (pixel, Gaussian).
    facing_away = (dirs @ f[..., NORMAL].transpose(-1, -2)).clamp_min(0.0)
    orient = (w.detach() * facing_away.square()).sum(-1)
    return out, w.sum(-1), orient


def _plan_chunks(counts: torch.Tensor, pixels_per_tile: int) -> tuple[torch.Tensor, list[tuple]]:
    """Tiles in order of their longest Gaussian list, and consecutive ranges (start, stop, K)
    of that order. A chunk pads every tile's list to its longest, K, so it only groups tiles
    of similar length, and stays under CHUNK_PAIRS (pixel, Gaussian) pairs."""
    longest = counts.max(dim=0).values                                   # the views share K
    order = longest.argsort()
    per_tile = longest[order].tolist()
    views = counts.shape[0]
    chunks, start = [], 0
    for i, k in enumerate(per_tile):
        too_big = views * (i + 1 - start) * pixels_per_tile * k > CHUNK_PAIRS
        too_uneven = k > 1.25 * per_tile[start] + 16
        if i > start and (too_big or too_uneven):
            chunks.append((start, i, per_tile[i - 1]))
            start = i
    chunks.append((start, len(per_tile), per_tile[-1]))
    return order, chunks


def rasterise(means: torch.Tensor, rot: torch.Tensor, scales: torch.Tensor, opacity: torch.Tensor,
              feats: torch.Tensor, c2w: torch.Tensor, focal: torch.Tensor, width: int, height: int,
              tile: int = TILE) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Splat G Gaussians into V views.

    means (G, 3), rot (G, 3, 3), scales (G, 3), opacity (G,), per-view features feats
    (V, G, C) whose channels NORMAL hold world normals (for the orientation penalty);
    c2w (V, 4, 4), focal (V,) in pixels. Returns composited features (V, C, H, W) over
    black, accumulated alpha (V, 1, H, W) and the orientation penalty (scalar)."""
    views, dtype = c2w.shape[0], means.dtype
    proj = project(means, covariance_3d(rot, scales), opacity, c2w, focal, width, height)
    origin, index, counts = _tile_lists(proj["xy"], proj["extent"], proj["depth"], width, height, tile)
    # Clamped: a log(0) would turn the zero gradient of an invisible Gaussian into NaN.
    log_opacity = opacity.clamp_min(1e-30).log()[None, :, None].expand(views, -1, 1)
    geom = torch.cat([proj["xy"], proj["conic"], log_opacity], dim=-1)

    steps = torch.arange(tile, device=means.device, dtype=dtype) + 0.5 - 0.5 * tile
    j, i = torch.meshgrid(steps, steps, indexing="xy")
    local = torch.stack([j.reshape(-1), i.reshape(-1)], dim=-1)       # (P, 2) from the tile centre
    centre = origin + 0.5 * tile                                         # (T, 2)
    pix = centre[:, None] + local[None]                                  # (T, P, 2)
    cam = torch.stack([(pix[..., 0] - 0.5 * width)[None] / focal[:, None, None],
                       -(pix[..., 1] - 0.5 * height)[None] / focal[:, None, None],
                       -torch.ones((views,) + pix.shape[:2], dtype=dtype, device=means.device)], dim=-1)
    dirs = torch.einsum("vij,vtpj->vtpi", c2w[:, :3, :3], cam)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)

    order, chunks = _plan_chunks(counts, tile * tile)
    pairs = sum(views * (stop - start) * tile * tile * k for start, stop, k in chunks)
    recompute = torch.is_grad_enabled() and pairs > GRAD_PAIRS
    parts = []
    for start, stop, k in chunks:
        tiles = order[start:stop]
        args = (geom, feats, index[:, tiles, :k], counts[:, tiles], centre[tiles], local, dirs[:, tiles])
        if recompute:
            parts.append(checkpoint(_composite_chunk, *args, use_reentrant=False))
        else:
            parts.append(_composite_chunk(*args))
    back = order.argsort()                                               # undo the tile order
    out, acc, orient = (torch.cat([p[n] for p in parts], dim=1)[:, back] for n in range(3))
    orient = _untile(orient[..., None], tile, width, height)
    return (_untile(out, tile, width, height), _untile(acc[..., None], tile, width, height),
            orient.mean())


def _untile(x: torch.Tensor, tile: int, width: int, height: int) -> torch.Tensor:
    """(V, T, tile*tile, C) per-tile pixels -> (V, C, H, W), cropping the partial tiles."""
    views, channels = x.shape[0], x.shape[-1]
    nx, ny = -(-width // tile), -(-height // tile)
    x = x.reshape(views, ny, nx, tile, tile, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(views, channels, ny * tile, nx * tile)[:, :, :height, :width]


# ------------------------------------------------------------------------ representation

def load_point_cloud(path: str | Path) -> tuple[np.ndarray, np.ndarray | None]:
    """(M, 3) points and optional (M, 3) colours in [0, 1] from a .npy ((M, 3) or (M, 6)) or
    .ply (plain point cloud, or a 3DGS file with f_dc_* colours)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"gaussians: init point cloud {str(path)!r} does not exist")
    if path.suffix.lower() == ".npy":
        arr = np.asarray(np.load(path), dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] not in (3, 6) or len(arr) == 0:
            raise ValueError(f"gaussians: {str(path)!r} must hold an (M, 3) or (M, 6) array, got {arr.shape}")
        colours = arr[:, 3:6] if arr.shape[1] == 6 else None
        if colours is not None and colours.max() > 1.0:                 # 0..255 colours
            colours = colours / 255.0
    elif path.suffix.lower() == ".ply":
        import trimesh

        cloud = trimesh.load(str(path), process=False)
        if not hasattr(cloud, "vertices") or len(cloud.vertices) == 0:
            raise ValueError(f"gaussians: {str(path)!r} holds no points")
        arr = np.asarray(cloud.vertices, dtype=np.float64)
        colours = _ply_colours(cloud)
    else:
        raise ValueError(f"gaussians: init point cloud must be .npy or .ply, got {str(path)!r}")
    return arr[:, :3], None if colours is None else np.clip(colours, 0.0, 1.0)


def _ply_colours(cloud) -> np.ndarray | None:
    """Vertex colours of a loaded .ply: 3DGS's f_dc_* (SH band 0), else plain vertex colours."""
    import trimesh

    data = cloud.metadata.get("_ply_raw", {}).get("vertex", {}).get("data")
    # trimesh gives a dict of columns for ASCII files and a structured array for binary ones.
    names = data.dtype.names if hasattr(data, "dtype") else tuple(data or ())
    if names and "f_dc_0" in names:
        sh0 = 0.28209479177387814
        dc = [np.asarray(data[f"f_dc_{i}"], dtype=np.float64).reshape(-1) for i in range(3)]
        return 0.5 + sh0 * np.stack(dc, axis=-1)
    if isinstance(cloud, trimesh.PointCloud):
        rgb = np.asarray(cloud.colors)
    elif getattr(cloud.visual, "kind", None) == "vertex":   # not trimesh's default grey
        rgb = np.asarray(cloud.visual.vertex_colors)
    else:
        return None
    return rgb[:, :3] / 255.0 if len(rgb) == len(cloud.vertices) else None   # trimesh: uint8


def _initial_points(p: GaussianParams, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor | None]:
    n, r = p.num_points, p.init_radius
    if p.init == "sphere":
        direction = torch.randn(n, 3, generator=gen)
        direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        return direction * r * torch.rand(n, 1, generator=gen) ** (1.0 / 3.0), None   # uniform in the ball
    if p.init == "box":
        return (torch.rand(n, 3, generator=gen) * 2.0 - 1.0) * r, None
    if p.init_points is None:
        raise ValueError("gaussians: init 'points' needs init_points (a .ply or .npy point cloud)")
    points, colours = load_point_cloud(p.init_points)
    m = len(points)
    # All points once (in random order) for as long as they last, then random repeats,
    # nudged apart so that duplicates do not receive identical gradients.
    pick = torch.cat([torch.randperm(m, generator=gen) for _ in range(-(-n // m))])[:n]
    xyz = torch.as_tensor(points, dtype=torch.float32)[pick]
    repeat = (torch.arange(n) >= m).float()[:, None]
    xyz = xyz + repeat * 0.1 * p.initial_scale * torch.randn(n, 3, generator=gen)
    rgb = None if colours is None else torch.as_tensor(colours, dtype=torch.float32)[pick]
    return xyz.clamp(-p.bound, p.bound), rgb


def _mahalanobis_sq(corner: torch.Tensor, inv_cov: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """(g, n) d^T A d for d = corner (g, 3) + offsets (n, 3), A = inv_cov (g, 3, 3).

    Expanded as a polynomial in the offsets, the n points of all g Gaussians are a single
    matrix product instead of n small ones per Gaussian."""
    a = inv_cov
    ox, oy, oz = offsets.unbind(-1)
    monomials = torch.stack([torch.ones_like(ox), ox, oy, oz, ox * ox, oy * oy, oz * oz,
                             ox * oy, ox * oz, oy * oz], dim=-1)              # (n, 10)
    linear = 2.0 * (a @ corner[..., None])[..., 0]                            # (g, 3)
    constant = (corner * linear).sum(-1) / 2.0
    quadratic = [a[:, 0, 0], a[:, 1, 1], a[:, 2, 2], 2 * a[:, 0, 1], 2 * a[:, 0, 2], 2 * a[:, 1, 2]]
    coef = torch.stack([constant, *linear.unbind(-1), *quadratic], dim=-1)   # (g, 10)
    return coef @ monomials.T


def _logit(x: torch.Tensor) -> torch.Tensor:
    x = x.clamp(1e-4, 1.0 - 1e-4)
    return torch.log(x) - torch.log1p(-x)


def _gsplat_available() -> bool:
    try:
        importlib.import_module("gsplat")
    except ImportError:
        return False
    return True


@REPRESENTATIONS.implements(GaussianParams)
class GaussianSplats(Representation):
    """N anisotropic 3D Gaussians with an albedo each, plus a learned background MLP."""

    def __init__(self, p: GaussianParams, generator: torch.Generator):
        super().__init__()
        self.config = p
        self.bound = p.bound
        if p.rasteriser == "gsplat" and not _gsplat_available():
            raise RuntimeError("gaussians: rasteriser 'gsplat' requested but gsplat is not importable; "
                               "install gsplat 1.x (CUDA) or use rasteriser 'torch'/'auto'")
        xyz, rgb = _initial_points(p, generator)
        n = len(xyz)
        # Grey with a little noise (so that colours are not all tied), or the cloud's own.
        noise = 0.1 * torch.randn(n, 3, generator=generator)
        colour = noise if rgb is None else _logit(rgb)
        self.means = torch.nn.Parameter(xyz)
        self.log_scales = torch.nn.Parameter(torch.full((n, 3), math.log(p.initial_scale)))
        # Identity rotations, as in the reference: isotropic Gaussians have no orientation yet.
        self.quats = torch.nn.Parameter(torch.tensor([1.0, 0.0, 0.0, 0.0]).repeat(n, 1))
        opacity_logit = math.log(p.initial_opacity / (1.0 - p.initial_opacity))
        self.opacity_logits = torch.nn.Parameter(torch.full((n, 1), opacity_logit))
        self.colour_logits = torch.nn.Parameter(colour)
        self.background = BackgroundMLP(generator=generator)

    # ------------------------------------------------------------------ accessors
    @property
    def num_gaussians(self) -> int:
        return self.means.shape[0]

    def scales(self) -> torch.Tensor:
        return self.log_scales.exp()

    def opacity(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits[:, 0])

    def albedo(self) -> torch.Tensor:
        return torch.sigmoid(self.colour_logits)

    def rotations(self) -> torch.Tensor:
        return quat_to_rotmat(self.quats)

    def ccm_box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Detached box of the confident Gaussians' centres (all of them when none is)."""
        means = self.means.detach()
        solid = means[self.opacity().detach() > 0.5]
        pts = solid if len(solid) else means
        return pts.min(dim=0).values, pts.max(dim=0).values

    # ------------------------------------------------------------------ rendering
    def _features(self, c2w: torch.Tensor, rot: torch.Tensor, scales: torch.Tensor,
                  shading: str, light: Lighting | None) -> torch.Tensor:
        """(V, G, 10) per-view rgb, depth, camera-facing normal and CCM of every Gaussian."""
        views = c2w.shape[0]
        to_mean = self.means[None] - c2w[:, None, :3, 3]                  # camera -> Gaussian
        axis = shortest_axis(rot, scales)[None].expand(views, -1, -1)
        normal = torch.where((axis * to_mean).sum(-1, keepdim=True) > 0, -axis, axis)
        if light is not None:
            light = Lighting(light.position.to(self.means), light.ambient, light.diffuse)
        points = self.means[None].expand(views, -1, -1)
        rgb = shade(self.albedo()[None].expand(views, -1, -1), normal, points, light, shading)
        depth = -(to_mean[..., None, :] @ c2w[:, None, :3, 2:3])[..., 0]  # along the view axis
        ccm = canonical(self.means, *self.ccm_box())[None].expand(views, -1, -1)
        return torch.cat([rgb, depth, normal, ccm], dim=-1)

    def render(self, cams: Cameras, shading: str, light: Lighting | None, background: torch.Tensor,
               generator: torch.Generator | None = None, need_normals: bool = True) -> RenderOutput:
        """Render V views; `generator` is unused (rasterising is deterministic)."""
        c2w, focal = cams.c2w.to(self.means), cams.focal().to(self.means)
        rot, scales, opacity = self.rotations(), self.scales(), self.opacity()
        feats = self._features(c2w, rot, scales, shading, light)
        if self._use_gsplat():
            out, acc, orient = self._rasterise_gsplat(feats, c2w, focal, cams.width, cams.height)
            name = "gsplat"
        else:
            out, acc, orient = rasterise(self.means, rot, scales, opacity, feats, c2w, focal,
                                         cams.width, cams.height)
            name = "torch"
        rgb = out[:, RGB] + (1.0 - acc) * background.to(out)
        return RenderOutput(rgb=rgb, opacity=acc, depth=out[:, DEPTH], normal=out[:, NORMAL],
                            ccm=out[:, CCM], orientation=orient, extras={"rasteriser": name})

    def _use_gsplat(self) -> bool:
        if self.config.rasteriser == "gsplat":
            return True
        return (self.config.rasteriser == "auto" and self.means.is_cuda
                and torch.cuda.is_available() and _gsplat_available())

    def _rasterise_gsplat(self, feats, c2w, focal, width, height):
        # UNTESTED here (no CUDA, no gsplat on the development machine). gsplat 1.x wants
        # world-to-camera matrices in the OpenCV convention: flip the camera's y and z.
        import gsplat

        flip = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=c2w.dtype, device=c2w.device))
        viewmats = flip @ torch.linalg.inv(c2w)
        ks = torch.zeros(len(c2w), 3, 3, dtype=c2w.dtype, device=c2w.device)
        ks[:, 0, 0], ks[:, 1, 1] = focal, focal
        ks[:, 0, 2], ks[:, 1, 2], ks[:, 2, 2] = width / 2.0, height / 2.0, 1.0
        colours = torch.cat([feats[..., RGB], feats[..., NORMAL], feats[..., CCM]], dim=-1)
        img, alpha, _ = gsplat.rasterization(
            self.means, self.quats / self.quats.norm(dim=-1, keepdim=True), self.scales(),
            self.opacity(), colours, viewmats, ks, width, height, near_plane=NEAR,
            eps2d=LOW_PASS, render_mode="RGB+D", packed=False)
        img = img.permute(0, 3, 1, 2)                                       # rgb, normal, ccm, depth
        out = torch.cat([img[:, 0:3], img[:, 9:10], img[:, 3:9]], dim=1)
        # No per-pixel weights come back; with camera-facing normals the per-Gaussian
        # form of the orientation penalty is zero anyway.
        return out, alpha.permute(0, 3, 1, 2), out.new_zeros(())

    # ------------------------------------------------------------------ training
    def param_groups(self) -> list[dict]:
        p = self.config
        return [{"params": [self.means], "lr": p.lr_position, "name": "position"},
                {"params": [self.log_scales], "lr": p.lr_scale, "name": "scale"},
                {"params": [self.quats], "lr": p.lr_rotation, "name": "rotation"},
                {"params": [self.opacity_logits], "lr": p.lr_opacity, "name": "opacity"},
                {"params": [self.colour_logits], "lr": p.lr_colour, "name": "colour"},
                {"params": list(self.background.parameters()), "lr": p.lr_background, "name": "background"}]

    @torch.no_grad()
    def post_step(self, step: int) -> None:
        self.log_scales.clamp_(max=math.log(self.config.max_scale))
        self.means.clamp_(-self.bound, self.bound)

    # ------------------------------------------------------------------ export
    @torch.no_grad()
    def density_on_grid(self, resolution: int) -> np.ndarray:
        """Sum of opacity-weighted Gaussians at the grid's cell centres, each cut off at
        3 sigma so that only the cells near a Gaussian are evaluated."""
        r, bound = resolution, self.bound
        cell = 2.0 * bound / r
        means, rot, scales = self.means.detach(), self.rotations().detach(), self.scales().detach()
        inv_cov = inverse_covariance_3d(rot, scales)
        opacity = self.opacity().detach()
        half = 3.0 * torch.diagonal(covariance_3d(rot, scales), dim1=-2, dim2=-1).sqrt()
        lo = torch.ceil((means - half + bound) / cell - 0.5).clamp(0, r - 1).long()
        hi = torch.floor((means + half + bound) / cell - 0.5).clamp(0, r - 1).long()
        size = (hi - lo + 1).clamp_min(0).max(dim=-1).values               # cube window side
        grid = torch.zeros(r ** 3, dtype=means.dtype, device=means.device)
        order = size.argsort(descending=True)   # a chunk's first Gaussian has its largest window
        start = 0
        while start < len(order) and int(size[order[start]]) > 0:
            w = int(size[order[start]])
            ids = order[start:start + max(1, 2_000_000 // w ** 3)]
            start += len(ids)
            # Shifting a window back from the far faces keeps it in the grid and still over
            # its Gaussian's box (which is at most w cells wide).
            first = lo[ids].clamp(max=r - w)
            corner = (first.to(means.dtype) + 0.5) * cell - bound - means[ids]
            steps = torch.arange(w, device=means.device)
            o = torch.stack(torch.meshgrid(steps, steps, steps, indexing="ij"), dim=-1).reshape(-1, 3)
            m2 = _mahalanobis_sq(corner, inv_cov[ids], o.to(means.dtype) * cell)   # (g, w^3)
            value = torch.where(m2 <= 9.0, opacity[ids, None] * torch.exp(-0.5 * m2), 0.0)
            flat = (first @ torch.tensor([r * r, r, 1], device=means.device))[:, None] \
                + (o @ torch.tensor([r * r, r, 1], device=means.device))[None]
            grid.index_add_(0, flat.reshape(-1), value.reshape(-1))
        grid = grid.reshape(r, r, r)
        return grid.float().cpu().numpy()

    @torch.no_grad()
    def albedo_at(self, points: torch.Tensor) -> torch.Tensor:
        """Albedo of the nearby Gaussians weighted by their density at each point (the
        16 nearest centres are considered); the nearest centre's where none covers it."""
        means = self.means.detach()
        points = points.to(means)
        inv_cov = inverse_covariance_3d(self.rotations().detach(), self.scales().detach())
        opacity, albedo = self.opacity().detach(), self.albedo().detach()
        k = min(16, len(means))
        out = []
        for chunk in points.split(4096):
            near = torch.cdist(chunk, means).topk(k, dim=-1, largest=False).indices   # nearest first
            d = chunk[:, None] - means[near]
            m2 = torch.einsum("mki,mkij,mkj->mk", d, inv_cov[near], d)
            w = opacity[near] * torch.exp(-0.5 * m2)
            total = w.sum(-1, keepdim=True)
            blended = (w[..., None] * albedo[near]).sum(1) / total.clamp_min(1e-12)
            out.append(torch.where(total > 1e-6, blended, albedo[near[:, 0]]))
        return torch.cat(out) if out else albedo.new_zeros(0, 3)

    @torch.no_grad()
    def ply_arrays(self) -> dict[str, np.ndarray]:
        """The arrays of a standard 3DGS point_cloud.ply (colours as rgb, not SH)."""
        quats = self.quats / self.quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        arrays = {"means": self.means, "log_scales": self.log_scales, "quats": quats,
                  "opacity_logit": self.opacity_logits, "rgb": self.albedo()}
        return {k: v.detach().float().cpu().numpy().copy() for k, v in arrays.items()}


__all__ = ["GaussianSplats", "load_point_cloud", "project", "quat_to_rotmat", "rasterise"]
