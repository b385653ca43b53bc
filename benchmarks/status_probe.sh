#!/usr/bin/env bash
# Which stages `dvc status` reports after one change at a time: five parameters (a training,
# a distillation and a render setting, the compute device and precision) and four library modules, each reverted before the
# next. Run on an up-to-date workspace (after `dvc repro`): each block should list exactly
# the stages that read the parameter or import the module.
set -uo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
echo "== baseline"; dvc status 2>&1 | tail -3; echo
try_param() {  # key value
  cp params.yaml .cache/status-probe-params.bak
  python - "$1" "$2" <<'PY'
import sys
from ruamel.yaml import YAML
y = YAML(); y.preserve_quotes = True
d = y.load(open("params.yaml"))
keys = sys.argv[1].split("."); node = d
for k in keys[:-1]: node = node[k]
node[keys[-1]] = __import__("yaml").safe_load(sys.argv[2])   # a YAML scalar: 0.0005, 301, 96
y.dump(d, open("params.yaml", "w"))
PY
  echo "== params: $1 -> $2"; dvc status 2>&1 | grep -E "^[^ 	].*:$" ; echo
  cp .cache/status-probe-params.bak params.yaml
}
try_param train_mv.train.lr 0.0005
try_param distill.steps 301
try_param render.resolution 96
try_param compute.device cpu          # where torch runs: no stage reruns
try_param compute.precision bf16      # what it computes: every torch stage reruns
try_code() {
  cp "$1" .cache/status-probe-code.bak
  echo "# touched" >> "$1"
  echo "== code: $1"; dvc status 2>&1 | grep -E "^[^ 	].*:$"; echo
  cp .cache/status-probe-code.bak "$1"
}
try_code dreamline/training/dreambooth.py
try_code dreamline/texturing/texture.py
try_code dreamline/rendering/renderer.py
try_code dreamline/guidance/terms.py
echo "== after revert"; dvc status 2>&1 | tail -2
