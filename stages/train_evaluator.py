"""DVC stage `train_evaluator`: `python -m stages.train_evaluator [--params params.yaml]`."""
from stages._common import run_stage

if __name__ == "__main__":
    run_stage("train_evaluator", "flows.evaluation:train_evaluator_flow")
