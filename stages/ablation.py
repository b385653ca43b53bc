"""DVC stage `ablation@<guidance>-<slug>`:
`python -m stages.ablation --guidance mv-sds --prompt red-chair [--params params.yaml]`."""
from stages._common import run_stage
from stages.distill import _models

if __name__ == "__main__":
    run_stage("ablation", "flows.ablation:ablation_flow",
              before=lambda params: _models(params, params.ablation.guidance_types),
              options={"--guidance": {"dest": "guidance", "required": True},
                       "--prompt": {"dest": "slug", "required": True}})
