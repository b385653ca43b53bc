"""Random cameras and lights for each distillation step, from one torch generator.

Every number is drawn on the CPU from the step's CPU generator (dreamline.device) and the
finished views are moved to the device: every device sees the same cameras in a run."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dreamline.config import DistillCameraParams
from dreamline.device import rand, randn
from dreamline.rendering.cameras import framing_distance, orbit_c2w
from dreamline.representations.base import Cameras, Lighting


@dataclass
class Views:
    cams: Cameras
    azimuth_deg: torch.Tensor
    elevation_deg: torch.Tensor
    light: Lighting

    def to(self, device: torch.device | None) -> "Views":
        if device is None:
            return self
        return Views(self.cams.to(device), self.azimuth_deg.to(device), self.elevation_deg.to(device),
                     self.light.to(device))


def _uniform(lo_hi, n: int, g: torch.Generator) -> torch.Tensor:
    lo, hi = float(lo_hi[0]), float(lo_hi[1])
    return lo + (hi - lo) * rand(n, g)


def orbit_views(azimuths, elevations, fovs, distances, resolution: int) -> tuple[Cameras, torch.Tensor, torch.Tensor]:
    c2w = torch.stack([torch.as_tensor(orbit_c2w(float(a), float(e), float(d)), dtype=torch.float32)
                       for a, e, d in zip(azimuths, elevations, distances)])
    cams = Cameras(c2w, torch.as_tensor(fovs, dtype=torch.float32).reshape(-1), resolution, resolution)
    return cams, torch.as_tensor(azimuths, dtype=torch.float32), torch.as_tensor(elevations, dtype=torch.float32)


def sample_views(p: DistillCameraParams, n: int, orthogonal: int, resolution: int,
                 g: torch.Generator, ambient: float = 0.3, device: torch.device | None = None) -> Views:
    """n views on `device`. orthogonal = F > 0: sets of F azimuths 360/F apart sharing fov,
    elevation and distance (MVDream); otherwise independent views (DreamFusion)."""
    if orthogonal:
        sets = max(1, n // orthogonal)
        start = _uniform((0.0, 360.0), sets, g)
        az = (start[:, None] + torch.arange(orthogonal) * 360.0 / orthogonal).reshape(-1) % 360.0
        el = _uniform(p.elevation_deg, sets, g).repeat_interleave(orthogonal)
        fov = _uniform(p.fov_deg, sets, g).repeat_interleave(orthogonal)
        scale = _uniform(p.distance_scale, sets, g).repeat_interleave(orthogonal)
    else:
        az = _uniform((0.0, 360.0), n, g)
        el = _uniform(p.elevation_deg, n, g)
        fov = _uniform(p.fov_deg, n, g)
        scale = _uniform(p.distance_scale, n, g)
    dist = torch.tensor([framing_distance(float(f), p.radius) for f in fov]) * scale
    cams, az, el = orbit_views(az, el, fov, dist, resolution)
    # DreamFusion: a point light near the camera, jittered so shading reveals shape.
    m = len(az)
    jitter = 0.4 * randn((m, 3), g)
    direction = cams.positions / cams.positions.norm(dim=-1, keepdim=True) + jitter
    direction = direction / direction.norm(dim=-1, keepdim=True)
    light_dist = _uniform(p.light_distance, m, g) * dist
    views = Views(cams, az, el, Lighting(direction * light_dist[:, None], ambient=ambient, diffuse=1.0 - ambient))
    return views.to(device)


def fixed_views(azimuths, elevation: float, fov: float, radius: float, resolution: int,
                ambient: float = 0.3, device: torch.device | None = None) -> Views:
    """Deterministic orbit views (exports, evaluation) with a headlight, on `device`."""
    n = len(azimuths)
    d = framing_distance(fov, radius)
    cams, az, el = orbit_views(list(azimuths), [elevation] * n, [fov] * n, [d] * n, resolution)
    return Views(cams, az, el, Lighting(cams.positions * 1.0, ambient=ambient, diffuse=1.0 - ambient)).to(device)


def pick_shading(shares: dict[str, float], progress: float, warmup: float, g: torch.Generator) -> str:
    """Albedo only during the warm-up (geometry first takes shape under colour), then one
    of albedo / lambertian / textureless by their shares (DreamFusion)."""
    if progress < warmup:
        return "albedo"
    names = [k for k, v in shares.items() if v > 0]
    weights = torch.tensor([shares[k] for k in names], dtype=torch.float64)
    return names[int(torch.multinomial(weights / weights.sum(), 1, generator=g))]


def azimuth_ring(n: int, start: float = 0.0) -> list[float]:
    return [(start + 360.0 * k / n) % 360.0 for k in range(n)]

