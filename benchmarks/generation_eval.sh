#!/bin/bash
# The generated-image evaluation as run for docs/generation_eval.md (one thread, one job at a time):
#   1. real shapes data at 32 and 64 px: 30000 train images for the readers (seed 1) and a seed-0 split
#      whose test captions are the prompts, 2. one attribute reader per size, 3. the evaluation of a
#      diffusion run (DIFFUSION_RUN) with the `tiny` dual encoder /tmp/bbench/tiny as the CLIP scorer and,
#      if FUSION names a run with an ITM head, R@1 by ITM (albef-tiny: ~30 min for 400 steps here; not
#      trained for the docs).
set -e
export OMP_NUM_THREADS=1
PY=${PY:-/work/main/.venv-test/bin/python}
B=${B:-/work/gen-bench}
DIFFUSION_RUN=${DIFFUSION_RUN:-$B/diffusion-v}
SIZE=${SIZE:-32}  # the size the diffusion run generates at: picks the prompts' data and the reader
FUSION=${FUSION:-}
for s in 32 64; do
  [ -d $B/data/shapes${s}big ] || $PY -m coembed data shapes --out $B/data/shapes${s}big --image-size $s --train 30000 \
    --val 0 --test 1000 --heldout 0 --workers 1 --seed 1
  [ -f $B/readers/r$s/config.json ] || $PY -m coembed train-reader --data $B/data/shapes${s}big --out $B/readers/r$s \
    --image-size $s --steps 2500
done
[ -d $B/data/shapes$SIZE ] || $PY -m coembed data shapes --out $B/data/shapes$SIZE --image-size $SIZE --train 8000 \
  --val 500 --test 1000 --heldout 0 --workers 1 --seed 0
$PY -m coembed eval --task generation --checkpoint $DIFFUSION_RUN --data $B/data/shapes$SIZE --scorer /tmp/bbench/tiny \
  ${FUSION:+--fusion $FUSION} --reader $B/readers/r$SIZE --prompts-per-layout 50 --steps 50 --guidance 3 --seed 0 \
  --out $B/eval/$(basename $DIFFUSION_RUN).json --grid $B/eval/$(basename $DIFFUSION_RUN).png
