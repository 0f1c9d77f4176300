#!/usr/bin/env bash
# Train lm-tiny on the shapes captions, a `tiny` dual encoder for the image tower, then each bridge on
# top of both for the same step budget; prints each run's last validation line. One torch thread.
# Usage: benchmarks/bridges_shapes.sh OUT [LM_STEPS] [TINY_STEPS] [BRIDGE_STEPS]
set -euo pipefail
OUT=${1:?output folder}; LM_STEPS=${2:-600}; TINY_STEPS=${3:-400}; BRIDGE_STEPS=${4:-300}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
DATA=$OUT/data
run() { local name=$1; shift; local t0=$(date +%s); "$PY" -m coembed train --data "$DATA" --out "$OUT/$name" "$@" >"$OUT/$name.log" 2>&1;
        echo "$name: $(( $(date +%s) - t0 )) s; last val: $(grep val_ "$OUT/$name/metrics.jsonl" | tail -1)"; }
mkdir -p "$OUT"
[ -d "$DATA" ] || "$PY" -m coembed data shapes --out "$DATA" --train 2000 --val 200 --test 200 --heldout 0 >/dev/null
COMMON=(--set batch_size=32 --set workers=0 --set val_samples=200 --set warmup_steps=50 --set lr=1e-3)
run lm "${COMMON[@]}" --preset lm-tiny --set max_steps="$LM_STEPS" --set val_every=200 --set save_every=200
run tiny "${COMMON[@]}" --preset tiny --set batch_size=64 --set max_steps="$TINY_STEPS" --set val_every=200 --set save_every=200
BRIDGE=(--set model.vision_path="$OUT/tiny" --set model.lm.path="$OUT/lm" --set max_steps="$BRIDGE_STEPS" --set val_every=100 --set save_every=100)
run llava "${COMMON[@]}" --preset llava-tiny "${BRIDGE[@]}"
run flamingo "${COMMON[@]}" --preset flamingo-tiny "${BRIDGE[@]}"
run qformer2 "${COMMON[@]}" --preset qformer-tiny --set model.stage=2 "${BRIDGE[@]}"
