"""DVC stage `train_mv_3d`: `python -m stages.train_mv_3d [--params params.yaml]`."""
from stages._common import require_model, run_stage, use_compute

if __name__ == "__main__":
    run_stage("train_mv_3d", "flows.training:train_mv_3d_flow",
              before=lambda params: (require_model(params.train_mv_3d.base_model, "train_mv_3d.base_model"),
                                     use_compute(params)))
