#!/usr/bin/env bash
# Issue 9.4's comparison: the three bridges (LLaVA stage 1, Flamingo, Q-Former stage 2) on `shapes`
# captioning and VQA at equal CPU budget, against the LM alone. One torch thread, runs one at a time.
#
#  1. data: shapes 2000/200/500 with SPLIT/vqa.jsonl (3 questions per image);
#  2. the LM's text: each training image's 5 captions plus its "question answer" lines, the answer
#     normalised as the VQA rows have it (lmdata/, the images linked), so the frozen LM has seen
#     questions and answers; lm-tiny trains LM_STEPS on it;
#  3. the frozen image tower: a `tiny` dual encoder (TINY=path reuses one; else trained TINY_STEPS here);
#  4. each bridge trains STEPS at batch 32 on the captions (task caption) and, separately, on the
#     question-answer pairs (task vqa, loss on the answer tokens);
#  5. test split: BLEU-1..4 / CIDEr-D of greedy captions (`coembed eval --task captioning`) and
#     `coembed eval --task vqa` per question type, for every run and the LM alone.
# A run folder that already has a checkpoint is kept (rerun after an interruption). Walls: OUT/walls.txt.
# Usage: benchmarks/bridges_compare.sh OUT [STEPS] [LM_STEPS] [TINY_STEPS]
set -euo pipefail
OUT=${1:?output folder}; STEPS=${2:-300}; LM_STEPS=${3:-600}; TINY_STEPS=${4:-400}
PY=${PYTHON:-python}
HERE=$(cd "$(dirname "$0")" && pwd)
export OMP_NUM_THREADS=1
DATA=$OUT/data
mkdir -p "$OUT"
run() {  # name, then coembed train arguments
  local name=$1; shift
  [ -f "$OUT/$name/checkpoint/model.safetensors" ] && return 0
  local t0=$(date +%s)
  "$PY" -m coembed train --out "$OUT/$name" --set workers=0 --set progress=false --set seed=0 "$@" >"$OUT/$name.log" 2>&1
  echo "$name wall $(( $(date +%s) - t0 )) s" | tee -a "$OUT/walls.txt"
}
if [ ! -f "$DATA/test/vqa.jsonl" ]; then
  "$PY" -m coembed data shapes --out "$DATA" --train 2000 --val 200 --test 500 --heldout 0 >/dev/null
  "$PY" -m coembed data vqa "$DATA"
fi
[ -f "$OUT/lmdata/train/captions.jsonl" ] || "$PY" - "$DATA" "$OUT/lmdata" <<'EOF'
import json, os, pathlib, sys
from coembed.data.vqa_pairs import target_answer  # the normalised answer the bridges are trained to give ("0", not "zero")
src, dst = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(dst / "train").mkdir(parents=True, exist_ok=True)
(dst / "meta.json").write_text((src / "meta.json").read_text())
qa = {}
for line in (src / "train/vqa.jsonl").read_text().splitlines():
    r = json.loads(line)
    qa.setdefault(r["image"], []).append(f'{r["question"]} {target_answer(r["answers"])}')
rows = []
for line in (src / "train/captions.jsonl").read_text().splitlines():
    r = json.loads(line)
    rows.append(json.dumps({**r, "captions": r["captions"] + qa.get(r["image"], [])}))
(dst / "train/captions.jsonl").write_text("\n".join(rows) + "\n")
os.symlink((src / "train/images").resolve(), dst / "train/images")
os.symlink((src / "val").resolve(), dst / "val")
EOF
COMMON=(--set batch_size=32 --set lr=1e-3 --set warmup_steps=50 --set val_samples=200)
run lm --preset lm-tiny --data "$OUT/lmdata" "${COMMON[@]}" --set max_steps="$LM_STEPS" --set val_every="$LM_STEPS" --set save_every="$LM_STEPS"
TINY=${TINY:-$OUT/tiny}
[ "$TINY" != "$OUT/tiny" ] || run tiny --preset tiny --data "$DATA" "${COMMON[@]}" --set batch_size=64 --set max_steps="$TINY_STEPS" \
  --set val_every="$TINY_STEPS" --set save_every="$TINY_STEPS"
BRIDGE=(--data "$DATA" "${COMMON[@]}" --set cache_images=true --set model.vision_path="$TINY" --set model.lm.path="$OUT/lm"
        --set max_steps="$STEPS" --set val_every="$STEPS" --set save_every="$STEPS")
for task in cap vqa; do
  [ $task = cap ] && T=caption || T=vqa
  run llava_$task --preset llava-tiny "${BRIDGE[@]}" --set task=$T
  run flamingo_$task --preset flamingo-tiny "${BRIDGE[@]}" --set task=$T
  run qformer2_$task --preset qformer-tiny --set model.stage=2 "${BRIDGE[@]}" --set task=$T
done
for name in lm llava_cap flamingo_cap qformer2_cap; do
  [ -f "$OUT/$name/eval_caption_test.json" ] || "$PY" -m coembed eval --task captioning --checkpoint "$OUT/$name" --data "$DATA" \
    --split test --max-length 40 --out "$OUT/$name/eval_caption_test.json" --predictions "$OUT/$name/captions_test.jsonl" >/dev/null
done
for name in lm llava_vqa flamingo_vqa qformer2_vqa llava_cap flamingo_cap qformer2_cap; do
  [ -f "$OUT/$name/eval_vqa_test.json" ] || "$PY" -m coembed eval --task vqa --checkpoint "$OUT/$name" --data "$DATA" --split test \
    --out "$OUT/$name/eval_vqa_test.json" >/dev/null
done
"$PY" "$HERE/bridges_table.py" "$OUT"
