"""The full evaluation of a checkpoint on a dataset split, as ``coembed eval`` runs it.

Tasks: retrieval both ways (always); on `shapes`-style data with per-object labels also zero-shot
classification of shape and colour, a linear probe and compositional tests (hard negatives,
Winoground-style pairs and the held-out-compositions split).

Models with an ITM head (fusion families) are scored on the compositional tests by their matched
probability (and, as ``*_itc``, by the cosine of their ITC embeddings too); their retrieval can be
re-ranked by ITM (``rerank_k``). Dual encoders are scored by cosine.
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
from coembed.eval.compositional import hard_negative_accuracy, hard_negative_accuracy_from_scores, winoground_scores
from coembed.eval.features import SplitFeatures, embed_images, embed_split, embed_texts, load_images
from coembed.eval.linear_probe import linear_probe
from coembed.eval.pair_scores import PairScoreFn, has_itm, pair_scorer
from coembed.eval.rerank import rerank_retrieval
from coembed.eval.retrieval import retrieval_metrics
from coembed.eval.zeroshot import class_embeddings, zeroshot_classify, zeroshot_metrics
from coembed.errors import DataError
from coembed.io import read_jsonl
from coembed.loading import Loaded
from coembed.models.families import context_length

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
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid UTF-8 JSON ({e})") from None
    if not isinstance(meta, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    return meta


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


def _scorer(loaded: Loaded, root: Path, relpaths: list[str], texts: list[str], score: str) -> tuple[PairScoreFn, list[int]]:
    """Pair scores over these images (rows of ``relpaths`` that loaded, returned too) and texts."""
    images, kept, _ = load_images(root, relpaths, loaded.preprocess)
    tokens = loaded.tokenizer(texts, context_length=context_length(loaded.model))
    return pair_scorer(loaded.model, images, tokens, score), kept


def hard_negative_task(loaded: Loaded, root: Path, feats: SplitFeatures, score: str = "cosine") -> dict | None:
    """Accuracy of positives against the split's ``hard_negatives.jsonl``, by ``score`` (``"cosine"`` of
    the embeddings or ``"itm"``)."""
    path = root / "hard_negatives.jsonl"
    if not path.is_file():
        return None
    row_of = {s.image: i for i, s in enumerate(feats.samples)}
    items = [obj for obj in _hard_negative_items(path) if obj["image"] in row_of and obj["negatives"]]
    if not items:
        return None
    rows = [row_of[o["image"]] for o in items]
    negs = [(i, n["caption"], n.get("type", "other")) for i, o in enumerate(items) for n in o["negatives"]]
    owner = torch.tensor([i for i, _, _ in negs])
    if score == "cosine":
        pos_emb = embed_texts(loaded.model, loaded.tokenizer, [o["positive"] for o in items])
        neg_emb = embed_texts(loaded.model, loaded.tokenizer, [c for _, c, _ in negs])
        return hard_negative_accuracy(feats.image_emb[rows], pos_emb, neg_emb, owner, [t for _, _, t in negs])
    fn, _ = _scorer(loaded, root, [feats.samples[r].image for r in rows], [o["positive"] for o in items] + [c for _, c, _ in negs], score)
    n = len(items)
    pos, neg = fn(torch.arange(n), torch.arange(n)), fn(owner, n + torch.arange(len(negs)))
    return hard_negative_accuracy_from_scores(pos, neg, owner, [t for _, _, t in negs])


def _hard_negative_items(path: Path) -> list[dict[str, Any]]:
    """The entries of a ``hard_negatives.jsonl``; a malformed one is an error naming file, line and
    field (skipping it would silently change the benchmark)."""
    items = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        for key in ("image", "positive"):
            if not isinstance(obj.get(key), str):
                raise DataError(f"{where}: field {key!r} must be a string, got {type(obj.get(key)).__name__}")
        negatives = obj.get("negatives", [])
        if not isinstance(negatives, list) or not all(isinstance(n, dict) and isinstance(n.get("caption"), str) for n in negatives):
            raise DataError(f"{where}: field 'negatives' must be a list of objects with a string 'caption'")
        items.append(obj)
    return items


def winoground_task(loaded: Loaded, root: Path, score: str = "cosine") -> dict | None:
    """Winoground text / image / group scores on the split's ``winoground.jsonl`` (pairs of images and
    captions differing by a swap), by ``score``."""
    path = root / "winoground.jsonl"
    if not path.is_file():
        return None
    items = [o for _, o in read_jsonl(path) if all(isinstance(o.get(k), str) for k in ("image_0", "image_1", "caption_0", "caption_1"))]
    if not items:
        return None
    relpaths = sorted({o[k] for o in items for k in ("image_0", "image_1")})
    fn, kept = _scorer(loaded, root, relpaths, [o[k] for o in items for k in ("caption_0", "caption_1")], score)
    row_of = {relpaths[k]: row for row, k in enumerate(kept)}
    good = [p for p, o in enumerate(items) if o["image_0"] in row_of and o["image_1"] in row_of]
    if not good:
        return None
    images = torch.tensor([[row_of[items[p]["image_0"]], row_of[items[p]["image_1"]]] for p in good])  # (P, 2)
    texts = torch.tensor([[2 * p, 2 * p + 1] for p in good])  # (P, 2)
    image_rows = images[:, None, :].expand(-1, 2, -1)  # (P, caption, image)
    text_rows = texts[:, :, None].expand(-1, -1, 2)
    scores = fn(image_rows.reshape(-1), text_rows.reshape(-1)).view(len(good), 2, 2)
    return winoground_scores(scores, [items[p].get("type", "other") for p in good])


def compositional_tasks(loaded: Loaded, root: Path, feats: SplitFeatures) -> dict:
    """Hard negatives and Winoground by ITM (and ITC cosine, suffix ``_itc``) for a fusion model, by
    cosine for a dual encoder; tasks the split has no file for are left out."""
    scores = {"": "itm", "_itc": "cosine"} if has_itm(loaded.model) else {"": "cosine"}
    out = {}
    for suffix, score in scores.items():
        for name, task in (("hard_negatives", hard_negative_task), ("winoground", winoground_task)):
            result = task(loaded, root, feats, score) if name == "hard_negatives" else task(loaded, root, score)
            if result:
                out[name + suffix] = result
    return out


def rerank_task(loaded: Loaded, root: Path, feats: SplitFeatures, k: int, score: str) -> dict:
    """Retrieval after re-ranking each query's ITC top ``k`` by ITM (``score`` "itm" or "itm+itc")."""
    texts = [c for s in feats.samples for c in s.captions]
    fn, kept = _scorer(loaded, root, [s.image for s in feats.samples], texts, "itm")
    if len(kept) != len(feats.samples):
        raise ValueError(f"{len(feats.samples) - len(kept)} images of {root} failed to load for re-ranking")
    return {**rerank_retrieval(feats.image_emb, feats.text_emb, feats.text_to_image, fn, k=k, score=score), "score": score}


