# Sourced by the run/test scripts: offline, quiet, one thread per torch/BLAS process.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 DO_NOT_TRACK=1 DVC_NO_ANALYTICS=1
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PYOPENGL_PLATFORM=${PYOPENGL_PLATFORM:-osmesa}
export MESA_SHADER_CACHE_DIR=${MESA_SHADER_CACHE_DIR:-$PWD/.cache/mesa}
. .venv/bin/activate
