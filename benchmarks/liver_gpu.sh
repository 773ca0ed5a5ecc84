#!/usr/bin/env bash
# liver-ct's recipe on one CUDA GPU, with its 3-fold cross-validation by volume: four processes share the GPU
# (folds 0-2 of benchmarks/ct_crossval.py and the model to ship), each training for EPOCHS epochs or MINUTES
# minutes, whichever ends first, then L1 pruning (30%), the CPRUN rebuild and RECON fine-tuning iterations.
#   bash benchmarks/liver_gpu.sh runs/liver_gpu          # then: publish runs/liver_gpu/final/pruned.pt (card)
# Resumable (finished stages are skipped, an interrupted fine-tuning continues). Folds score themselves through
# the engine (ONNX Runtime on the CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/liver_gpu}
PY=${PY:-python}
CFG=configs/experiments/liver_lits2d_gpu.toml
EPOCHS=${EPOCHS:-200}
MINUTES=${MINUTES:-5}
PRUNE="--importance l1 --ratio 0.3 --reconstruct-iters ${RECON:-2000}"
mkdir -p "$OUT"

final() {
  if [ ! -f "$OUT/final/summary.json" ]; then
    resume=""; [ -f "$OUT/final/last.pt" ] && resume="--resume"
    $PY -m LightSegLib.cli train --config $CFG --out "$OUT/final" --epochs "$EPOCHS" --time-budget "$MINUTES" \
      --threads 1 $resume || return 1
  fi
  [ -f "$OUT/final/pruned.pt" ] || $PY -m LightSegLib.cli prune-ct --config $CFG "$OUT/final/best.pt" $PRUNE \
    --threads 1 --out "$OUT/final/pruned.pt" --resume
}

pids=()
for k in 0 1 2; do
  $PY benchmarks/ct_crossval.py --config $CFG --folds 3 --epochs "$EPOCHS" --minutes "$MINUTES" --prune="$PRUNE" \
    --card configs/cards/liver-ct.json --out "$OUT/cv" --fold $k > "$OUT/cv$k.log" 2>&1 &
  pids+=($!)
done
final > "$OUT/final.log" 2>&1 &
pids+=($!)
status=0
for p in "${pids[@]}"; do wait "$p" || status=1; done
[ -f "$OUT/cv/crossval.json" ] && cat "$OUT/cv/crossval.json" | head -12
exit $status
