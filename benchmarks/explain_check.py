"""Does the explanation point at the named object? The `shapes` check of ``coembed explain``.

For every multi-object scene of a split, each object is queried by a phrase naming only it ("the
large red circle", from the manifest's ``objects``; within a scene no two objects share size, colour
and shape). A query is a hit when the heat map's peak falls inside the object's box
(:func:`coembed.data.synthetic.shapes.object_box`, the renderer's own geometry). Bar: >= 0.80.

    .venv/bin/python benchmarks/explain_check.py --checkpoint /tmp/c/demo --data /tmp/c/shapes \\
        [--method occlusion|gradcam] [--window 8 --stride 4] [--layer N] [--limit 200] [--json out.json]

"Chance" is the hit rate of a peak drawn uniformly over the image: the mean box area (clipped to the
image) over the image area.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import torch

from coembed.data.synthetic.shapes import object_box
from coembed.eval.explain import ExplainConfig, GradCamConfig, OcclusionConfig, explain_texts, pick_method
from coembed.io import atomic_write_json
from coembed.loading import load
from coembed.models.families import context_length
from coembed.transforms import load_image

BAR = 0.80


def phrase(obj: dict) -> str:
    return f"the {obj['size']} {obj['color']} {obj['shape']}"


def read_scenes(data: Path, split: str, limit: int | None) -> list[dict]:
    lines = [json.loads(x) for x in (data / split / "captions.jsonl").read_text().splitlines() if x.strip()]
    scenes = [x for x in lines if len(x["objects"]) >= 2]
    return scenes[:limit] if limit else scenes


def box_hit(peak: tuple[float, float], box: tuple[float, float, float, float]) -> bool:
    x, y = peak
    x0, y0, x1, y1 = box
    return x0 <= x <= x1 and y0 <= y <= y1


def box_fraction(box: tuple[float, float, float, float], size: int) -> float:
    x0, y0, x1, y1 = (min(max(v, 0.0), size) for v in box)
    return (x1 - x0) * (y1 - y0) / size**2


def check_scene(loaded, root: Path, scene: dict, cfg: ExplainConfig) -> list[dict]:
    """One query per object of the scene: its phrase, peak, box and whether the peak hit."""
    model, preprocess, tokenizer = loaded
    img = load_image(root / scene["image"])
    if img.width != img.height:
        raise SystemExit(f"{scene['image']}: shapes images are square, got {img.size}")
    size = preprocess.image_size
    image = preprocess(img)  # (3, S, S)
    texts = [phrase(o) for o in scene["objects"]]
    tokens = tokenizer(texts, context_length=context_length(model))  # (K, T)
    results = explain_texts(model, image, tokens, pad_id=int(tokenizer.pad_id), cfg=cfg)
    rows = []
    for obj, text, res in zip(scene["objects"], texts, results):
        box = object_box(obj, size)
        rows.append({"image": scene["image"], "layout": scene["layout"], "size": obj["size"], "text": text,
                     "peak": [round(v, 2) for v in res.peak], "box": [round(v, 2) for v in box],
                     "hit": box_hit(res.peak, box), "chance": box_fraction(box, size)})
    return rows


def summarise(rows: list[dict], method: str, seconds: float) -> dict:
    def rate(sel: list[dict]) -> float:
        return round(sum(r["hit"] for r in sel) / len(sel), 4) if sel else float("nan")

    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[f"layout={r['layout']}"].append(r)
        groups[f"size={r['size']}"].append(r)
    acc = rate(rows)
    return {"method": method, "queries": len(rows), "images": len({r["image"] for r in rows}), "hit_rate": acc,
            "chance": round(sum(r["chance"] for r in rows) / max(1, len(rows)), 4), "bar": BAR, "passes": acc >= BAR,
            "by_group": {k: {"queries": len(v), "hit_rate": rate(v)} for k, v in sorted(groups.items())},
            "seconds": round(seconds, 1), "ms_per_query": round(1000 * seconds / max(1, len(rows)), 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data", required=True, type=Path, help="shapes folder (coembed data shapes)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--method", choices=("gradcam", "occlusion"))
    parser.add_argument("--window", type=int)
    parser.add_argument("--stride", type=int)
    parser.add_argument("--layer", type=int)
    parser.add_argument("--limit", type=int, help="first N multi-object scenes only")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", type=Path, help="write the summary and every query here")
    args = parser.parse_args()
    from tqdm.auto import tqdm

    torch.set_num_threads(args.threads)
    loaded = load(args.checkpoint)
    cfg = ExplainConfig(method=args.method, occlusion=OcclusionConfig(window=args.window, stride=args.stride),
                        gradcam=GradCamConfig(layer=args.layer))
    method = pick_method(loaded.model, cfg.method)
    scenes = read_scenes(args.data, args.split, args.limit)
    start, rows = time.perf_counter(), []
    for scene in tqdm(scenes, desc=f"explain ({method})", unit="img", dynamic_ncols=True):
        rows += check_scene(loaded, args.data / args.split, scene, cfg)
    summary = {"checkpoint": str(args.checkpoint), "split": args.split,
               **summarise(rows, method, time.perf_counter() - start)}
    print(json.dumps(summary, indent=2))
    if args.json:
        atomic_write_json(args.json, {**summary, "rows": rows})


if __name__ == "__main__":
    main()
