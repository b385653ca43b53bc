"""DVC stage `distill@<slug>`: `python -m stages.distill [--prompt SLUG] [--params params.yaml]`.

dvc.yaml makes one stage instance per prompt (foreach over distill.prompts), so one prompt
reruns alone; without --prompt every prompt of params runs."""
from stages._common import run_stage


def _models(params, guidance_types=None) -> None:
    """Stop before any work when a prior the guidance needs is missing."""
    import sys

    from dreamline.distill.run import check_models
    from dreamline.models.weights import UnsafeWeightsError

    for g in guidance_types or [params.distill.guidance_type]:
        try:
            check_models(params.distill.model_copy(update={"guidance_type": g}))
        except (FileNotFoundError, UnsafeWeightsError) as err:
            print(err, file=sys.stderr)
            sys.exit(2)


if __name__ == "__main__":
    run_stage("distill", "flows.distill:distill_flow", before=_models,
              options={"--prompt": {"dest": "slugs", "action": "append",
                                    "help": "a key of distill.prompts (repeatable)"}})
