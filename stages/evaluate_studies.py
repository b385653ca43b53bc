"""DVC stage `evaluate_studies`: `python -m stages.evaluate_studies [--params params.yaml]`
(the guidance ablation's assets and the ablation models' samples -> data/eval_studies)."""
from stages._common import require_model, run_stage


def require_evaluator(folder: str) -> None:
    """Stop before any work unless `folder` is an evaluator folder with safetensors weights."""
    import sys
    from pathlib import Path

    from dreamline.models.weights import UnsafeWeightsError, require_safetensors

    ev = Path(folder)
    if not ((ev / "evaluator.json").is_file() or (ev / "config.json").is_file()):
        print(f"evaluate.evaluator: {ev} is not an evaluator folder (run train_evaluator)", file=sys.stderr)
        sys.exit(2)
    try:
        require_safetensors(ev, "evaluate.evaluator")
    except UnsafeWeightsError as err:
        print(err, file=sys.stderr)
        sys.exit(2)


def _inputs(params) -> None:
    require_evaluator(params.evaluate.evaluator)
    for name, path in params.evaluate_studies.image_quality.models.items():
        require_model(path, f"evaluate_studies.image_quality.models.{name}")


if __name__ == "__main__":
    run_stage("evaluate_studies", "flows.evaluation:evaluate_studies_flow", before=_inputs)
