"""Prefect tasks over the training loops. A retry is safe: training resumes from its last
checkpoint and ends with the weights of an unbroken run."""
from __future__ import annotations

import shutil
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE


def _finish(work_dir: Path, summary: dict) -> dict:
    shutil.rmtree(work_dir, ignore_errors=True)  # the model is saved; checkpoints are scratch
    return summary


@task(name="train-base", cache_policy=NO_CACHE, retries=1)
def train_base(p, renders: Path, captions: Path, out_dir: Path, work_dir: Path) -> dict:
    from dreamline.training.base import train_base as run

    return _finish(work_dir, run(p, renders, captions, out_dir, work_dir))


@task(name="train-mv", cache_policy=NO_CACHE, retries=1)
def train_mv(p, renders: Path, captions: Path, out_dir: Path, work_dir: Path) -> dict:
    from dreamline.training.multiview import train_mv as run

    return _finish(work_dir, run(p, renders, captions, out_dir, work_dir))


@task(name="train-agp", cache_policy=NO_CACHE, retries=1)
def train_agp(p, renders: Path, captions: Path, out_dir: Path, work_dir: Path) -> dict:
    from dreamline.training.agp import train_agp as run

    return _finish(work_dir, run(p, renders, captions, out_dir, work_dir))


@task(name="dreambooth", cache_policy=NO_CACHE, retries=1)
def dreambooth(p, out_dir: Path, work_dir: Path, renders: Path, captions: Path) -> dict:
    from dreamline.training.dreambooth import dreambooth as run

    return _finish(work_dir, run(p, out_dir, work_dir, renders, captions))
