#!/usr/bin/env bash
# Set up everything dreamline needs on a fresh machine: system GL libraries (apt, when
# available), a virtualenv in .venv with pinned packages, and the real meshes of Debian's
# libcgal-demo data. Idempotent: a second run with unchanged pins takes a second.
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the report test opens data/report/index.html in a real (headless) browser.
apt_pkgs="libegl1 libegl-mesa0 libgl1-mesa-dri libosmesa6 chromium"
if command -v apt-get >/dev/null 2>&1; then
  missing=""
  for p in $apt_pkgs; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
  if [ -n "$missing" ]; then
    echo "setup: apt-get install$missing"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  fi
else
  echo "setup: no apt-get; install OSMesa/EGL (Mesa) with your package manager" >&2
fi

PY=${PYTHON:-python3}
stamp=.venv/.dreamline-installed
want=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  . .venv/bin/activate
  export PIP_DISABLE_PIP_VERSION_CHECK=1
  # Exact torch pin first: any looser spec pulls several GB of CUDA wheels.
  pip install -q torch==2.13.0
  pip install -q -c constraints.txt -e ".[test]"
  # pyrender pins PyOpenGL 3.1.0, which lacks what OSMesa needs; upgrade it on its own.
  pip install -q --no-deps PyOpenGL==3.1.10
  echo "$want" > "$stamp"
fi

bash scripts/fetch_meshes.sh .cache/cgal
echo "setup: ok"
