#!/usr/bin/env bash
# Installs segdistill with all its extras (onnx, plot, tb) and the test tools into ./.venv (or into the active
# virtual environment): `pip install -c constraints.txt -e ".[all,test]"`.
# - An existing torch (seen through --system-site-packages or already in the venv) is left alone.
# - Otherwise torch is pinned to the CPU-tested version in constraints.txt, and on a machine without an
#   NVIDIA GPU it is taken from a CPU-only build, never the multi-GB CUDA one.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -z "${VIRTUAL_ENV:-}" ]; then
  [ -x .venv/bin/python ] || "$PY" -m venv --system-site-packages .venv
  PY=.venv/bin/python
fi
cons=constraints.txt
extra=()
if "$PY" -c "import torch" 2>/dev/null; then
  echo "setup: keeping the installed torch $("$PY" -c 'import torch; print(torch.__version__)')"
  cons=$(mktemp); grep -v '^torch==' constraints.txt > "$cons"
elif ! command -v nvidia-smi >/dev/null 2>&1; then
  # No GPU: make sure the pinned torch is a CPU build (a local wheel, or the CPU index).
  url=$("$PY" -m pip install --dry-run --quiet --no-deps --report - "$(grep '^torch==' constraints.txt)" 2>/dev/null \
        | "$PY" -c "import json,sys; print(json.load(sys.stdin)['install'][0]['download_info']['url'])" 2>/dev/null || true)
  case "$url" in
    *cpu*|file:*) ;;
    *) echo "setup: no GPU here, taking torch from the CPU-only index"; extra=(--extra-index-url https://download.pytorch.org/whl/cpu) ;;
  esac
fi
"$PY" -m pip install --quiet ${extra[@]+"${extra[@]}"} -c "$cons" -e ".[all,test]"
echo "setup: done ($("$PY" -c 'import torch; print("torch", torch.__version__)'))"
