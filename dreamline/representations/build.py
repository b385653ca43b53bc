"""Build a registered representation from its typed config."""
from __future__ import annotations

import torch

from dreamline.representations import gaussians, voxel  # noqa: F401 (the implementations register)
from dreamline.representations.base import Representation
from dreamline.representations.configs import REPRESENTATIONS


def build_representation(name: str, config, generator: torch.Generator | None = None) -> Representation:
    return REPRESENTATIONS.get(name)(config, generator)
