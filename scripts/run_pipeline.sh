#!/usr/bin/env bash
# One command for a newcomer: set up, then run the whole DVC pipeline on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
dvc repro "$@"
dvc status