def heldout_task(loaded: Loaded, data: Path, meta: dict, rerank: tuple[int, str] | None = None) -> dict | None:
    root = split_root(data, "heldout", required=False)
    if root is None:
        return None
    samples, _ = read_samples(root)
    feats = embed_split(loaded.model, loaded.tokenizer, root, samples, loaded.preprocess)
    result = retrieval_metrics(feats.image_emb, feats.text_emb, feats.text_to_image)
    extra = compositional_tasks(loaded, root, feats)
    if rerank is not None:
        extra["rerank"] = rerank_task(loaded, root, feats, *rerank)
    return {**result, "n_images": len(feats.samples), **extra}


SKIPPABLE = ("zeroshot", "linear_probe", "compositional")


def evaluate(loaded: Loaded, data: str | Path, split: str = "test", *, rerank_k: int | None = None, rerank_score: str = "itm",
             skip: tuple[str, ...] = (), log: Callable[[str], None] = lambda _: None) -> EvalResult:
    """Run every task that the data supports and return the nested metrics.

    Args:
        rerank_k: also report retrieval with each query's ITC top ``rerank_k`` re-ranked by the model's
            ITM head (``retrieval_rerank``); needs a model with ``itm_logits``.
        rerank_score: ``"itm"`` (matched probability, ALBEF) or ``"itm+itc"`` (plus cosine, BLIP).
        skip: tasks of :data:`SKIPPABLE` not to run (retrieval always runs).
    """
    if unknown := sorted(set(skip) - set(SKIPPABLE)):
        raise ValueError(f"skip names unknown task(s) {', '.join(unknown)}; skippable: {', '.join(SKIPPABLE)}")
    if rerank_k is not None and not has_itm(loaded.model):
        raise ValueError(f"rerank_k needs a model with an ITM head; {type(loaded.model).__name__} has none")
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
        if key in meta and "zeroshot" not in skip:
            log(f"zero-shot {attribute}")
            task = zeroshot_task(loaded, feats, attribute, meta[key], templates[attribute])
            if task:
                metrics[f"zeroshot_{attribute}"] = task
    log("linear probe")
    if "linear_probe" not in skip and (probe := linear_probe_task(loaded, data, feats, meta)) is not None:
        metrics["linear_probe"] = probe
    rerank = (rerank_k, rerank_score) if rerank_k is not None else None
    if rerank is not None:
        log(f"re-ranking the ITC top {rerank_k} by {rerank_score}")
        metrics["retrieval_rerank"] = rerank_task(loaded, root, feats, *rerank)
    log("compositional")
    compositional = compositional_tasks(loaded, root, feats) if "compositional" not in skip else {}
    if split == "test" and "compositional" not in skip and (heldout := heldout_task(loaded, data, meta, rerank)):
        compositional["heldout"] = heldout
    if compositional:
        metrics["compositional"] = compositional
    skipped.merge(feats.skipped)
    notes = [skipped.summary()] if skipped.total else []
    return EvalResult(metrics, feats, time.perf_counter() - start, notes)
