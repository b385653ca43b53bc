"""DVC stage `curate`: `python -m stages.curate [--params params.yaml]`."""
from stages._common import run_stage

if __name__ == "__main__":
    run_stage("curate", "flows.curate:curate_flow")
