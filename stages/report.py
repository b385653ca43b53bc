"""DVC stage `report`: `python -m stages.report [--params params.yaml]` -> data/report/index.html."""
from stages._common import run_stage

if __name__ == "__main__":
    run_stage("report", "flows.evaluation:report_flow")
