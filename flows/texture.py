"""Prefect flow of the texture stage (MVDiffusion depth-to-image texturing, evaluated)."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from dreamline import paths
from dreamline.atomic import write_json_atomic
from dreamline.config import Params
from tasks.common import compute_target
from tasks.texturing import texture_task

TEXTURE = paths.DATA / "texture"


@flow(name="texture")
def texture_flow(params: Params, curated: Path = paths.CURATED, captions: Path = paths.CAPTIONS / "captions.parquet",
                 renders: Path = paths.RENDERS, out_dir: Path = TEXTURE, distill_root: Path = paths.DISTILL) -> dict:
    device, precision = compute_target(params.compute.device, params.compute.precision)
    metrics = texture_task(params.texture, curated, captions, renders, Path(out_dir) / "objects", distill_root,
                           Path(out_dir) / "distilled", device, precision)
    write_json_atomic(Path(out_dir) / "metrics.json", metrics)
    c = metrics["consistency"]
    get_run_logger().info("overlap PSNR: CAA %.2f dB vs independent %.2f dB over %d objects",
                          c["caa"]["psnr"], c["independent"]["psnr"], metrics["objects"])
    return {"psnr_caa": c["caa"]["psnr"], "psnr_independent": c["independent"]["psnr"]}
