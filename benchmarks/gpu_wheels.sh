#!/usr/bin/env bash
# Wheels the project's GPU host lacks for benchmarks/gpu.py, for its Python 3.12 on x86-64
# Linux, into a git-ignored folder (default .cache/gpu-wheels) that the device tool carries.
#
#   bash benchmarks/gpu_wheels.sh [DEST]
#
# Run it on a machine that reaches PyPI. The host has torch, transformers, numpy, PyYAML,
# Pillow, huggingface-hub (1.33), safetensors, regex, requests, filelock and
# typing-extensions; diffusers needs nothing more at import on Python 3.12
# (importlib_metadata only below 3.8). It lacks:
#   diffusers                       the UNet, VAE, schedulers, pipelines
#   pydantic + pydantic-core,       dreamline.config (params models); pydantic 2.14 wants
#   annotated-types,                typing-extensions >= 4.16, carried so that an older one
#   typing-inspection,              on the host cannot break it
#   typing-extensions
# trimesh is not carried: the script stands in for its import (see benchmarks/gpu.py).
# The versions are the ones the project's tests run with here. Then, with the device tool,
# carry [".cache/gpu-wheels"] and run the command in benchmarks/gpu.py's docstring.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.cache/gpu-wheels}
PY=${PYTHON:-}
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
WHEELS=(
  diffusers==0.42.1
  pydantic==2.14.4
  pydantic-core==2.50.5
  annotated-types==0.8.0
  typing-inspection==0.4.5
  typing-extensions==4.16.0
)
if ! git check-ignore -q "$DEST/x.whl"; then
  echo "gpu_wheels.sh: $DEST is not git-ignored; the device tool carries only ignored paths" >&2
  exit 2
fi
rm -rf "$DEST"
mkdir -p "$DEST"
"$PY" -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$DEST" "${WHEELS[@]}"

count=$(ls "$DEST"/*.whl | wc -l)
if [[ "$count" -ne "${#WHEELS[@]}" ]]; then
  echo "gpu_wheels.sh: expected ${#WHEELS[@]} wheels, got $count" >&2
  exit 1
fi
ls -l "$DEST"/*.whl | awk '{printf "%10d  %s\n", $5, $NF}'
# What travels on a run: the tracked and untracked-not-ignored files (links as links), plus
# the carried wheels.
git ls-files -z -co --exclude-standard | python3 -c '
import os, sys
dest = sys.argv[1]
mib = 2 ** 20
tree = sum(os.lstat(f).st_size for f in sys.stdin.read().split("\0") if f and os.path.lexists(f))
wheels = sum(e.stat().st_size for e in os.scandir(dest) if e.name.endswith(".whl"))
print(f"wheels: {wheels / mib:.2f} MiB; working tree that travels: {tree / mib:.2f} MiB; "
      f"together {(wheels + tree) / mib:.2f} MiB of the 64 MiB limit")
sys.exit(0 if wheels + tree < 64 * mib else 1)
' "$DEST"
