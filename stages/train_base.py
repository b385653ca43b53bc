"""DVC stage `train_base`: `python -m stages.train_base [--params params.yaml]`."""
from stages._common import run_stage, use_compute

if __name__ == "__main__":
    run_stage("train_base", "flows.training:train_base_flow", before=use_compute)
