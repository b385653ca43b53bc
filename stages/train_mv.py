"""DVC stage `train_mv`: `python -m stages.train_mv [--params params.yaml]`."""
from stages._common import require_model, run_stage, use_compute

if __name__ == "__main__":
    run_stage("train_mv", "flows.training:train_mv_flow",
              before=lambda params: (require_model(params.train_mv.base_model, "train_mv.base_model"),
                                     use_compute(params)))
