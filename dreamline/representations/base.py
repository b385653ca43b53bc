"""What every 3D representation shares: batched cameras, rays, shading and the render output.

Camera convention: dreamline.rendering.cameras (OpenGL; c2w columns = right, up, back,
position; vertical field of view). Representations live in the cube [-bound, bound]^3.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from dreamline.device import rand
from dreamline.representations.configs import REPRESENTATIONS  # noqa: F401 (re-export)

SHADINGS = ("albedo", "lambertian", "textureless")


@dataclass
class Cameras:
    """N pinhole cameras of one image size."""
    c2w: torch.Tensor          # (N, 4, 4) float32
    fov_deg: torch.Tensor      # (N,) vertical field of view
    height: int
    width: int

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @classmethod
    def from_numpy(cls, c2w, fov_deg, height: int, width: int | None = None) -> "Cameras":
        c2w = torch.as_tensor(np.asarray(c2w), dtype=torch.float32).reshape(-1, 4, 4)
        fov = torch.as_tensor(np.asarray(fov_deg, dtype=np.float32)).reshape(-1).expand(c2w.shape[0])
        return cls(c2w, fov.clone(), int(height), int(width or height))

    def to(self, device: torch.device | str | None) -> "Cameras":
        """These cameras with their tensors on `device` (None: as they are)."""
        if device is None:
            return self
        return Cameras(self.c2w.to(device), self.fov_deg.to(device), self.height, self.width)

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def flat16(self) -> torch.Tensor:
        """(N, 16) row-major c2w: the camera conditioning of the multi-view and AGP models."""
        return self.c2w.reshape(-1, 16)

    def focal(self) -> torch.Tensor:
        return 0.5 * self.height / torch.tan(torch.deg2rad(self.fov_deg) / 2.0)

    @property
    def positions(self) -> torch.Tensor:
        return self.c2w[:, :3, 3]

    def rays(self) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space origins and unit directions, (N, H, W, 3), through pixel centres."""
        j = torch.arange(self.width, dtype=torch.float32, device=self.device) + 0.5
        i = torch.arange(self.height, dtype=torch.float32, device=self.device) + 0.5
        f = self.focal().reshape(-1, 1, 1)
        x = (j.reshape(1, 1, -1) - self.width / 2.0) / f
        y = -(i.reshape(1, -1, 1) - self.height / 2.0) / f
        x, y = torch.broadcast_tensors(x, y)
        d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)
        d = torch.einsum("nij,nhwj->nhwi", self.c2w[:, :3, :3], d_cam)
        d = d / d.norm(dim=-1, keepdim=True)
        o = self.positions.reshape(-1, 1, 1, 3).expand_as(d)
        return o, d

    def world_to_camera(self, points: torch.Tensor) -> torch.Tensor:
        """(N, M, 3) world points -> camera coordinates (camera looks down -z)."""
        r, t = self.c2w[:, :3, :3], self.c2w[:, :3, 3]
        return torch.einsum("nji,nmj->nmi", r, points - t[:, None, :])


@dataclass
class Lighting:
    """A point light per camera plus ambient (DreamFusion's lambertian shading)."""
    position: torch.Tensor     # (N, 3) world
    ambient: float = 0.1
    diffuse: float = 0.9

    def to(self, device: torch.device | str | None) -> "Lighting":
        return self if device is None else Lighting(self.position.to(device), self.ambient, self.diffuse)


@dataclass
class RenderOutput:
    """Images (N, C, H, W). rgb is composited over `background`; ccm over 0 (black)."""
    rgb: torch.Tensor
    opacity: torch.Tensor      # (N, 1, H, W) accumulated alpha
    depth: torch.Tensor        # (N, 1, H, W) distance along the view axis, 0 on background
    normal: torch.Tensor       # (N, 3, H, W) world normals, alpha-weighted (0 on background)
    ccm: torch.Tensor          # (N, 3, H, W) canonical coordinates in [0, 1], 0 on background
    orientation: torch.Tensor  # scalar: DreamFusion's orientation penalty of this render
    extras: dict = field(default_factory=dict)


def shade(albedo: torch.Tensor, normal: torch.Tensor, points: torch.Tensor,
          light: Lighting | None, mode: str) -> torch.Tensor:
    """Colour of surface samples. albedo/normal/points (N, ..., 3); light per camera (N, 3).

    albedo: the albedo; textureless: white albedo lit; lambertian: albedo lit by the
    point light, ambient + diffuse * max(0, n . l)."""
    if mode not in SHADINGS:
        raise ValueError(f"shading must be one of {SHADINGS}, got {mode!r}")
    if mode == "albedo":
        return albedo
    if light is None:
        raise ValueError(f"shading {mode!r} needs a light")
    base = torch.ones_like(albedo) if mode == "textureless" else albedo
    shape = (points.shape[0],) + (1,) * (points.ndim - 2) + (3,)
    to_light = light.position.reshape(shape) - points
    to_light = to_light / to_light.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    lambert = (normal * to_light).sum(-1, keepdim=True).clamp_min(0.0)
    return base * (light.ambient + light.diffuse * lambert)


