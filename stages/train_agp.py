"""DVC stage `train_agp`: `python -m stages.train_agp [--params params.yaml]`."""
from stages._common import require_model, run_stage, use_compute

if __name__ == "__main__":
    run_stage("train_agp", "flows.training:train_agp_flow",
              before=lambda params: (require_model(params.train_agp.base_model, "train_agp.base_model"),
                                     use_compute(params)))
