"""DVC stage `mirror`: `python -m stages.mirror [--params params.yaml]`."""
from stages._common import run_stage

if __name__ == "__main__":
    run_stage("mirror", "flows.mirror:mirror_flow")
