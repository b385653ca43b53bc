"""DVC stage `evaluate`: `python -m stages.evaluate [--params params.yaml]`."""
from stages._common import require_model, run_stage


def _inputs(params) -> None:
    import sys
    from pathlib import Path

    ev = Path(params.evaluate.evaluator)
    if not ((ev / "evaluator.json").is_file() or (ev / "config.json").is_file()):
        print(f"evaluate.evaluator: {ev} is not an evaluator folder (run train_evaluator)", file=sys.stderr)
        sys.exit(2)
    from dreamline.models.weights import UnsafeWeightsError, require_safetensors

    try:
        require_safetensors(ev, "evaluate.evaluator")
    except UnsafeWeightsError as err:
        print(err, file=sys.stderr)
        sys.exit(2)
    for name, path in params.evaluate.image_quality.models.items():
        require_model(path, f"evaluate.image_quality.models.{name}")


if __name__ == "__main__":
    run_stage("evaluate", "flows.evaluation:evaluate_flow", before=_inputs)
