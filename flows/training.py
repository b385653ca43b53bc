"""Prefect flows of the training stages: train_base, train_mv, train_agp, dreambooth, and
MVDiffusion's train_depth and train_caa.

One flow per DVC stage (so each shows under its own name); all run the same `train` task
on their params section."""
from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from dreamline import paths
from dreamline.config import Params
from tasks.training import train

CAPTIONS = paths.CAPTIONS / "captions.parquet"


def _run(model: str, trainer: str, p, renders: Path, captions: Path, models: Path, checkpoints: Path) -> dict:
    # The trainer is named in each flow (not looked up in a table) so that each stage's code
    # dependencies, derived from what it imports (scripts/stage_deps.py), are its own.
    summary = train.with_options(name=f"train-{model}")(
        trainer, p, Path(renders), Path(captions), Path(models) / model, Path(checkpoints) / model)
    t = summary.get("training") or {}
    get_run_logger().info("%s: %s steps, %.1f samples/s, held-out: %s", model, t.get("steps"),
                          t.get("samples_per_s") or 0.0, summary.get("heldout"))
    return summary


@flow(name="train-base")
def train_base_flow(params: Params, renders: Path = paths.RENDERS, captions: Path = CAPTIONS,
                    models: Path = paths.MODELS, checkpoints: Path = paths.CHECKPOINTS) -> dict:
    return _run("base", "dreamline.training.base:train_base", params.train_base, renders, captions, models, checkpoints)


@flow(name="train-mv")
def train_mv_flow(params: Params, renders: Path = paths.RENDERS, captions: Path = CAPTIONS,
                  models: Path = paths.MODELS, checkpoints: Path = paths.CHECKPOINTS) -> dict:
    return _run("mv", "dreamline.training.multiview:train_mv", params.train_mv, renders, captions, models, checkpoints)


@flow(name="train-mv-3d")
def train_mv_3d_flow(params: Params, renders: Path = paths.RENDERS, captions: Path = CAPTIONS,
                     models: Path = paths.MODELS, checkpoints: Path = paths.CHECKPOINTS) -> dict:
    """The multi-view model on 3D data only (no joint 2D batches): MVDream Table 1's ablation row."""
    return _run("mv_3d", "dreamline.training.multiview:train_mv", params.train_mv_3d, renders, captions, models, checkpoints)


@flow(name="train-agp")
def train_agp_flow(params: Params, renders: Path = paths.RENDERS, captions: Path = CAPTIONS,
                   models: Path = paths.MODELS, checkpoints: Path = paths.CHECKPOINTS) -> dict:
    return _run("agp", "dreamline.training.agp:train_agp", params.train_agp, renders, captions, models, checkpoints)


@flow(name="dreambooth")
def dreambooth_flow(params: Params, renders: Path = paths.RENDERS, captions: Path = CAPTIONS,
                    models: Path = paths.MODELS, checkpoints: Path = paths.CHECKPOINTS) -> dict:
    """MVDreamBooth on `params.dreambooth.images` (a folder), or the default identity."""
    return _run("dreambooth", "dreamline.training.dreambooth:dreambooth", params.dreambooth, renders, captions, models, checkpoints)


@flow(name="train-depth")
def train_depth_flow(params: Params, renders: Path = paths.RENDERS, captions: Path = CAPTIONS,
                     models: Path = paths.MODELS, checkpoints: Path = paths.CHECKPOINTS) -> dict:
    """MVDiffusion stage 1: the depth-conditioned base (data/models/depth)."""
    return _run("depth", "dreamline.texturing.training:train_depth", params.train_depth, renders, captions, models, checkpoints)


@flow(name="train-caa")
def train_caa_flow(params: Params, renders: Path = paths.RENDERS, captions: Path = CAPTIONS,
                   models: Path = paths.MODELS, checkpoints: Path = paths.CHECKPOINTS) -> dict:
    """MVDiffusion stage 2: CAA blocks on the frozen depth model (data/models/mvdiffusion)."""
    return _run("mvdiffusion", "dreamline.texturing.training:train_caa", params.train_caa, renders, captions, models, checkpoints)
