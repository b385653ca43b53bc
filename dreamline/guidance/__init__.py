"""Score distillation guidance: one registry (`guidance_type`, terms joined by "+")."""
from dreamline.guidance.prior import DiffusionPrior
from dreamline.guidance.terms import GUIDANCES, Guidance, StepInput, build_guidance

__all__ = ["DiffusionPrior", "GUIDANCES", "Guidance", "StepInput", "build_guidance"]
