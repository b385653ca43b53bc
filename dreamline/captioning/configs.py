"""The captioners' typed configs (`caption.captioner` blocks) and their registry."""
from __future__ import annotations

from pydantic import Field

from dreamline.registry import Registry
from dreamline.typed import Strict

CAPTIONERS: Registry[type] = Registry("captioner")


@CAPTIONERS.config("template")
class TemplateCaptionerParams(Strict):
    # How many alternative phrasings the template captioner picks from per object.
    variety: int = Field(6, ge=1, le=16)
    suffix: str = ""


@CAPTIONERS.config("image")
class ImageCaptionerParams(Strict):
    model_path: str = "models/captioner"
    n_views: int = Field(4, ge=1, le=32)
    resolution: int = Field(224, ge=16, le=1024)
    max_new_tokens: int = Field(30, ge=1, le=200)
    elevation_deg: float = Field(20.0, ge=-89.0, le=89.0)
    # Where and at what precision: params `compute` (device, precision), passed in by the flow.
