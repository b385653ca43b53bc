"""DVC stage `report_studies`: `python -m stages.report_studies [--params params.yaml]` ->
data/report_studies/index.html (the guidance ablation, the 3D-only model, MVDiffusion)."""
from stages._common import run_stage

if __name__ == "__main__":
    run_stage("report_studies", "flows.evaluation:report_studies_flow")
