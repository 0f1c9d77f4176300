#!/bin/bash
# The generated-image evaluation as run for docs/generation_eval.md (one thread, one job at a time).
#   1. real shapes data at 32 and 64 px (8000 train, 1000 test), 2. one attribute reader per size,
#   3. the ITM scorer (albef-tiny), 4. the evaluation of a diffusion run (DIFFUSION_RUN, default
#   /work/gen-bench/diffusion) with the `tiny` dual encoder /tmp/bbench/tiny as the CLIP scorer.
set -e
export OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv-test/bin/python}
B=${B:-/work/gen-bench}
DIFFUSION_RUN=${DIFFUSION_RUN:-$B/diffusion}
SIZE=${SIZE:-32}  # the size the diffusion run generates at: picks the data (prompts, real rows) and the reader
for s in 32 64; do
  [ -d $B/data/shapes$s ] || $PY -m coembed data shapes --out $B/data/shapes$s --image-size $s --train 8000 --val 500 \
    --test 1000 --heldout 0 --workers 1 --seed 0
  [ -f $B/readers/r$s/config.json ] || $PY -m coembed train-reader --data $B/data/shapes$s --out $B/readers/r$s \
    --image-size $s --steps 1500
done
[ -d $B/scorers/albef-tiny/checkpoint ] || $PY -m coembed train --preset albef-tiny --data $B/data/shapes64 \
  --out $B/scorers/albef-tiny --set max_steps=400 --set batch_size=64 --set lr=5e-4 --set warmup_steps=40 \
  --set val_every=200 --set save_every=200 --set log_every=20 --set progress=false --set workers=0 --set seed=0
$PY -m coembed eval --task generation --checkpoint $DIFFUSION_RUN --data $B/data/shapes$SIZE --scorer /tmp/bbench/tiny \
  --fusion $B/scorers/albef-tiny --reader $B/readers/r$SIZE --prompts-per-layout 50 --steps 50 --guidance 3 --seed 0 \
  --out $B/eval/generation.json --grid $B/eval/generation_grid.png
