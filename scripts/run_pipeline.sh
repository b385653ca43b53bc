#!/usr/bin/env bash
# One command for a newcomer: set up, then run the whole DVC pipeline on the embedded default.
# One local Prefect server serves every stage of the run (flows/with_server.py; without it each
# stage process starts a temporary one, ~11 s each); the stages' wall times are printed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
rc=0
python -m flows.with_server -- dvc repro "$@" || rc=$?
python scripts/stage_times.py --since "$started" || true
[ "$rc" -eq 0 ] || exit "$rc"
dvc status
