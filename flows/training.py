"""Prefect flows of the training stages: train_base, train_mv, train_agp."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from dreamline import paths
from dreamline.config import Params
from tasks import training


def _run(task, p, name: str, renders: Path, captions: Path, models: Path, checkpoints: Path) -> dict:
    summary = task(p, Path(renders), Path(captions), Path(models) / name, Path(checkpoints) / name)
    t = summary.get("training") or {}
    get_run_logger().info("%s: %s steps, %.1f samples/s, held-out: %s", name, t.get("steps"),
                          t.get("samples_per_s") or 0.0, summary.get("heldout"))
    return summary


@flow(name="train-base")
def train_base_flow(params: Params, renders: Path = paths.RENDERS,
                    captions: Path = paths.CAPTIONS / "captions.parquet",
                    models: Path = paths.MODELS, checkpoints: Path = paths.CHECKPOINTS) -> dict:
    return _run(training.train_base, params.train_base, "base", renders, captions, models, checkpoints)


@flow(name="train-mv")
def train_mv_flow(params: Params, renders: Path = paths.RENDERS,
                  captions: Path = paths.CAPTIONS / "captions.parquet",
                  models: Path = paths.MODELS, checkpoints: Path = paths.CHECKPOINTS) -> dict:
    return _run(training.train_mv, params.train_mv, "mv", renders, captions, models, checkpoints)


@flow(name="train-agp")
def train_agp_flow(params: Params, renders: Path = paths.RENDERS,
                   captions: Path = paths.CAPTIONS / "captions.parquet",
                   models: Path = paths.MODELS, checkpoints: Path = paths.CHECKPOINTS) -> dict:
    return _run(training.train_agp, params.train_agp, "agp", renders, captions, models, checkpoints)


@flow(name="dreambooth")
def dreambooth_flow(params: Params, renders: Path = paths.RENDERS,
                    captions: Path = paths.CAPTIONS / "captions.parquet",
                    models: Path = paths.MODELS, checkpoints: Path = paths.CHECKPOINTS) -> dict:
    """MVDreamBooth on `params.dreambooth.images` (a folder), or the default identity."""
    summary = training.dreambooth(params.dreambooth, Path(models) / "dreambooth",
                                  Path(checkpoints) / "dreambooth", Path(renders), Path(captions))
    get_run_logger().info("dreambooth: %s", {k: v for k, v in summary.items() if k != "training"})
    return summary
