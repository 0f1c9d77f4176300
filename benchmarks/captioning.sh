#!/usr/bin/env bash
# Issue 9.1 measurement: coca-tiny and blip-tiny trained 400 steps on a 2,000-image `shapes` set with one
# math thread, then 5 example captions (greedy vs beam) next to the ground truth, and BLEU/CIDEr-D of the test
# split's captions (greedy and 3-beam) with the two reference rows. Results: docs/captioning.md.
#   PY=.venv-test/bin/python benchmarks/captioning.sh /tmp/cap
set -euo pipefail
WORK=${1:-/tmp/cap}
PY=${PY:-python}
export OMP_NUM_THREADS=1
[ -f "$WORK/data/meta.json" ] || $PY -m coembed.cli.main data shapes --out "$WORK/data" --train 2000 --val 200 --test 200 --heldout 0
for preset in coca-tiny blip-tiny; do
  /usr/bin/time -f "$preset wall %e s" $PY -m coembed.cli.main train --preset $preset --data "$WORK/data" --out "$WORK/$preset" \
    --set max_steps=400 --set batch_size=128 --set val_every=100 --set val_samples=200 --set log_every=20 \
    --set save_every=400 --set workers=0 --set cache_images=true --set warmup_steps=40 --no-progress
done
$PY benchmarks/caption_examples.py --data "$WORK/data" --runs "$WORK/coca-tiny" "$WORK/blip-tiny" --count 5
for preset in coca-tiny blip-tiny; do
  for method in greedy beam; do
    $PY -m coembed.cli.main eval --task captioning --checkpoint "$WORK/$preset" --data "$WORK/data" --method $method \
      --num-beams 3 --out "$WORK/$preset-$method.json" --predictions "$WORK/$preset-$method.jsonl"
  done
done
$PY benchmarks/caption_baselines.py --data "$WORK/data" --out "$WORK/caption_baselines.json"
