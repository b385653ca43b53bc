"""DVC stage `evaluate_studies`: `python -m stages.evaluate_studies [--params params.yaml]`
(the guidance ablation's assets and the ablation models' samples -> data/eval_studies)."""
from stages._common import require_evaluator, require_inception_weights, require_models, run_stage


def _inputs(params) -> None:
    require_evaluator(params.evaluate.evaluator)
    require_inception_weights(params.evaluate_studies.image_quality.inception_weights, "evaluate_studies.image_quality.inception_weights")
    require_models(params.evaluate_studies.image_quality.models, "evaluate_studies.image_quality.models")


if __name__ == "__main__":
    run_stage("evaluate_studies", "flows.evaluation:evaluate_studies_flow", before=_inputs)
