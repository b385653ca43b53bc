"""The 16 numbers a camera-conditioned UNet sees per view, in the convention it was trained on.

dreamline's models learn from its own cameras: the row-major camera-to-world matrix of the
renders (y-up OpenGL world, camera at its render distance). The released MVDream model
(sd-v2.1-base-4view, converted by scripts/convert_mvdream.py) learned from MVDream's cameras:
the same OpenGL camera axes in a z-up world (its `get_camera` left-multiplies a y/z flip,
threestudio's world is z-up already) with the camera moved onto the unit sphere
(`normalize_camera`: the translation divided by its length). A pipeline folder records which
one its UNet expects (`camera_convention` in model_index.json; absent = dreamline) and the
pipelines and priors convert at the UNet's input, so callers always pass dreamline cameras.
"""
from __future__ import annotations

import torch

CONVENTIONS = ("dreamline", "mvdream")
# y-up -> z-up: (x, y, z) -> (x, -z, y), applied to the world side of camera-to-world.
_FLIP_YZ = torch.tensor([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0],
                         [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def check_convention(name: str) -> str:
    if name not in CONVENTIONS:
        raise ValueError(f"camera_convention {name!r}: one of {list(CONVENTIONS)}")
    return name


def camera_input(cameras: torch.Tensor, convention: str = "dreamline") -> torch.Tensor:
    """(..., 16) dreamline cameras -> the UNet's camera input in `convention`."""
    if check_convention(convention) == "dreamline":
        return cameras
    m = cameras.reshape(-1, 4, 4).float()
    t = m[:, :3, 3]
    m = torch.cat([torch.cat([m[:, :3, :3], (t / t.norm(dim=-1, keepdim=True).clamp_min(1e-8))[..., None]], -1),
                   m[:, 3:]], 1)
    return (_FLIP_YZ.to(m.device) @ m).reshape(cameras.shape).to(cameras.dtype)
