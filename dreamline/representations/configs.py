"""The representations' typed configs (`distill.representation` blocks) and their registry.

Light on purpose (pydantic only): every stage validates params.yaml, the implementations
(voxel, gaussians) need torch."""
from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from dreamline.registry import Registry
from dreamline.typed import Strict

REPRESENTATIONS: Registry[type] = Registry("representation")


@REPRESENTATIONS.config("voxel")
class VoxelParams(Strict):
    """A density + albedo voxel grid, trilinearly interpolated (DVGO / PLATFORM feasibility)."""
    resolution: int = Field(32, ge=4, le=512)
    bound: float = Field(0.6, gt=0.0, le=10.0)          # the cube [-bound, bound]^3
    samples_per_ray: int = Field(32, ge=4, le=1024)     # inside the bounding sphere (~1 per cell)
    # DreamFusion/Magic3D density blob: sigma = softplus(grid + bias + blob * (1 - r/radius)).
    density_bias: float = -1.0
    blob_density: float = Field(10.0, ge=0.0)
    blob_radius: float = Field(0.35, gt=0.0)
    lr_density: float = Field(0.05, gt=0.0)
    lr_albedo: float = Field(0.05, gt=0.0)
    lr_background: float = Field(0.01, gt=0.0)
    # Total variation (sum of squared differences between neighbouring cells) of the learned
    # density and albedo-logit grids: without it each cell follows its own noisy SDS gradient
    # and the surface (so its normals and shading) comes out as speckle.
    tv_density: float = Field(0.01, ge=0.0)
    tv_albedo: float = Field(0.0, ge=0.0)
    mesh_threshold: float = Field(5.0, gt=0.0)         # density of the exported isosurface


@REPRESENTATIONS.config("gaussians")
class GaussianParams(Strict):
    """3D Gaussians (isotropic colour, no SH), rasterised in pure torch or with gsplat."""
    num_points: int = Field(2048, ge=1, le=5_000_000)
    init: Literal["sphere", "box", "points"] = "sphere"
    init_radius: float = Field(0.3, gt=0.0)             # sphere radius / box half-size
    init_points: Optional[str] = None                   # a point cloud (.ply/.npy) for init=points
    bound: float = Field(0.6, gt=0.0, le=10.0)
    initial_scale: float = Field(0.03, gt=0.0)
    initial_opacity: float = Field(0.3, gt=0.0, lt=1.0)
    max_scale: float = Field(0.15, gt=0.0)
    lr_position: float = Field(0.002, gt=0.0)
    lr_scale: float = Field(0.01, gt=0.0)
    lr_rotation: float = Field(0.005, gt=0.0)
    lr_opacity: float = Field(0.05, gt=0.0)
    lr_colour: float = Field(0.02, gt=0.0)
    lr_background: float = Field(0.01, gt=0.0)
    rasteriser: Literal["auto", "torch", "gsplat"] = "auto"   # auto: gsplat on CUDA when installed
    mesh_threshold: float = Field(0.5, gt=0.0)         # summed opacity-weighted Gaussians
