"""Prefect flows of train_evaluator, evaluate and report."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from prefect import flow, get_run_logger

from dreamline import paths
from dreamline.atomic import write_bytes_atomic, write_json_atomic
from dreamline.config import Params
from tasks.common import compute_target
from tasks.evaluation import evaluate_task, report_task, train_evaluator_task

CAPTIONS = paths.CAPTIONS / "captions.parquet"


@flow(name="train-evaluator")
def train_evaluator_flow(params: Params, renders: Path = paths.RENDERS, captions: Path = CAPTIONS,
                         out_dir: Path = paths.MODELS / "evaluator") -> dict:
    device, precision = compute_target(params.compute.device, params.compute.precision)
    summary = train_evaluator_task(params.evaluator, renders, captions, out_dir, device, precision)
    return {"evaluator": summary["evaluator"], "val": summary["retrieval"]["val"]}


def _asset_table(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    cols = ["asset", "prompt", "guidance_type", "representation_type", "steps", "r1_colour", "r1_geo",
            "psnr", "janus"]
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({**{c: r.get(c) for c in cols},
                    "r1_colour": sum(x == 1 for x in r["ranks_colour"]) / len(r["ranks_colour"]),
                    "r1_geo": sum(x == 1 for x in r["ranks_geo"]) / len(r["ranks_geo"])})
    return buf.getvalue().encode()


def _evaluate(params: Params, p, renders: Path, captions: Path, asset_roots, out_dir: Path) -> dict:
    device, precision = compute_target(params.compute.device, params.compute.precision)
    metrics, rows = evaluate_task(p, renders, captions, list(asset_roots), out_dir, params.distill.camera.radius,
                                  device, precision, list(params.distill.prompts.values()))
    write_json_atomic(Path(out_dir) / "assets.json", rows)
    write_bytes_atomic(Path(out_dir) / "plots" / "assets.csv", _asset_table(rows))
    write_json_atomic(Path(out_dir) / "metrics.json", metrics)     # last: the stage's result
    real = metrics["r_precision"]["real_test"]
    get_run_logger().info("real R@1 %.3f over %d captions; %d asset groups", real["R@1"], real["n_captions"],
                          len(metrics["assets"]))
    return {"real_R@1": real["R@1"], "assets": {k: v["colour_R@1"] for k, v in metrics["assets"].items()},
            "samples_R@1": {k: v["r_precision"]["R@1"] for k, v in metrics["image_quality"].items()
                            if k != "real"}}


@flow(name="evaluate")
def evaluate_flow(params: Params, renders: Path = paths.RENDERS, captions: Path = CAPTIONS,
                  asset_roots: tuple[Path, ...] = (paths.DISTILL,), out_dir: Path = paths.EVAL) -> dict:
    """The main run's evaluation: the distilled assets and the base / multi-view samples."""
    return _evaluate(params, params.evaluate, renders, captions, asset_roots, out_dir)


@flow(name="evaluate-studies")
def evaluate_studies_flow(params: Params, renders: Path = paths.RENDERS, captions: Path = CAPTIONS,
                          asset_roots: tuple[Path, ...] = (paths.ABLATION,),
                          out_dir: Path = paths.EVAL_STUDIES) -> dict:
    """The studies' evaluation: the guidance ablation's assets and the ablation models'
    samples, with `evaluate`'s settings and caption set."""
    p = params.evaluate.model_copy(update={"image_quality": params.evaluate_studies.image_quality})
    return _evaluate(params, p, renders, captions, asset_roots, out_dir)


REPORT_SECTIONS = ("distill", "evaluate", "evaluator")
STUDIES_SECTIONS = ("ablation", "evaluate_studies", "texture")


@flow(name="report")
def report_flow(params: Params, eval_dir: Path = paths.EVAL, distill_root: Path = paths.DISTILL,
                models_root: Path = paths.MODELS, out: Path = paths.REPORT / "index.html") -> dict:
    """The main run's page: the distilled assets first, then R-precision and the priors' samples."""
    # The sections the report is about, as validated (the --params file, defaults filled in).
    shown = {k: getattr(params, k).model_dump(mode="json") for k in REPORT_SECTIONS}
    path = report_task(eval_dir, distill_root, models_root, out, None, shown)
    return {"report": path}


@flow(name="report-studies")
def report_studies_flow(params: Params, eval_dir: Path = paths.EVAL_STUDIES, distill_root: Path = paths.DISTILL,
                        models_root: Path = paths.MODELS, out: Path = paths.REPORT_STUDIES / "index.html",
                        texture: Path = paths.DATA / "texture" / "metrics.json") -> dict:
    """The studies' page: the guidance ablation, the 3D-only model, MVDiffusion texturing."""
    shown = {k: getattr(params, k).model_dump(mode="json") for k in STUDIES_SECTIONS}
    path = report_task(eval_dir, distill_root, models_root, out, texture, shown, studies=True)
    return {"report": path}
