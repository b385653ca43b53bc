"""Prefect task over one prompt's distillation. A retry resumes from the last checkpoint."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from dreamline.distill.run import distill_prompt
from dreamline.runinfo import read_run
from tasks.common import run_logger


@task(name="distill", cache_policy=NO_CACHE, retries=1)
def distill_one(p, slug: str, prompt: str, out_dir: Path, work_dir: Path, priors=None) -> dict:
    logger = run_logger()
    summary = distill_prompt(p, slug, prompt, Path(out_dir), Path(work_dir), priors=priors, log=logger.info)
    run = read_run(out_dir).get("distill", {})
    if "assets" in summary and "iterations_per_s" in run:
        logger.info("%s: %s steps at %.2f it/s, mesh %s", slug, summary["steps"],
                    run["iterations_per_s"], summary["assets"]["mesh"])
    return summary
