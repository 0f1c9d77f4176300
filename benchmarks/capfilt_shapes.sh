#!/usr/bin/env bash
# BLIP's CapFilt on shapes: corrupt 50% of the training images' captions (other images' captions), train the
# ITM filter (albef-tiny) and the captioner (blip-tiny) on the noisy set, clean it with `coembed data capfilt`,
# then train a `tiny` dual encoder on the noisy and on the cleaned set with the same step budget and evaluate
# both on the clean test split. Each stage is skipped when its output exists, so a rerun continues.
# The filter is trained in two runs (FILTER_STEPS, then FILTER2_STEPS warm-started from it) because that is how
# the measured run went: after 200 steps its ITM probabilities all sat near the 1/3 prior of ALBEF's 1 positive :
# 2 hard negatives, and more steps were added (docs/capfilt.md).
# Usage: benchmarks/capfilt_shapes.sh OUT [STEPS] [FILTER_STEPS] [CAPTIONER_STEPS] [FILTER2_STEPS] [THRESHOLD]
set -euo pipefail
OUT=${1:?output folder}; STEPS=${2:-300}; FILTER_STEPS=${3:-200}; CAPTIONER_STEPS=${4:-200}; FILTER2_STEPS=${5:-300}
THRESHOLD=${6:-0.5}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
DATA=$OUT/data
mkdir -p "$OUT"
stamp() { echo "[$(date +%T)] $*"; }
run() { local name=$1; shift; [ -f "$OUT/$name.done" ] && return 0; local t0=$(date +%s)
        "$PY" -m coembed train --out "$OUT/$name" "$@" >"$OUT/$name.log" 2>&1
        stamp "$name: $(( $(date +%s) - t0 )) s; last val: $(grep val_ "$OUT/$name/metrics.jsonl" | tail -1)"; touch "$OUT/$name.done"; }
# A dataset folder whose train split is $2 and whose val/test are the clean originals.
dataset() { mkdir -p "$1"; ln -sfn "$(realpath "$DATA/val")" "$1/val"; ln -sfn "$(realpath "$DATA/test")" "$1/test"; }

[ -d "$DATA" ] || "$PY" -m coembed data shapes --out "$DATA" --train 2000 --val 200 --test 500 --heldout 0 >/dev/null
[ -f "$OUT/noisy/train/captions.jsonl" ] || "$PY" -m coembed data corrupt "$DATA/train" "$OUT/noisy/train" --fraction 0.5 --seed 0
dataset "$OUT/noisy"

COMMON=(--set workers=0 --set warmup_steps=40 --set lr=1e-3 --set val_samples=200)
# The filter and the captioner are trained on the noisy set (BLIP pre-trains them on its noisy web data and
# fine-tunes them on COCO; we have no clean set beyond val/test and keep those for measuring).
run filter --data "$OUT/noisy" --preset albef-tiny "${COMMON[@]}" --set batch_size=32 --set max_steps="$FILTER_STEPS" \
    --set val_every="$FILTER_STEPS" --set save_every="$FILTER_STEPS" &
run captioner --data "$OUT/noisy" --preset blip-tiny "${COMMON[@]}" --set batch_size=32 --set max_steps="$CAPTIONER_STEPS" \
    --set val_every="$CAPTIONER_STEPS" --set save_every="$CAPTIONER_STEPS" &
wait
run filter2 --data "$OUT/noisy" --preset albef-tiny "${COMMON[@]}" --set batch_size=32 --set max_steps="$FILTER2_STEPS" \
    --set val_every="$FILTER2_STEPS" --set save_every="$FILTER2_STEPS" --set init_from="$OUT/filter" &
TINY=(--preset tiny "${COMMON[@]}" --set batch_size=64 --set max_steps="$STEPS" --set val_every=200 --set save_every="$STEPS")
run tiny-noisy --data "$OUT/noisy" "${TINY[@]}" &
wait
# The reference: the same dual encoder on the uncorrupted training captions (what corruption costs).
run tiny-oracle --data "$DATA" "${TINY[@]}" &

if [ ! -f "$OUT/clean/train/captions.jsonl" ]; then
  "$PY" -m coembed data capfilt "$OUT/noisy/train" "$OUT/clean/train" --captioner "$OUT/captioner" --filter "$OUT/filter2" \
      --synthetic 1 --threshold "$THRESHOLD" --top-p 0.9 --seed 0 --no-progress >"$OUT/capfilt.log" 2>&1
  stamp "capfilt:"; cat "$OUT/capfilt.log"
fi
dataset "$OUT/clean"
KEPT=$(wc -l <"$OUT/clean/train/captions.jsonl")
if [ "$KEPT" -ge 64 ]; then
  run tiny-clean --data "$OUT/clean" "${TINY[@]}"
else  # BLIP's rule on a filter that learned little can keep almost nothing; say so rather than fail
  stamp "tiny-clean: not trained, CapFilt kept $KEPT images (< batch size 64)"
fi
wait

for name in tiny-oracle tiny-noisy tiny-clean; do
  [ -f "$OUT/$name.eval.json" ] || [ ! -f "$OUT/$name.done" ] || "$PY" -m coembed eval --checkpoint "$OUT/$name" --data "$DATA" --split test --skip zeroshot \
      --skip linear_probe --skip compositional --out "$OUT/$name.eval.json" >/dev/null 2>&1
done
"$PY" benchmarks/capfilt_report.py "$OUT"
