"""3D representations for distillation, chosen by `representation_type` (registry)."""
from __future__ import annotations

import importlib

import torch

from dreamline.representations.base import REPRESENTATIONS, Cameras, Lighting, Representation, RenderOutput

_MODULES = ("dreamline.representations.voxel", "dreamline.representations.gaussians")


def build_representation(name: str, config, generator: torch.Generator | None = None) -> Representation:
    for module in _MODULES:
        importlib.import_module(module)
    return REPRESENTATIONS.get(name)(config, generator)


__all__ = ["REPRESENTATIONS", "Cameras", "Lighting", "Representation", "RenderOutput",
           "build_representation"]
