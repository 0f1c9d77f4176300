"""One table of compositional results for any mix of checkpoints (dual encoder, ALBEF, ViLT, VLMo).

For each ``--run NAME=RUN_FOLDER`` (a `coembed train` output folder, or a checkpoint folder), on the
test split of ``--data``:

- hard negatives (``test/hard_negatives.jsonl``): share of (image, false caption) pairs whose true
  caption scores higher, per perturbation type (swap_attributes, swap_relation, change_count);
- Winoground (``test/winoground.jsonl``): text / image / group scores;
- ITC retrieval R@1 both ways on the test and the held-out-compositions splits (models with a dual
  encoder; ViLT has none);

each by every score the model has: ``itm`` (fusion head, log-odds of matched) and ``itc`` (cosine of
the unimodal embeddings). The budget columns come from the run folder: steps and batch size from
``train_config.json`` / the checkpoint's ``train_state.json``, training seconds from ``train.log``'s
"trained N steps in Xs" line when the run's output was saved there.

    python benchmarks/compositional_table.py --data /tmp/a/shapes --run dual=/tmp/a/dual --run albef=/tmp/a/albef \
        --out docs/compositional_table.json
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import torch

import coembed
from coembed.data.datasets import read_samples
from coembed.data.splits import split_root
from coembed.eval.features import embed_split
from coembed.eval.pair_scores import has_itm
from coembed.eval.retrieval import retrieval_metrics
from coembed.eval.suite import hard_negative_task, winoground_task
from coembed.io import atomic_write_json

TYPES = ("swap_attributes", "swap_relation", "change_count")


def budget(run: Path) -> dict:
    """Steps, batch size, samples and training seconds of a `coembed train` folder (what is known)."""
    out: dict = {}
    cfg_file = run / "train_config.json"
    if cfg_file.is_file():
        cfg = json.loads(cfg_file.read_text())
        out.update(preset=cfg.get("preset"), batch_size=cfg.get("batch_size"), hard_negatives=cfg.get("hard_negatives"))
    state = run / "checkpoint" / "train_state.json"
    if state.is_file():
        out["steps"] = json.loads(state.read_text())["progress"]["step"]
    if out.get("steps") and out.get("batch_size"):
        out["samples"] = out["steps"] * out["batch_size"]
    log = run / "train.log"
    if log.is_file() and (m := re.search(r"trained (\d+) steps in (\d+)s", log.read_text())):
        out["train_seconds"] = int(m.group(2))
    return out


def itc_retrieval(loaded, data: Path, split: str) -> dict | None:
    root = split_root(data, split, required=False)
    if root is None:
        return None
    samples, _ = read_samples(root)
    feats = embed_split(loaded.model, loaded.tokenizer, root, samples, loaded.preprocess)
    r = retrieval_metrics(feats.image_emb, feats.text_emb, feats.text_to_image)
    return {"t2i_r1": r["image_retrieval_recall@1"], "i2t_r1": r["text_retrieval_recall@1"]}


def evaluate_run(path: Path, data: Path) -> dict:
    folder = path / "checkpoint" if (path / "checkpoint" / "config.json").is_file() else path
    loaded = coembed.load(folder)
    loaded.model.eval()
    root = split_root(data, "test")
    dual = hasattr(loaded.model, "encode_image")
    scores = (["itm"] if has_itm(loaded.model) else []) + (["cosine"] if dual else [])
    samples, _ = read_samples(root)
    feats = embed_split(loaded.model, loaded.tokenizer, root, samples, loaded.preprocess) if dual else SimpleNamespace(samples=samples)
    result: dict = {"checkpoint": str(folder), "family": json.loads((folder / "config.json").read_text())["model"].get("family", "dual_encoder"),
                    "budget": budget(path), "scores": {}}
    for score in scores:
        name = "itc" if score == "cosine" else score
        result["scores"][name] = {"hard_negatives": hard_negative_task(loaded, root, feats, score),
                                  "winoground": winoground_task(loaded, root, score)}
    if dual:
        result["retrieval_itc"] = {split: itc_retrieval(loaded, data, split) for split in ("test", "heldout")}
    return result


def rows(results: dict[str, dict]) -> list[str]:
    head = ("| run | family | steps x batch | train s | score | " + " | ".join(TYPES) +
            " | Winoground text / image / group | ITC R@1 t2i / i2t test | held-out |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, r in results.items():
        b = r["budget"]
        for score, s in r["scores"].items():
            hn = (s["hard_negatives"] or {}).get("by_type", {})
            w = s["winoground"] or {}
            ret = r.get("retrieval_itc", {})
            fmt = lambda d: f"{d['t2i_r1']:.3f} / {d['i2t_r1']:.3f}" if d else ""  # noqa: E731
            out.append(f"| {name} | {r['family']} | {b.get('steps', '?')} x {b.get('batch_size', '?')} | {b.get('train_seconds', '?')} | "
                       f"{score} | " + " | ".join(f"{hn[t]:.3f}" if t in hn else "" for t in TYPES) +
                       f" | {w.get('text', 0):.3f} / {w.get('image', 0):.3f} / {w.get('group', 0):.3f} | "
                       f"{fmt(ret.get('test'))} | {fmt(ret.get('heldout'))} |")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--run", action="append", required=True, help="NAME=FOLDER (repeatable)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    results = {}
    for item in args.run:
        name, _, folder = item.partition("=")
        if not folder:
            ap.error(f"--run wants NAME=FOLDER, got {item!r}")
        start = time.perf_counter()
        results[name] = evaluate_run(Path(folder), args.data)
        print(f"{name}: evaluated in {time.perf_counter() - start:.0f}s", flush=True)
    print("\n".join(rows(results)))
    if args.out:
        atomic_write_json(args.out, results)


if __name__ == "__main__":
    main()
