"""The bridge comparison table (docs/bridges.md) from a benchmarks/bridges_compare.sh output folder: per run its
trainable parameters, steps, wall seconds, captioning metrics (test, greedy) and VQA accuracy per question type.

    PYTHONPATH=. python benchmarks/bridges_table.py /tmp/bvqa
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import coembed

ROWS = [("lm", "LM alone (no image)"), ("llava_cap", "LLaVA stage 1, task caption"), ("flamingo_cap", "Flamingo, task caption"),
        ("qformer2_cap", "Q-Former stage 2, task caption"), ("llava_vqa", "LLaVA stage 1, task vqa"),
        ("flamingo_vqa", "Flamingo, task vqa"), ("qformer2_vqa", "Q-Former stage 2, task vqa")]
TYPES = ("count", "color", "exists", "left_right")


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _walls(out: Path) -> dict[str, str]:
    lines = (out / "walls.txt").read_text().splitlines() if (out / "walls.txt").is_file() else []
    return {ln.split()[0]: ln.split()[2] for ln in lines if len(ln.split()) >= 3}


def row(out: Path, name: str, label: str, walls: dict[str, str]) -> str:
    run = out / name
    model, _, _ = coembed.load(run)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    steps = json.loads((run / "train_config.json").read_text())["max_steps"]
    cap = (_json(run / "eval_caption_test.json") or {}).get("metrics")
    vqa = (_json(run / "eval_vqa_test.json") or {}).get("metrics")
    cells = [label, f"{trainable / 1e3:.0f}k", str(steps), f"{walls.get(name, '?')} s"]
    cells += [f"{cap[k]:.3f}" for k in ("bleu1", "bleu4", "cider")] if cap else ["-"] * 3
    cells += [f"{100 * vqa['vqa_accuracy']:.1f}"] + [f"{100 * vqa[f'vqa_accuracy/{t}']:.1f}" for t in TYPES] if vqa else ["-"] * 5
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    out = Path(sys.argv[1])
    walls = _walls(out)
    print("| run | trainable | steps | wall | BLEU-1 | BLEU-4 | CIDEr-D | VQA | count | colour | exists | left/right |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, label in ROWS:
        if (out / name / "checkpoint").is_dir():
            print(row(out, name, label, walls))


if __name__ == "__main__":
    main()
