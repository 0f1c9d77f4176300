"""Retrieval and hard-negative accuracy of a fusion checkpoint (ViLT / VLMo) from its ITM head.

A stop-gap until the shared ITM re-ranking / compositional evaluation lands. Scores of a pair are the
ITM log-odds ``logit[matched] - logit[not matched]``. The R@K and hard-negative definitions are the
dual encoder's (``coembed.eval.retrieval`` / ``coembed.eval.compositional``), fed score matrices
through a one-hot trick: with image "embeddings" ``I_N`` and text "embeddings" ``S^T`` the dot product
of image i and text t is ``S[i, t]``.

- ``itm``: every (image, caption) pair of the first ``--images`` test images scored by ITM.
- ``itc`` (models with ``encode_image``): dual-encoder retrieval on the whole split and on the subset.
- ``itc+itm``: the subset's ITC top ``--k`` candidates of each query re-scored by ITM (ALBEF's
  re-ranking; the rest keep their ITC order below them).
- hard negatives: the ITM score of each test image's canonical caption vs each of its negatives, per
  type (and the ITC score for models with a dual encoder).

    python benchmarks/fusion_eval.py --checkpoint runs/vilt/checkpoint --data data/shapes --out runs/vilt/fusion_eval.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

import coembed
from coembed.data.datasets import read_samples
from coembed.data.splits import split_root
from coembed.eval.compositional import hard_negative_accuracy
from coembed.eval.retrieval import retrieval_metrics
from coembed.io import atomic_write_json, read_jsonl
from coembed.transforms import load_image


@torch.no_grad()
def itm_scores(model, images: torch.Tensor, tokens: torch.Tensor, pairs: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """(P,) ITM log-odds of the pairs ``pairs[p] = (image row, text row)``."""
    out = []
    for start in tqdm(range(0, len(pairs), batch), desc="itm", leave=False):
        i, t = pairs[start : start + batch].T
        logits = model.itm_logits(images[i], tokens[t]).float()
        out.append(logits[:, 1] - logits[:, 0])
    return torch.cat(out) if out else torch.zeros(0)


def score_metrics(scores: torch.Tensor, owner: torch.Tensor) -> dict[str, float]:
    """R@K from an (N images, M texts) score matrix, by the dual encoder's definitions."""
    return retrieval_metrics(torch.eye(scores.shape[0], dtype=torch.float64), scores.T.double(), owner)


def full_itm(model, images, tokens, n_images: int) -> torch.Tensor:
    grid = torch.cartesian_prod(torch.arange(n_images), torch.arange(tokens.shape[0]))  # (N*M, 2)
    return itm_scores(model, images, tokens, grid).view(n_images, tokens.shape[0])


def reranked(model, images, tokens, sim: torch.Tensor, k: int) -> torch.Tensor:
    """(N, M) scores: per image its ITC top-k texts re-scored by ITM (i2t), and per text its top-k
    images (t2i), placed above every other candidate; two matrices as the directions differ."""
    offset = sim.abs().max() + 1
    i2t, t2i = sim.clone(), sim.clone()
    top_t = sim.topk(min(k, sim.shape[1]), dim=1).indices  # (N, k)
    pairs = torch.stack([torch.arange(sim.shape[0]).repeat_interleave(top_t.shape[1]), top_t.flatten()], 1)
    s = itm_scores(model, images, tokens, pairs)
    i2t[pairs[:, 0], pairs[:, 1]] = s + offset + s.abs().max()
    top_i = sim.topk(min(k, sim.shape[0]), dim=0).indices  # (k, M)
    pairs = torch.stack([top_i.T.flatten(), torch.arange(sim.shape[1]).repeat_interleave(top_i.shape[0])], 1)
    s = itm_scores(model, images, tokens, pairs)
    t2i[pairs[:, 0], pairs[:, 1]] = s + offset + s.abs().max()
    return i2t, t2i


def hard_negatives(model, root: Path, names: list[str], images, tokenizer, context: int) -> dict:
    row = {n: i for i, n in enumerate(names)}
    items = [o for _, o in read_jsonl(root / "hard_negatives.jsonl") if o.get("image") in row]
    pos_tok = tokenizer([o["positive"] for o in items], context_length=context)
    negs = [(k, n["caption"], n["type"]) for k, o in enumerate(items) for n in o["negatives"]]
    neg_tok = tokenizer([c for _, c, _ in negs], context_length=context)
    img_rows = torch.tensor([row[o["image"]] for o in items])
    pos = itm_scores(model, images, pos_tok, torch.stack([img_rows, torch.arange(len(items))], 1))
    owner = torch.tensor([k for k, _, _ in negs])
    neg = itm_scores(model, images, neg_tok, torch.stack([img_rows[owner], torch.arange(len(negs))], 1))
    types = [t for _, _, t in negs]
    result = {"itm": hard_negative_accuracy(torch.ones(len(items), 1), pos[:, None], neg[:, None], owner, types)}
    if hasattr(model, "encode_image"):
        with torch.no_grad():
            img = model.encode_image(images[img_rows], normalize=True)
            result["itc"] = hard_negative_accuracy(img, model.encode_text(pos_tok, normalize=True),
                                                   model.encode_text(neg_tok, normalize=True), owner, types)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--images", type=int, default=100, help="images of the ITM retrieval subset")
    p.add_argument("--k", type=int, default=16)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    model, preprocess, tokenizer = coembed.load(args.checkpoint)
    root = split_root(args.data, args.split)
    samples, _ = read_samples(root)
    images = torch.stack([preprocess(load_image(root / s.image)) for s in samples])
    texts = [c for s in samples for c in s.captions]
    owner = torch.tensor([i for i, s in enumerate(samples) for _ in s.captions])
    tokens = tokenizer(texts, context_length=model.cfg.context_length)
    n = min(args.images, len(samples))
    sub = owner < n
    metrics: dict = {"n_images": len(samples), "subset_images": n, "subset_texts": int(sub.sum())}
    metrics["itm"] = score_metrics(full_itm(model, images, tokens[sub], n), owner[sub])
    if hasattr(model, "encode_image"):
        with torch.no_grad():
            img, txt = model.encode_image(images, normalize=True), model.encode_text(tokens, normalize=True)
        metrics["itc_full_split"] = retrieval_metrics(img, txt, owner)
        sim = img[:n] @ txt[sub].T
        metrics["itc"] = score_metrics(sim, owner[sub])
        i2t, t2i = reranked(model, images, tokens[sub], sim, args.k)
        metrics[f"itc+itm@{args.k}"] = {**{k: v for k, v in score_metrics(i2t, owner[sub]).items() if k.startswith("text")},
                                        **{k: v for k, v in score_metrics(t2i, owner[sub]).items() if k.startswith("image")}}
    metrics["hard_negatives"] = hard_negatives(model, root, [s.image for s in samples], images, tokenizer, model.cfg.context_length)
    metrics["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_json(Path(args.out), {"dataset": str(args.data), "split": args.split, "model": str(args.checkpoint), "metrics": metrics})
    print(json.dumps(metrics, indent=2))


if __name__ == "__main__":
    main()
