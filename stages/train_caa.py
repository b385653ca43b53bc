"""DVC stage `train_caa`: `python -m stages.train_caa [--params params.yaml]` (MVDiffusion stage 2)."""
from stages._common import require_model, run_stage, use_compute

if __name__ == "__main__":
    run_stage("train_caa", "flows.training:train_caa_flow",
              before=lambda params: (require_model(params.train_caa.depth_model, "train_caa.depth_model"),
                                     use_compute(params)))
