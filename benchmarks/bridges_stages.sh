#!/usr/bin/env bash
# After benchmarks/bridges_shapes.sh OUT: the two-stage recipes. LLaVA stage 2 (projector + LM) from the
# stage-1 run; BLIP-2 Q-Former stage 1 (ITC/ITG/ITM), then stage 2 from it. Same step budget per run.
# Usage: benchmarks/bridges_stages.sh OUT [BRIDGE_STEPS]
set -euo pipefail
OUT=${1:?output folder of bridges_shapes.sh}; BRIDGE_STEPS=${2:-300}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
DATA=$OUT/data
run() { local name=$1; shift; local t0=$(date +%s); "$PY" -m coembed train --data "$DATA" --out "$OUT/$name" "$@" >"$OUT/$name.log" 2>&1;
        echo "$name: $(( $(date +%s) - t0 )) s; last val: $(grep val_ "$OUT/$name/metrics.jsonl" | tail -1)"; }
COMMON=(--set batch_size=32 --set workers=0 --set val_samples=200 --set warmup_steps=50 --set lr=1e-3
        --set model.vision_path="$OUT/tiny" --set model.lm.path="$OUT/lm" --set max_steps="$BRIDGE_STEPS" --set val_every=100 --set save_every=100)
run llava2 "${COMMON[@]}" --preset llava-tiny --set model.stage=2 --set init_from="$OUT/llava" --set lr=3e-4
run qformer1 "${COMMON[@]}" --preset qformer-tiny --set model.stage=1
run qformer1to2 "${COMMON[@]}" --preset qformer-tiny --set model.stage=2 --set init_from="$OUT/qformer1"
