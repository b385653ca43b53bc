"""DVC stage `dreambooth`: `python -m stages.dreambooth [--params params.yaml]`."""
from stages._common import require_model, run_stage, use_compute

if __name__ == "__main__":
    run_stage("dreambooth", "flows.training:dreambooth_flow",
              before=lambda params: (require_model(params.dreambooth.model, "dreambooth.model"),
                                     use_compute(params)))
