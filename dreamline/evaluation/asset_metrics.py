"""Metrics of distilled 3D assets: renders at fixed views, multi-view consistency through
depth, and an automated multi-face (Janus) proxy.

Janus proxy: with evaluator image embeddings e(az) of renders around the object,
    janus = cos(e(0), e(180)) - mean(cos(e(0), e(90)), cos(e(0), e(270))):
the back view resembling the front more than the side views do. An asset is flagged when
janus > 0, and the consistency rate is the share not flagged (SweetDreamer reports the
share judged consistent by people). Known failure modes: objects that really are the same
from front and back (mugs, bottles, lamps, tables: symmetric objects) are flagged although
consistent; a Janus asset whose second face is seen only from above or at another azimuth
is missed; at 64 px the embedding may not resolve faces at all. Read it as a rate to
compare between methods on the same prompts, not as an absolute.

Quarter-turn silhouette IoU: the IoU of an object's silhouette (opacity > 0.5) with its
silhouette a quarter turn further round, averaged over the views. A solid of revolution
(what score distillation makes when its prior cannot tell the views apart) scores 1; a chair
or a car, whose side and front differ, much less. The evaluate stage gives the real test
objects' value beside the assets'.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from dreamline.distill.sampling import azimuth_ring, fixed_views
from dreamline.evaluation.textureless import AMBIENT
from dreamline.rendering.cameras import Camera, framing_distance
from dreamline.rendering.reprojection import overlap_psnr, warp

FOV = 40.0


@dataclass
class AssetViews:
    azimuths: list[float]
    colour: torch.Tensor      # (N, 3, H, W) in [0, 1], lambertian with a headlight, over white
    geo: torch.Tensor         # (N, 3, H, W) textureless
    albedo: np.ndarray        # (N, H, W, 3) unshaded colour (view-independent: for consistency)
    depth: np.ndarray         # (N, H, W) expected depth / opacity where opaque, else 0
    cameras: list[Camera]
    framed_radius: float      # the sphere the views frame (framing_distance at FOV)


def turn_iou(masks: np.ndarray, azimuths: list[float], turn: float = 90.0, tol: float = 1.0) -> float | None:
    """Mean IoU of each (H, W) boolean silhouette with the one `turn` degrees further round
    (views whose partner is missing, or pairs both empty, are skipped; None if no pair)."""
    ious = []
    for k, a in enumerate(azimuths):
        gaps = [abs(((b - a - turn + 180.0) % 360.0) - 180.0) for b in azimuths]
        j = int(np.argmin(gaps))
        if gaps[j] > tol:
            continue
        union = np.logical_or(masks[k], masks[j]).sum()
        if union:
            ious.append(np.logical_and(masks[k], masks[j]).sum() / union)
    return float(np.mean(ious)) if ious else None


def silhouette_radius(masks: np.ndarray, distance: float, fov: float) -> float | None:
    """Radius of the smallest sphere about the look-at point that holds every silhouette
    pixel's ray's nearest approach to it, for (N, H, W) silhouettes seen from `distance` with a
    square field of view `fov` (a bounding sphere of what the views show, tight for a convex
    object); None for empty silhouettes. The pixel's far corner counts, so the object's edge
    is kept."""
    if not masks.any():
        return None
    h, w = masks.shape[-2:]
    ys, xs = np.nonzero(masks.any(axis=0))
    tan_half = math.tan(math.radians(fov) / 2.0)
    u = (np.maximum(np.abs(xs - w / 2.0), np.abs(xs + 1 - w / 2.0)) / (w / 2.0)) * tan_half
    v = (np.maximum(np.abs(ys - h / 2.0), np.abs(ys + 1 - h / 2.0)) / (h / 2.0)) * tan_half
    theta = np.arctan(np.sqrt(u * u + v * v))
    return float(distance * np.sin(theta).max())


@torch.no_grad()
def render_asset(rep, n_views: int, elevation: float, resolution: int, radius: float,
                 framing: str = "scene") -> AssetViews:
    """Rendered on the representation's device; what comes back is on the CPU.
    framing "scene": the views frame a sphere of `radius` (the distillation cameras' scene);
    "asset": the sphere holding what those views show (opacity > 0.5, silhouette_radius;
    `radius` if they show nothing), as the render stage frames each corpus object's bounding
    sphere, so that an asset and a real test object fill the frame alike."""
    if framing not in ("scene", "asset"):
        raise ValueError(f"framing must be 'scene' or 'asset', got {framing!r}")
    az = azimuth_ring(n_views)
    device = rep.device
    views = fixed_views(az, elevation, FOV, radius, resolution, ambient=AMBIENT, device=device)
    if framing == "asset":
        seen = rep.render(views.cams, "albedo", None, torch.zeros(n_views, 3, resolution, resolution, device=device),
                          need_normals=False).opacity[:, 0] > 0.5
        own = silhouette_radius(seen.cpu().numpy(), framing_distance(FOV, radius), FOV)
        if own is not None:
            radius = own
            views = fixed_views(az, elevation, FOV, radius, resolution, ambient=AMBIENT, device=device)
    white = torch.ones(n_views, 3, resolution, resolution, device=device)
    colour = rep.render(views.cams, "lambertian", views.light, white).rgb.clamp(0, 1).cpu()
    geo = rep.render(views.cams, "textureless", views.light, white).rgb.clamp(0, 1).cpu()
    flat = rep.render(views.cams, "albedo", None, torch.zeros_like(white), need_normals=False)
    opacity = flat.opacity[:, 0].cpu().numpy()
    depth = np.where(opacity > 0.5, flat.depth[:, 0].cpu().numpy() / np.maximum(opacity, 1e-6), 0.0)
    albedo = (flat.rgb / flat.opacity.clamp_min(1e-6)).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    d = float(views.cams.positions[0].norm())
    cams = [Camera.orbit(a, elevation, d, FOV, resolution) for a in az]
    return AssetViews(az, colour, geo, albedo, depth, cams, radius)


def consistency_psnr(v: AssetViews, depth_tol: float = 0.03) -> list[float]:
    """PSNR of each view warped into its neighbour (MVDiffusion's overlap PSNR), on the
    unshaded albedo (shading legitimately changes with the headlight). Pairs with fewer
    than 16 overlapping pixels are skipped."""
    out = []
    n = len(v.azimuths)
    for i in range(n):
        j = (i + 1) % n
        warped, valid = warp(v.albedo[i], v.depth[i], v.cameras[i], v.depth[j], v.cameras[j], depth_tol)
        if valid.sum() >= 16:
            psnr = overlap_psnr(warped, v.albedo[j], valid, data_range=1.0)
            out.append(min(psnr, 60.0) if math.isfinite(psnr) else 60.0)
    return out


def janus_score(embeddings: np.ndarray, azimuths: list[float]) -> float:
    """cos(front, back) - mean cos(front, sides), from unit embeddings at the given azimuths."""
    def at(angle: float) -> np.ndarray:
        k = int(np.argmin([abs(((a - angle + 180) % 360) - 180) for a in azimuths]))
        return embeddings[k]
    front = at(0.0)
    return float(front @ at(180.0) - 0.5 * (front @ at(90.0) + front @ at(270.0)))
