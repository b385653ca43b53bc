"""The guidance terms' typed configs (`distill.guidance.<term>` blocks) and their registry.

Light on purpose (pydantic only): every stage validates params.yaml, the implementations
(dreamline.guidance.terms) need torch and the priors."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from dreamline.registry import Registry
from dreamline.typed import Range, Strict

GUIDANCES: Registry[type] = Registry("guidance")


@GUIDANCES.config("sds")
class SDSParams(Strict):
    """DreamFusion SDS with the 2D base model."""
    weight: float = Field(1.0, ge=0.0)
    model: str = "data/models/base"
    guidance_scale: float = Field(7.5, ge=0.0, le=200.0)   # paper 100 (Imagen); ours breaks far above 10
    t_range: Range = (0.02, 0.98)
    weighting: Literal["sds", "snr", "uniform"] = "sds"    # w(t) = 1 - alpha_bar (sigma_t^2)
    view_prompts: bool = True                              # ", front view" / side / back / overhead
    negative_prompt: str = ""
    perp_neg: bool = False                                 # Armandpour et al. 2023
    perp_neg_weight: float = Field(1.0, ge=0.0)


@GUIDANCES.config("mv-sds")
class MVSDSParams(Strict):
    """MVDream multi-view SDS in its x0-reconstruction form."""
    weight: float = Field(1.0, ge=0.0)
    model: str = "data/models/mv"
    guidance_scale: float = Field(7.5, ge=0.0, le=200.0)   # reference 50
    guidance_rescale: float = Field(0.5, ge=0.0, le=1.0)
    # (start, end) of the annealed timestep bounds, reached after anneal_fraction of the run.
    min_step: Range = (0.98, 0.02)
    max_step: Range = (0.98, 0.50)
    anneal_fraction: float = Field(0.8, gt=0.0, le=1.0)
    negative_prompt: str = ""
    num_views: int = Field(4, ge=1, le=16)


@GUIDANCES.config("ism")
class ISMParams(Strict):
    """LucidDreamer interval score matching."""
    weight: float = Field(1.0, ge=0.0)
    model: str = "data/models/base"
    guidance_scale: float = Field(7.5, ge=0.0, le=200.0)
    t_range: Range = (0.02, 0.5)
    delta_t: int = Field(50, ge=1)                 # interval s = t - delta_t, at the end of the run
    delta_t_start: int = Field(100, ge=1)          # larger interval early (geometry)
    inversion_steps: int = Field(5, ge=1, le=100)  # DDIM inversion steps from x0 to x_s
    weighting: Literal["sds", "snr", "uniform"] = "sds"
    view_prompts: bool = True
    negative_prompt: str = ""
    perp_neg: bool = False
    perp_neg_weight: float = Field(1.0, ge=0.0)


@GUIDANCES.config("agp")
class AGPGuidanceParams(Strict):
    """SweetDreamer's AGP term: SDS of the CCM model on the rendered CCM (geometry only)."""
    weight: Range = (1.0, 0.2)                     # linear from start to end of the run
    model: str = "data/models/agp"
    guidance_scale: float = Field(5.0, ge=0.0, le=200.0)
    t_range: Range = (0.02, 0.98)
    weighting: Literal["sds", "snr", "uniform"] = "sds"
