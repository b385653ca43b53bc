"""Score distillation guidance: one registry (`guidance_type`, terms joined by "+").

The typed configs (dreamline.guidance.configs) import without torch, because every stage
validates params; the implementations (terms, prior) load on first use of these names."""
from __future__ import annotations

__all__ = ["DiffusionPrior", "GUIDANCES", "Guidance", "StepInput", "build_guidance"]


def __getattr__(name: str):
    # The module names live in here, not at top level: the stages' derived code deps
    # (dreamline.lineage.code) count a top-level "dreamline.x" string as an import.
    if name == "DiffusionPrior":
        from dreamline.guidance.prior import DiffusionPrior
        return DiffusionPrior
    if name in __all__:
        from dreamline.guidance import terms
        return getattr(terms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
