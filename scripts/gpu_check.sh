#!/usr/bin/env bash
# The GPU check (segdistill/tools/gpu_check.py): every CUDA path once, on tiny synthetic data, with a JSON summary in
# OUT_DIR/gpu_check.json. Runs with the Python that has a CUDA torch ($PYTHON, default python3) and this checkout on
# PYTHONPATH: nothing is installed. Usage: bash scripts/gpu_check.sh [OUT_DIR]   (about 5 minutes on one GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout "${GPU_CHECK_TIMEOUT:-480}" "$PY" -m segdistill.tools.gpu_check --out-dir "${1:-runs/gpu_check}" "${@:2}"
