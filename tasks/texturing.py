"""Prefect task of the texture stage."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import run_logger


@task(name="texture", cache_policy=NO_CACHE)
def texture_task(p, curated: Path, captions: Path, renders: Path, out_dir: Path, distill_root: Path,
                 distilled_out: Path, device=None, precision: str = "fp32") -> dict:
    from dreamline.texturing.texture import texture

    Path(distilled_out).mkdir(parents=True, exist_ok=True)    # a DVC output even with texture.distilled off
    return texture(p, Path(curated), Path(captions), Path(renders), Path(out_dir), log=run_logger().info,
                   distill_root=Path(distill_root), distilled_out=Path(distilled_out), device=device,
                   precision=precision)