def orientation_penalty(weights: torch.Tensor, normals: torch.Tensor, view_dirs: torch.Tensor) -> torch.Tensor:
    """DreamFusion's orientation loss: sum_i w_i max(0, n_i . d)^2 averaged over rays, with d
    the ray direction (camera -> point): penalises visible normals facing away from the camera.
    weights (..., S), normals (..., S, 3), view_dirs (..., 3) or (..., S, 3)."""
    if view_dirs.ndim == normals.ndim - 1:
        view_dirs = view_dirs.unsqueeze(-2)
    facing_away = (normals * view_dirs).sum(-1).clamp_min(0.0)
    return (weights.detach() * facing_away ** 2).sum(-1).mean()


def background_images(kind: str, n: int, height: int, width: int, generator: torch.Generator,
                      dirs: torch.Tensor | None = None, mlp: torch.nn.Module | None = None,
                      device: torch.device | None = None) -> torch.Tensor:
    """(N, 3, H, W) backgrounds: white (the priors' training background), a random colour
    per view (MVDream), or DreamFusion's learned environment MLP of the ray direction.
    On `device`; random colours are drawn from the CPU `generator` (dreamline.device)."""
    if kind == "white":
        return torch.ones(n, 3, height, width, device=device)
    if kind == "random":
        return rand((n, 3, 1, 1), generator, device).expand(n, 3, height, width)
    if kind == "mlp":
        if mlp is None or dirs is None:
            raise ValueError("background 'mlp' needs the background network and ray directions")
        return mlp(dirs).permute(0, 3, 1, 2)
    raise ValueError(f"background must be white, random or mlp, got {kind!r}")


class BackgroundMLP(torch.nn.Module):
    """A small MLP from ray direction (with a few frequencies) to colour."""

    def __init__(self, hidden: int = 32, frequencies: int = 2, generator: torch.Generator | None = None):
        super().__init__()
        self.frequencies = frequencies
        # Built without touching the global RNG, then drawn from `generator` with nn.Linear's
        # default bounds: the same seed gives the same network, whatever ran before.
        with torch.random.fork_rng(devices=[]):
            self.net = torch.nn.Sequential(torch.nn.Linear(3 + 6 * frequencies, hidden), torch.nn.ReLU(),
                                           torch.nn.Linear(hidden, 3))
        if generator is not None:
            with torch.no_grad():
                for layer in self.net:
                    if isinstance(layer, torch.nn.Linear):
                        bound = 1.0 / math.sqrt(layer.in_features)
                        for param in (layer.weight, layer.bias):
                            param.copy_((torch.rand(param.shape, generator=generator) * 2 - 1) * bound)

    def forward(self, dirs: torch.Tensor) -> torch.Tensor:
        feats = [dirs]
        for k in range(self.frequencies):
            feats += [torch.sin(dirs * math.pi * 2 ** k), torch.cos(dirs * math.pi * 2 ** k)]
        return torch.sigmoid(self.net(torch.cat(feats, dim=-1)))


class Representation(torch.nn.Module):
    """A differentiable 3D representation inside [-bound, bound]^3.

    Subclasses implement `render`, `param_groups`, `density_on_grid` and `albedo_at`; the
    exporters (marching cubes, turntables) only use those."""

    bound: float

    @property
    def device(self) -> torch.device:
        """Where the parameters (and so the renders) are."""
        return next(self.parameters()).device

    def render(self, cams: Cameras, shading: str, light: Lighting | None, background: torch.Tensor,
               generator: torch.Generator | None = None, need_normals: bool = True) -> RenderOutput:
        """`generator` jitters samples (training); None renders deterministically."""
        raise NotImplementedError

    def param_groups(self) -> list[dict]:
        raise NotImplementedError

    @torch.no_grad()
    def density_on_grid(self, resolution: int) -> np.ndarray:
        """(R, R, R) density (or occupancy) sampled at the centres of an R^3 grid over the
        bounding cube, indexed [x, y, z]."""
        raise NotImplementedError

    @torch.no_grad()
    def albedo_at(self, points: torch.Tensor) -> torch.Tensor:
        """(M, 3) albedo in [0, 1] at world points (M, 3)."""
        raise NotImplementedError

    def regulariser(self) -> torch.Tensor:
        """The representation's own prior on its parameters (smoothness), already weighted by
        its config; added to the distillation loss each step."""
        return torch.zeros((), device=self.device)

    def post_step(self, step: int) -> None:
        """Hook after each optimiser step (pruning, clamping)."""


def grid_points(resolution: int, bound: float, device: torch.device | None = None) -> torch.Tensor:
    """(R, R, R, 3) cell centres of an R^3 grid over [-bound, bound]^3, indexed [x, y, z]."""
    c = (torch.arange(resolution, dtype=torch.float32, device=device) + 0.5) / resolution * 2 * bound - bound
    x, y, z = torch.meshgrid(c, c, c, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


def canonical(points: torch.Tensor, box_min: torch.Tensor, box_max: torch.Tensor) -> torch.Tensor:
    """Canonical coordinates in [0, 1] per axis of the shape's own box (SweetDreamer's CCM,
    anisotropic like the render stage's)."""
    return ((points - box_min) / (box_max - box_min).clamp_min(1e-3)).clamp(0.0, 1.0)
