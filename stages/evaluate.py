"""DVC stage `evaluate`: `python -m stages.evaluate [--params params.yaml]`."""
from stages._common import require_model, run_stage
from stages.evaluate_studies import require_evaluator


def _inputs(params) -> None:
    require_evaluator(params.evaluate.evaluator)
    for name, path in params.evaluate.image_quality.models.items():
        require_model(path, f"evaluate.image_quality.models.{name}")


if __name__ == "__main__":
    run_stage("evaluate", "flows.evaluation:evaluate_flow", before=_inputs)
