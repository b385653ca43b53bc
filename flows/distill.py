"""Prefect flow of the `distill` stage: one task per prompt, run one after another (each
already uses every core through torch), sharing the loaded priors, on `compute.device` at
`compute.precision`."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from dreamline import paths
from dreamline.config import Params
from dreamline.device import describe as dl_describe
from dreamline.distill.loop import PriorCache
from tasks.common import compute_target
from tasks.distill import distill_one


@flow(name="distill")
def distill_flow(params: Params, slugs: list[str] | None = None, out_root: Path = paths.DISTILL,
                 checkpoints: Path = paths.CHECKPOINTS / "distill") -> dict:
    p = params.distill
    slugs = list(p.prompts) if not slugs else slugs
    unknown = [s for s in slugs if s not in p.prompts]
    if unknown:
        raise ValueError(f"unknown prompt slugs {unknown}; distill.prompts has {sorted(p.prompts)}")
    device, precision = compute_target(params.compute.device, params.compute.precision)
    priors = PriorCache(device=device, precision=precision)
    get_run_logger().info("distill on %s at %s", dl_describe(device, precision)["device_name"], precision)
    summaries = {}
    for slug in slugs:
        summaries[slug] = distill_one.with_options(name=f"distill-{slug}")(
            p, slug, p.prompts[slug], Path(out_root) / slug, Path(checkpoints) / slug, priors)
    get_run_logger().info("distilled %d prompt(s): %s", len(summaries), ", ".join(summaries))
    return {slug: {k: s.get(k) for k in ("steps", "final_loss")} for slug, s in summaries.items()}
