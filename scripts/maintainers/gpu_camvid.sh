#!/usr/bin/env bash
# One prepared job for a lent GPU (see docs/BENCHMARKS.md): train the built-in model
# candidates on CamVid's dev protocol (configs/camvid.yaml, scored on drive 0001TP, which
# no run trains on) and on the published protocol (configs/camvid-full.yaml, all 468
# frames) side by side, the same recipes for the same time, then measure GPU throughput.
# A candidate's full-protocol run is shipped only if its dev run says the recipe is better.
#
#   bash scripts/maintainers/gpu_prepare.sh ../shared/datasets/camvid   # here: .gpu/camvid and .whl/, prints the next line
#   bash scripts/maintainers/gpu_camvid.sh .gpu/camvid $OUT 8m           # on the device, after installing .whl; carry .gpu .whl
#
# The device's image lacks segtool and its albumentations and pydantic, so gpu_prepare.sh puts
# their wheels (segtool's built from this checkout; the others py3.12, manylinux x86_64) into
# the ignored .whl/ for the device to install first: the scripts import the installed segtool.
#
# The defaults are the next step of docs/BENCHMARKS.md's GPU section: the U-Net x0.5 recipe
# (crop 352x480, EMA) on both protocols, two runs at a time, each continued from the last
# weights of the same run in the call before (INIT, default scripts/maintainers/gpu_resume: <split>/<variant>/
# last_weights.pt, tracked in git so that they outlive the session's machine; none there: the
# runs start from scratch). Epochs add up from call to call; each call starts a new schedule.
# After a call, copy each returned last_weights.pt there and commit it (a few MB).
# Writes to OUT: dev.tar and full.tar (per run: last_weights.pt, the EMA weights with the
# calibrated offsets and none of the optimizer or training state, metrics.csv and the log),
# summary_dev.txt, summary_full.txt, gpu_bench.txt (unless SKIP_BENCH=1), log.txt.
set -u
DATA=$1 OUT=$2 LIMIT=${3:-7m} DEVICE=${DEVICE:-cuda} DEADLINE=${DEADLINE:-470}
DEV_VARIANTS=${DEV_VARIANTS:-"unet+crop352x480+ema"}
FULL_VARIANTS=${FULL_VARIANTS:-"unet+crop352x480+ema"}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)  # the repository: this file is scripts/maintainers/gpu_camvid.sh
INIT=${INIT-$ROOT/scripts/maintainers/gpu_resume}
# Four runs at once with val_every auto (1 here) spent 204-220 s of 480 in training epochs:
# validating every epoch and starting the loaders took the rest (docs/BENCHMARKS.md).
VAL_EVERY=${VAL_EVERY:-5} WORKERS=${WORKERS:-3}
PY=${PY:-python3}
RUNS=${RUNS:-/tmp/segtool_runs}
mkdir -p "$OUT" "$RUNS"
exec > >(tee -a "$OUT/log.txt") 2>&1
command -v nvidia-smi >/dev/null && nvidia-smi -L
$PY -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
common=(--data "$DATA" --time-limit "$LIMIT" --workers "$WORKERS" --val-every "$VAL_EVERY" --device "$DEVICE"
        --deadline "$DEADLINE")
# shellcheck disable=SC2086
$PY "$ROOT/scripts/maintainers/sweep_recipe.py" "${common[@]}" ${INIT:+--init-from "$INIT/dev"} --config "$ROOT/configs/camvid.yaml" --only $DEV_VARIANTS \
    --runs "$RUNS/dev" --out "$RUNS/dev_summary" > "$RUNS/dev_progress.txt" 2>&1 &
dev=$!
# shellcheck disable=SC2086
$PY "$ROOT/scripts/maintainers/sweep_recipe.py" "${common[@]}" ${INIT:+--init-from "$INIT/full"} --config "$ROOT/configs/camvid-full.yaml" --only $FULL_VARIANTS \
    --runs "$RUNS/full" --out "$RUNS/full_summary" > "$RUNS/full_progress.txt" 2>&1 &
full=$!
wait $dev $full
cp "$RUNS/dev_summary/summary.txt" "$OUT/summary_dev.txt"
cp "$RUNS/full_summary/summary.txt" "$OUT/summary_full.txt"
cat "$OUT/summary_dev.txt" "$OUT/summary_full.txt"
if [ "$DEVICE" = cuda ] && [ -z "${SKIP_BENCH:-}" ]; then timeout 120 $PY "$ROOT/scripts/bench_gpu.py" --steps 10 --repeats 3 --out "$OUT/gpu_bench.txt"; fi
for split in dev full; do
    (cd "$RUNS/$split" && for run in */; do
        run=${run%/}
        $PY - "$run" <<'PYEOF'
import sys, torch
run = sys.argv[1]
from segtool.models.checkpoint import inference_part
ckpt = torch.load(f"{run}/last.pt", map_location="cpu", weights_only=False)
torch.save(inference_part(ckpt), f"{run}/last_weights.pt")
PYEOF
    done
    tar cf "$OUT/$split.tar" --exclude=last.pt --exclude=best.pt --exclude='last.prev*' --exclude='*.png' */ *.log *.yaml)
done
ls -la "$OUT"
