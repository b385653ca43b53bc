"""DVC stage `caption`: `python -m stages.caption [--params params.yaml]`."""
from stages._common import run_stage

if __name__ == "__main__":
    run_stage("caption", "flows.caption:caption_flow")
