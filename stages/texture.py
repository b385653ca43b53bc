"""DVC stage `texture`: `python -m stages.texture [--params params.yaml]`."""
from stages._common import require_inception_weights, require_model, run_stage


def _inputs(params) -> None:
    import sys
    from pathlib import Path

    require_model(params.texture.model, "texture.model")
    require_inception_weights(params.texture.inception_weights, "texture.inception_weights")
    if not (Path(params.texture.evaluator) / "evaluator.json").is_file() and not (
            Path(params.texture.evaluator) / "config.json").is_file():
        print(f"texture.evaluator: {params.texture.evaluator} is not an evaluator folder (run train_evaluator)",
              file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    run_stage("texture", "flows.texture:texture_flow", before=_inputs)
