"""Prefect flow of one `ablation@<guidance>-<slug>` instance: the distill flow with another
guidance type and step count, into data/ablation/<guidance>/<slug>."""
from __future__ import annotations

from pathlib import Path

from prefect import flow

from dreamline import paths
from dreamline.config import Params
from flows.distill import distill_flow


@flow(name="ablation")
def ablation_flow(params: Params, guidance: str, slug: str, out_root: Path = paths.ABLATION) -> dict:
    if guidance not in params.ablation.guidance_types:
        raise ValueError(f"guidance {guidance!r} is not in ablation.guidance_types {list(params.ablation.guidance_types)}")
    distill = params.distill.model_copy(update={"guidance_type": guidance, "steps": params.ablation.steps})
    run = params.model_copy(update={"distill": distill})
    return distill_flow(run, [slug], out_root=Path(out_root) / guidance,
                        checkpoints=paths.CHECKPOINTS / "ablation" / guidance)
