#!/usr/bin/env bash
# Set up (idempotent), then run the test suite offline.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
set +e
python -m pytest "$@"
rc=$?
set -e
# pytest's 5 means no test ran: that is a failure for this project, not a pass.
exit $rc
