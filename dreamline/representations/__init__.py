"""3D representations for distillation, chosen by `representation_type` (registry).

The typed configs (dreamline.representations.configs) import without torch, because every
stage validates params; the implementations load on first use of these names."""
from __future__ import annotations

__all__ = ["REPRESENTATIONS", "Cameras", "Lighting", "Representation", "RenderOutput",
           "build_representation"]


def __getattr__(name: str):
    # Imports in here, not at top level: the stages' derived code deps count those.
    if name == "build_representation":
        from dreamline.representations.build import build_representation
        return build_representation
    if name in __all__:
        from dreamline.representations import base
        return getattr(base, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
