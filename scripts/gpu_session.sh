#!/usr/bin/env bash
# What a lent GPU machine should measure for this project (on one H200: steps 1-3 about 5 minutes, step 4 over 5):
#   1. the GPU check (scripts/gpu_check.sh): every CUDA path once (AMP bf16/fp16, cache, profile, tables, search);
#   2. the chain search space's latency table on torch-cuda at 1x3x180x240 (the default widths and the CamVid config's;
#      benchmarks/latency/chain's table extended when there), and its correction fitted on 30 random networks if it
#      has none, so that a search can take torch-cuda as its third platform;
#   3. every zoo model (width 1.0, 11 classes, batch 1) profiled on torch-cuda and torch-cuda-fp16 at 1x3x180x240 and
#      1x3x360x480 (OUT_DIR/zoo_cuda.json);
#   4. the predictor report on torch-cuda: random networks and every zoo model at both inputs, measured whole beside
#      their predictions (shorter timing windows than the CPU report: a GPU call takes well under a millisecond).
# Each step has its own time limit and the next one runs if it fails; step results land in OUT_DIR. STEPS picks steps.
# Usage: [STEPS="check lut zoo report"] bash scripts/gpu_session.sh [OUT_DIR]
#        (PLATFORM=torch-cpu NETS=2 REPORT_NETS=2 dry-runs steps 2 and 4 on a CPU)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT_DIR=${1:-runs/gpu_session}
PLATFORM=${PLATFORM:-torch-cuda}
NETS=${NETS:-30}
REPORT_NETS=${REPORT_NETS:-10}
STEPS=${STEPS:-check lut zoo report}
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
step() { echo "== $(date -u +%H:%M:%S) $*"; }
want() { [[ " $STEPS " == *" $1 "* ]]; }
# tqdm redraws with carriage returns: keep each command's messages, drop the bars, and report the command's own status
quiet() { local what=$1; shift; "$@" 2>&1 | tr '\r' '\n' | grep -v "it/s\]"
          local rc=${PIPESTATUS[0]}; [ "$rc" = 0 ] || echo "$what: rc $rc"; }

step "machine"
{ nvidia-smi 2>&1 || true; "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"; nproc; } \
    | tee "$OUT_DIR/machine.txt"

if want check && [ "$PLATFORM" = torch-cuda ]; then
    step "gpu check"
    GPU_CHECK_TIMEOUT=${CHECK_TIMEOUT:-200} bash scripts/gpu_check.sh "$OUT_DIR/check" || echo "gpu check: rc $?"
fi

if want lut; then
    step "chain-space table on $PLATFORM"
    LUT="$OUT_DIR/lut-chain-$PLATFORM.json"
    [ "$PLATFORM" = torch-cuda ] && [ -f benchmarks/latency/chain/lut-$PLATFORM.json ] && cp benchmarks/latency/chain/lut-$PLATFORM.json "$LUT"
    # the default space's widths, then configs/search-camvid-cpu.yaml's (an existing table is extended)
    for widths in "[48,96,160]" "[96,192,320]"; do
        quiet "lut build" timeout "${LUT_TIMEOUT:-150}" "$PY" -m segdistill.cli lut build --space chain \
            --space-option "base_widths=$widths" --platform "$PLATFORM" --input 3x180x240 --min-time 0.1 \
            --out "$LUT" --quiet
    done
    step "its correction"
    has_corr() { "$PY" -c "import json, sys; sys.exit(0 if json.load(open(sys.argv[1])).get('correction') else 1)" "$1"; }
    [ -f "$LUT" ] && ! has_corr "$LUT" && quiet "latency fit" timeout "${FIT_TIMEOUT:-70}" "$PY" -m segdistill.cli latency fit --lut "$LUT" \
        --nets "$NETS" --min-time 0.3
fi

if want zoo && [ "$PLATFORM" = torch-cuda ]; then
    step "zoo models on torch-cuda"
    timeout "${ZOO_TIMEOUT:-240}" "$PY" - "$OUT_DIR/zoo_cuda.json" <<'PYEOF' || echo "zoo: rc $?"
import json, sys
from segdistill.models import build_model, list_models
from segdistill.tools.profile import profile_model
res = {}
for name in [m for m in list_models() if not m.startswith(("ddnn", "searched"))]:
    for shape in [(1, 3, 180, 240), (1, 3, 360, 480)]:
        try:
            lat = profile_model(build_model(name, 11), shape, platforms=("torch-cuda",), runs=100, warmup=20)["latency"]
        except Exception as e:  # recorded, and the next model runs
            lat = {"error": repr(e)}
        res[f"{name}@{shape[2]}x{shape[3]}"] = lat
        print(name, shape, {k: round(v["median_ms"], 3) for k, v in lat.items() if isinstance(v, dict)}, flush=True)
        with open(sys.argv[1], "w") as f:
            json.dump(res, f, indent=1)
PYEOF
fi

if want report; then
    step "predictor report on $PLATFORM"
    quiet "latency report" timeout "${REPORT_TIMEOUT:-420}" "$PY" -m segdistill.cli latency report --platforms "$PLATFORM" \
        --nets "$REPORT_NETS" --repeats 2 --net-min-time 0.3 --block-min-time 0.1 --out-dir "$OUT_DIR/latency"
fi
step "done"
