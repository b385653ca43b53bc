#!/usr/bin/env bash
# One command for a newcomer: set up, then run the DVC pipeline on the embedded default.
# No arguments: the main run (`dvc repro report`: data, priors, distilled assets, evaluation,
# report). `bash scripts/run_pipeline.sh report_studies` adds the studies (guidance ablation,
# 3D-only model, DreamBooth, MVDiffusion); any `dvc repro` arguments may be given instead.
# One local Prefect server serves every stage of the run (flows/with_server.py; without it each
# stage process starts a temporary one, ~11 s each); the stages' wall times are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
rc=0
status=(dvc status)
[ "$#" -gt 0 ] || { set -- report; status=(dvc status --with-deps report); }
python -m flows.with_server -- dvc repro "$@" || rc=$?
python scripts/stage_times.py --since "$started" || true
[ "$rc" -eq 0 ] || exit "$rc"
"${status[@]}"
