#!/bin/bash
# VQA on shapes (docs/vqa.md): data, the blind baseline, both answerers for the same 400-step budget,
# and their test-split VQA accuracy per question type. One torch thread per process.
set -e
export OMP_NUM_THREADS=1
DATA=${DATA:-/tmp/vqad}
RUNS=${RUNS:-/tmp/vqa_runs}
coembed data shapes --out "$DATA" --train 2000 --val 200 --test 500 --heldout 0
coembed data vqa "$DATA"
python benchmarks/vqa_blind_baseline.py "$DATA" test
for p in vqa-albef-tiny vqa-blip-tiny; do
  coembed train --preset $p --data "$DATA" --out "$RUNS/$p" --set task=vqa \
    --set max_steps=400 --set batch_size=64 --set lr=5e-4 --set warmup_steps=40 --set val_every=200 --set save_every=200 \
    --set log_every=20 --set progress=false --set workers=0 --set cache_images=true --set seed=0
  coembed eval --task vqa --checkpoint "$RUNS/$p" --data "$DATA" --split test --out "$RUNS/$p/eval_vqa_test.json"
done
