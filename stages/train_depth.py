"""DVC stage `train_depth`: `python -m stages.train_depth [--params params.yaml]` (MVDiffusion stage 1)."""
from stages._common import require_model, run_stage, use_compute

if __name__ == "__main__":
    run_stage("train_depth", "flows.training:train_depth_flow",
              before=lambda params: (require_model(params.train_depth.base_model, "train_depth.base_model"),
                                     use_compute(params)))
