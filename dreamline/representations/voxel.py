"""NeRF-style field on a voxel grid: density and albedo trilinearly interpolated, volume
rendered inside the bounding sphere (DreamFusion's scene), fast enough for SDS on a CPU.

Density sigma = softplus(grid + bias + blob * (1 - r / blob_radius)): the blob (Magic3D /
threestudio) starts the optimisation from a ball instead of empty space. Normals are
-grad(sigma) / |grad(sigma)|, from central differences of the pre-activation field (the
direction is the same, softplus being monotonic) sampled trilinearly, so shading and the
orientation loss send gradients to the density grid. Optional total-variation priors on the
density and albedo grids (`tv_density`, `tv_albedo`) smooth what SDS leaves as per-cell noise.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from dreamline.device import rand
from dreamline.representations.configs import VoxelParams
from dreamline.representations.base import (
    REPRESENTATIONS, BackgroundMLP, Cameras, Lighting, Representation, RenderOutput, canonical,
    grid_points, orientation_penalty, shade,
)


def total_variation(grid: torch.Tensor) -> torch.Tensor:
    """Sum of squared differences between face-neighbouring cells of a (1, C, z, y, x) grid."""
    return sum(((grid.narrow(d, 1, grid.shape[d] - 1) - grid.narrow(d, 0, grid.shape[d] - 1)) ** 2).sum()
               for d in (2, 3, 4))


@REPRESENTATIONS.implements(VoxelParams)
class VoxelField(Representation):
    def __init__(self, p: VoxelParams, generator: torch.Generator | None = None):
        super().__init__()
        self.p = p
        self.bound = p.bound
        r = p.resolution
        # Stored (1, C, z, y, x): grid_sample reads coordinates as (x, y, z).
        self.density = torch.nn.Parameter(torch.zeros(1, 1, r, r, r))
        self.albedo = torch.nn.Parameter(0.1 * torch.randn(1, 3, r, r, r, generator=generator))
        self.background = BackgroundMLP(generator=generator)
        self.register_buffer("blob", self._blob(r), persistent=False)

    def _blob(self, r: int) -> torch.Tensor:
        pts = grid_points(r, self.bound).permute(2, 1, 0, 3)  # [z, y, x, 3]
        radius = pts.norm(dim=-1)
        return (self.p.blob_density * (1.0 - radius / self.p.blob_radius) + self.p.density_bias)[None, None]

    def param_groups(self) -> list[dict]:
        return [{"params": [self.density], "lr": self.p.lr_density, "name": "density"},
                {"params": [self.albedo], "lr": self.p.lr_albedo, "name": "albedo"},
                {"params": list(self.background.parameters()), "lr": self.p.lr_background,
                 "name": "background"}]

    def regulariser(self) -> torch.Tensor:
        loss = torch.zeros((), device=self.density.device)
        for weight, grid in ((self.p.tv_density, self.density), (self.p.tv_albedo, self.albedo)):
            if weight > 0:
                loss = loss + weight * total_variation(grid)
        return loss

    def _field(self) -> torch.Tensor:
        """(1, 7, z, y, x): pre-activation density, its gradient (x, y, z), albedo logits."""
        raw = self.density + self.blob
        cell = 2.0 * self.bound / self.p.resolution
        padded = F.pad(raw, (1, 1, 1, 1, 1, 1), mode="replicate")
        gx = (padded[..., 1:-1, 1:-1, 2:] - padded[..., 1:-1, 1:-1, :-2]) / (2 * cell)
        gy = (padded[..., 1:-1, 2:, 1:-1] - padded[..., 1:-1, :-2, 1:-1]) / (2 * cell)
        gz = (padded[..., 2:, 1:-1, 1:-1] - padded[..., :-2, 1:-1, 1:-1]) / (2 * cell)
        return torch.cat([raw, gx, gy, gz, self.albedo], dim=1)

    def _sample(self, field: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """(M, C) field values at world points (M, 3) inside the cube (border values beyond)."""
        coords = (points / self.bound).reshape(1, -1, 1, 1, 3)
        values = F.grid_sample(field, coords, mode="bilinear", padding_mode="border",
                               align_corners=False)
        return values.reshape(field.shape[1], -1).t()

    def _ccm_box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The current shape's box (detached): cells denser than the mesh threshold."""
        with torch.no_grad():
            sigma = F.softplus(self.density + self.blob)[0, 0]
            occupied = (sigma > self.p.mesh_threshold).nonzero()
            if len(occupied) == 0:
                return (torch.full((3,), -self.bound, device=sigma.device),
                        torch.full((3,), self.bound, device=sigma.device))
            pts = grid_points(self.p.resolution, self.bound, sigma.device).permute(2, 1, 0, 3)
            inside = pts[occupied[:, 0], occupied[:, 1], occupied[:, 2]]
            half = self.bound / self.p.resolution
            return inside.min(0).values - half, inside.max(0).values + half

    def render(self, cams: Cameras, shading: str, light: Lighting | None, background: torch.Tensor,
               generator: torch.Generator | None = None, need_normals: bool = True) -> RenderOutput:
        """`need_normals=False` with albedo shading skips normals (the orientation penalty
        and the normal image are then zero). The sample jitter is drawn from the CPU
        `generator` (dreamline.device) and moved to the field's device."""
        device = self.density.device
        cams = cams.to(device)
        light = light.to(device) if light is not None else None
        origins, dirs = cams.rays()
        n, h, w, _ = dirs.shape
        s = self.p.samples_per_ray
        # Ray / bounding-sphere intersection: |o + t d| = bound.
        b = (origins * dirs).sum(-1)
        c = (origins * origins).sum(-1) - self.bound ** 2
        disc = (b * b - c).clamp_min(0.0).sqrt()
        near = (-b - disc).clamp_min(0.0)
        far = (-b + disc).clamp_min(0.0)
        span = far - near                               # 0 for rays missing the sphere
        offset = (rand((n, h, w, s), generator, device) if generator is not None
                  else torch.full((n, h, w, s), 0.5, device=device))   # stratified while training
        t = near[..., None] + span[..., None] * (torch.arange(s, dtype=torch.float32, device=device) + offset) / s
        delta = (span / s)[..., None].expand(n, h, w, s)
        points = origins[..., None, :] + dirs[..., None, :] * t[..., None]

        field = self._field()
        if not need_normals and shading == "albedo":
            field = field[:, [0, 4, 5, 6]]              # skip the gradient channels (~40% of the cost)
        values = self._sample(field, points.reshape(-1, 3)).reshape(n, h, w, s, field.shape[1])
        sigma = F.softplus(values[..., 0])
        albedo = torch.sigmoid(values[..., -3:])
        normals = None
        if field.shape[1] == 7:
            grad = values[..., 1:4]
            normals = -grad * torch.rsqrt((grad * grad).sum(-1, keepdim=True) + 1e-12)

        alpha = 1.0 - torch.exp(-sigma * delta)
        transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[..., :1]), 1.0 - alpha[..., :-1] + 1e-10],
                                                dim=-1), dim=-1)
        weights = alpha * transmittance                 # (n, h, w, s)
        acc = weights.sum(-1)

        colour = shade(albedo, normals, points, light, shading)
        rgb = (weights[..., None] * colour).sum(-2)
        forward = -cams.c2w[:, :3, 2]                   # the camera's viewing axis
        z = t * (dirs * forward[:, None, None, :]).sum(-1, keepdim=True)
        depth = (weights * z).sum(-1)
        normal = (weights[..., None] * normals).sum(-2) if normals is not None else torch.zeros_like(rgb)
        box_min, box_max = self._ccm_box()
        ccm = (weights[..., None] * canonical(points, box_min, box_max)).sum(-2)

        def img(x: torch.Tensor) -> torch.Tensor:
            return x.reshape(n, h, w, -1).permute(0, 3, 1, 2)

        opacity = img(acc)
        return RenderOutput(
            rgb=img(rgb) + (1.0 - opacity) * background.to(device), opacity=opacity, depth=img(depth),
            normal=img(normal), ccm=img(ccm),
            orientation=(orientation_penalty(weights, normals, dirs) if normals is not None
                         else torch.zeros((), device=device)))

    @torch.no_grad()
    def density_on_grid(self, resolution: int) -> np.ndarray:
        pts = grid_points(resolution, self.bound, self.density.device)   # [x, y, z, 3]
        raw = self._sample(self._field()[:, :1], pts.reshape(-1, 3))
        return F.softplus(raw).reshape(resolution, resolution, resolution).cpu().numpy()

    @torch.no_grad()
    def albedo_at(self, points: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self._sample(self.albedo, points.float().to(self.albedo.device)))
