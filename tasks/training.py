"""Prefect task over the training loops. A retry is safe: training resumes from its last
checkpoint and ends with the weights of an unbroken run."""
from __future__ import annotations

import importlib
import shutil
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE


@task(name="train", cache_policy=NO_CACHE, retries=1)
def train(trainer: str, p, renders: Path, captions: Path, out_dir: Path, work_dir: Path) -> dict:
    """`trainer`: "module:function" of the dreamline function that trains the model,
    called as function(params, renders, captions, out_dir, work_dir)."""
    module, _, func = trainer.partition(":")
    summary = getattr(importlib.import_module(module), func)(p, renders, captions, out_dir, work_dir)
    shutil.rmtree(work_dir, ignore_errors=True)  # the model is saved; checkpoints are scratch
    return summary
