"""The full evaluation of a checkpoint on a dataset split, as ``coembed eval`` runs it.

Tasks: retrieval both ways (always); on `shapes`-style data with per-object labels also zero-shot
classification of shape and colour, a linear probe and compositional tests (hard negatives and the
held-out-compositions split).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from coembed.data.datasets import Sample, read_samples
from coembed.data.splits import split_root
from coembed.eval.compositional import hard_negative_accuracy
from coembed.eval.features import SplitFeatures, embed_images, embed_split, embed_texts
from coembed.eval.linear_probe import linear_probe
from coembed.eval.retrieval import retrieval_metrics
from coembed.eval.zeroshot import class_embeddings, zeroshot_classify, zeroshot_metrics
from coembed.io import read_jsonl
from coembed.loading import Loaded

DEFAULT_TEMPLATES = {"shape": ["a {}", "a photo of a {}"], "color": ["a {} object", "something {}"]}
PROBE_MAX_TRAIN = 3000  # single-object training images for the probe; more costs time, not accuracy here


@dataclass
class EvalResult:
    """Metrics in CLIP_benchmark-like nesting, plus what the report needs to draw pictures."""

    metrics: dict[str, Any]
    features: SplitFeatures
    seconds: float
    notes: list[str] = field(default_factory=list)


def _meta(data: Path) -> dict[str, Any]:
    path = data / "meta.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def single_object_labels(samples: list[Sample], attribute: str, classnames: list[str]) -> tuple[list[int], list[int]]:
    """Rows of single-object samples and their class index for ``attribute`` (shape or color)."""
    rows, labels = [], []
    for row, s in enumerate(samples):
        objects = s.meta.get("objects") or []
        if len(objects) == 1 and objects[0].get(attribute) in classnames:
            rows.append(row)
            labels.append(classnames.index(objects[0][attribute]))
    return rows, labels


def zeroshot_task(loaded: Loaded, feats: SplitFeatures, attribute: str, classnames: list[str], templates: list[str]) -> dict | None:
    rows, labels = single_object_labels(feats.samples, attribute, classnames)
    if not rows:
        return None
    encode = lambda texts: embed_texts(loaded.model, loaded.tokenizer, texts)  # noqa: E731
    logits = zeroshot_classify(feats.image_emb[rows], class_embeddings(encode, classnames, templates))
    return {**zeroshot_metrics(logits, torch.tensor(labels)), "n": len(rows)}


def _probe_features(loaded: Loaded, root: Path, meta: dict, limit: int) -> tuple[torch.Tensor, list[Sample]]:
    """Features of the split's first ``limit`` single-object images (the rows both probes use), embedded once."""
    samples, _ = read_samples(root)
    rows, _ = single_object_labels(samples, "shape", meta["shapes"])
    rows = rows[:limit]
    emb, kept, _ = embed_images(loaded.model, root, [samples[r].image for r in rows], loaded.preprocess)
    return emb, [samples[rows[k]] for k in kept]


def linear_probe_task(loaded: Loaded, data: Path, feats: SplitFeatures, meta: dict) -> dict | None:
    roots = {s: split_root(data, s, required=False) for s in ("train", "val")}
    if roots["train"] is None or roots["val"] is None or not meta:
        return None
    (train_x, train_s), (val_x, val_s) = (_probe_features(loaded, roots[s], meta, PROBE_MAX_TRAIN) for s in ("train", "val"))
    result = {}
    for attribute, names in (("shape", meta["shapes"]), ("color", meta["colors"])):
        train_y, val_y = (single_object_labels(s, attribute, names)[1] for s in (train_s, val_s))
        rows, test_y = single_object_labels(feats.samples, attribute, names)
        if min(len(train_y), len(val_y), len(test_y)) == 0:
            return None
        result[attribute] = linear_probe(train_x, train_y, val_x, val_y, feats.image_emb[rows], test_y)
    return result


def hard_negative_task(loaded: Loaded, root: Path, feats: SplitFeatures) -> dict | None:
    path = root / "hard_negatives.jsonl"
    if not path.is_file():
        return None
    row_of = {s.image: i for i, s in enumerate(feats.samples)}
    items = [obj for _, obj in read_jsonl(path) if obj.get("image") in row_of and obj.get("negatives")]
    if not items:
        return None
    rows = [row_of[o["image"]] for o in items]
    negs = [(i, n["caption"], n.get("type", "other")) for i, o in enumerate(items) for n in o["negatives"]]
    pos_emb = embed_texts(loaded.model, loaded.tokenizer, [o["positive"] for o in items])
    neg_emb = embed_texts(loaded.model, loaded.tokenizer, [c for _, c, _ in negs])
    owner = torch.tensor([i for i, _, _ in negs])
    return hard_negative_accuracy(feats.image_emb[rows], pos_emb, neg_emb, owner, [t for _, _, t in negs])


def heldout_task(loaded: Loaded, data: Path, meta: dict) -> dict | None:
    root = split_root(data, "heldout", required=False)
    if root is None:
        return None
    samples, _ = read_samples(root)
    feats = embed_split(loaded.model, loaded.tokenizer, root, samples, loaded.preprocess)
    result = retrieval_metrics(feats.image_emb, feats.text_emb, feats.text_to_image)
    hard = hard_negative_task(loaded, root, feats)
    return {**result, "n_images": len(feats.samples), **({"hard_negatives": hard} if hard else {})}


def evaluate(loaded: Loaded, data: str | Path, split: str = "test", *, log: Callable[[str], None] = lambda _: None) -> EvalResult:
    """Run every task that the data supports and return the nested metrics."""
    start, data = time.perf_counter(), Path(data)
    root = split_root(data, split)
    samples, skipped = read_samples(root)
    log(f"embedding {len(samples)} images of {root}")
    feats = embed_split(loaded.model, loaded.tokenizer, root, samples, loaded.preprocess)
    meta = _meta(data)
    metrics: dict[str, Any] = {"retrieval": {**retrieval_metrics(feats.image_emb, feats.text_emb, feats.text_to_image),
                                             "n_images": len(feats.samples), "n_texts": len(feats.text_to_image)}}
    templates = {**DEFAULT_TEMPLATES, **meta.get("zeroshot_templates", {})}
    for attribute, key in (("shape", "shapes"), ("color", "colors")):
        if key in meta:
            log(f"zero-shot {attribute}")
            task = zeroshot_task(loaded, feats, attribute, meta[key], templates[attribute])
            if task:
                metrics[f"zeroshot_{attribute}"] = task
    log("linear probe")
    if (probe := linear_probe_task(loaded, data, feats, meta)) is not None:
        metrics["linear_probe"] = probe
    log("compositional")
    compositional = {k: v for k, v in (("hard_negatives", hard_negative_task(loaded, root, feats)),
                                       ("heldout", heldout_task(loaded, data, meta) if split == "test" else None)) if v}
    if compositional:
        metrics["compositional"] = compositional
    skipped.merge(feats.skipped)
    notes = [skipped.summary()] if skipped.total else []
    return EvalResult(metrics, feats, time.perf_counter() - start, notes)
