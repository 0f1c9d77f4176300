#!/bin/bash
# The diffusion-tiny run of docs/generation.md, as it was run (one thread, one job at a time), then its
# evaluation by the attribute reader of docs/generation_eval.md (benchmarks/generation_eval.sh builds it).
#   1. shapes at 32 px, seed 0; a single-object-heavy training manifest: every single-object scene of the
#      12,000 training images plus a third as many two-object (horizontal / vertical) scenes (3974 images);
#      val/test: single-object scenes only.
#   2. stage 1: eps-prediction, 250 steps kept (the run was stopped at step 320: its samples were noise, see
#      the docs); stage 2: v-prediction warm-started from stage 1's step-250 weights, 420 steps.
#   3. stage 3: v-prediction warm-started from stage 2's final weights, 400 steps.
#   4. samples grid and the reader's scores on single-object test prompts.
set -e
cd "$(dirname "$0")/.."  # the repository root: the helper scripts are under benchmarks/
export OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv-test/bin/python}
B=${B:-/work/gen-bench}
TEXT=${TEXT:-/tmp/bbench/tiny}  # a trained `tiny` dual encoder on shapes: its text tower conditions the model
[ -d $B/shapes32-full ] || $PY -m coembed data shapes --out $B/shapes32-full --image-size 32 --train 12000 --val 400 \
  --test 400 --heldout 0 --workers 1
[ -d $B/shapes32 ] || $PY benchmarks/single_object_manifest.py $B/shapes32-full $B/shapes32
COMMON="--preset diffusion-tiny --data $B/shapes32 --set model.text_path=$TEXT --set precision=fp32 --set workers=0
  --set cache_images=true --batch-size 32 --set weight_decay=0.0 --set log_every=20 --set val_samples=100 --no-progress"
# stage 1 (stopped by hand after its step-250 checkpoint; the run folder was renamed diffusion-eps-250)
[ -d $B/diffusion-eps-250 ] || $PY -m coembed train $COMMON --out $B/diffusion-eps-250 --set model.prediction=eps \
  --max-steps 1100 --set lr=6e-4 --set warmup_steps=100 --set val_every=250 --set save_every=250
# stage 2
[ -d $B/diffusion-v/checkpoint ] || $PY -m coembed train $COMMON --out $B/diffusion-v --set init_from=$B/diffusion-eps-250 \
  --max-steps 420 --set lr=4e-4 --set warmup_steps=20 --set val_every=140 --set save_every=70
# stage 3
[ -d $B/diffusion-v2/checkpoint ] || $PY -m coembed train $COMMON --out $B/diffusion-v2 --set init_from=$B/diffusion-v \
  --max-steps 400 --set lr=3e-4 --set warmup_steps=10 --set val_every=200 --set save_every=100
# stage 4 (the session lead, after the helper's report)
[ -d $B/diffusion-v3/checkpoint ] || $PY -m coembed train $COMMON --out $B/diffusion-v3 --set init_from=$B/diffusion-v2 \
  --max-steps 1200 --set lr=3e-4 --set warmup_steps=10 --set val_every=300 --set save_every=100
for run in diffusion-v2 diffusion-v3; do
  $PY -m coembed eval --task generation --checkpoint $B/$run --data $B/data/shapes32 --scorer $TEXT \
    --reader $B/readers/r32 --layouts single --prompts-per-layout 100 --steps 25 --guidance 3 --seed 0 \
    --out $B/eval/$run-single.json --grid $B/eval/$run-single-grid.png
done
