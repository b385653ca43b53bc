"""Prefect task over the training loops. A retry is safe: training resumes from its last
checkpoint and ends with the weights of an unbroken run."""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

# model name -> the dreamline function that trains it: (params, renders, captions, out, work)
TRAINERS = {
    "base": "dreamline.training.base:train_base",
    "mv": "dreamline.training.multiview:train_mv",
    "mv_3d": "dreamline.training.multiview:train_mv",
    "agp": "dreamline.training.agp:train_agp",
    "dreambooth": "dreamline.training.dreambooth:dreambooth",
    "depth": "dreamline.texturing.training:train_depth",
    "mvdiffusion": "dreamline.texturing.training:train_caa",
}


@task(name="train", cache_policy=NO_CACHE, retries=1)
def train(model: str, p, renders: Path, captions: Path, out_dir: Path, work_dir: Path) -> dict:
    module, _, func = TRAINERS[model].partition(":")
    summary = getattr(importlib.import_module(module), func)(p, renders, captions, out_dir, work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)  # the model is saved; checkpoints are scratch
    return summary
