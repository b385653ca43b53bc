"""DVC stage `evaluate`: `python -m stages.evaluate [--params params.yaml]`."""
from stages._common import require_evaluator, require_inception_weights, require_models, run_stage


def _inputs(params) -> None:
    require_evaluator(params.evaluate.evaluator)
    require_inception_weights(params.evaluate.image_quality.inception_weights, "evaluate.image_quality.inception_weights")
    require_models(params.evaluate.image_quality.models, "evaluate.image_quality.models")


if __name__ == "__main__":
    run_stage("evaluate", "flows.evaluation:evaluate_flow", before=_inputs)
