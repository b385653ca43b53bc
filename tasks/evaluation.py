"""Prefect tasks of the evaluation stages."""
from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.common import run_logger


@task(name="train-evaluator", cache_policy=NO_CACHE, retries=1)
def train_evaluator_task(p, renders: Path, captions: Path, out_dir: Path, device=None,
                         precision: str = "fp32") -> dict:
    from dreamline.evaluation.train_evaluator import train_evaluator

    return train_evaluator(p, Path(renders), Path(captions), Path(out_dir), log=run_logger().info,
                           device=device, precision=precision)


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(p, renders: Path, captions: Path, asset_roots: list[Path], out_dir: Path, radius: float,
                  device=None, precision: str = "fp32", prompts: list[str] = ()):
    from dreamline.evaluation.evaluate import evaluate

    return evaluate(p, Path(renders), Path(captions), [Path(r) for r in asset_roots], Path(out_dir), radius,
                    log=run_logger().info, device=device, precision=precision, prompts=list(prompts))


@task(name="report", cache_policy=NO_CACHE)
def report_task(eval_dir: Path, distill_root: Path, models_root: Path, out: Path, texture: Path | None = None,
                params: dict | None = None, studies: bool = False) -> str:
    """The main run's report, or (`studies`) the studies' page: their title and training curves."""
    from dreamline.evaluation.report import MAIN_CURVES, STUDIES_CURVES, build_report

    title, curves = ("dreamline studies", STUDIES_CURVES) if studies else ("dreamline report", MAIN_CURVES)
    return str(build_report(Path(eval_dir) / "metrics.json", Path(eval_dir) / "assets.json", Path(distill_root),
                            Path(models_root), params, Path("dvc.lock"), Path(out),
                            Path(texture) if texture else None, title=title, curves=curves,
                            stage="report_studies" if studies else "report"))
