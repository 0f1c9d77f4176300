"""Zero-shot classification: prompt-ensembled class embeddings and CLIP_benchmark's metrics."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

_SLOT = re.compile(r"\{c?\}")


def fill_template(template: str, classname: str) -> str:
    """Put ``classname`` into every ``{c}`` and ``{}`` slot of ``template``.

    Plain substitution rather than ``str.format`` so that other braces in a template stay literal.
    """
    return _SLOT.sub(lambda _: classname, template)


def class_embeddings(
    encode_text: Callable[[list[str]], Tensor],
    classnames: Sequence[str],
    templates: Sequence[str],
    batch_size: int = 256,
) -> Tensor:
    """CLIP prompt ensembling: one unit-norm embedding per class.

    Each (class, template) prompt is encoded and L2-normalised, the prompts of a class are averaged
    and the mean is normalised again.

    Args:
        encode_text: maps a list of n strings to an (n, D) tensor (normalised or not).
        classnames: the C class names, in label order.
        templates: T prompt templates, each with a ``{}`` or ``{c}`` slot for the class name.
        batch_size: prompts passed to ``encode_text`` per call.

    Returns:
        (C, D) float tensor with unit-norm rows, on the device ``encode_text`` returns.

    Raises:
        ValueError: empty or non-string classnames / templates, a template without a slot, a bad
            batch_size, or ``encode_text`` returning the wrong shape.
    """
    _check_prompts(classnames, templates, batch_size)
    prompts = [fill_template(t, c) for c in classnames for t in templates]
    with torch.no_grad():
        batches = [prompts[i : i + batch_size] for i in range(0, len(prompts), batch_size)]
        emb = torch.cat([_encode(encode_text, batch) for batch in batches])
    emb = emb.to(torch.promote_types(emb.dtype, torch.float32))
    emb = F.normalize(emb, dim=-1).view(len(classnames), len(templates), -1)
    return F.normalize(emb.mean(dim=1), dim=-1)


def zeroshot_classify(image_emb: Tensor, class_emb: Tensor, logit_scale: float = 100.0) -> Tensor:
    """Logits of images against class embeddings: ``logit_scale * normalize(image_emb) @ class_emb.T``.

    The scale (CLIP's 100) does not change any metric; it only makes softmax probabilities sensible.

    Args:
        image_emb: (N, D) image embeddings, normalised here.
        class_emb: (C, D) class embeddings from :func:`class_embeddings`.
        logit_scale: multiplier on the cosine similarities.

    Returns:
        (N, C) logits.
    """
    if image_emb.ndim != 2 or class_emb.ndim != 2 or image_emb.shape[1] != class_emb.shape[1]:
        raise ValueError(
            "image_emb (N, D) and class_emb (C, D) must share D, "
            f"got {tuple(image_emb.shape)} and {tuple(class_emb.shape)}"
        )
    dtype = torch.promote_types(torch.promote_types(image_emb.dtype, class_emb.dtype), torch.float32)
    return logit_scale * F.normalize(image_emb.to(dtype), dim=-1) @ class_emb.to(dtype).T


def zeroshot_metrics(logits: Tensor, labels: Tensor) -> dict[str, float]:
    """Top-1 / top-5 accuracy and mean per-class recall, as in CLIP_benchmark.

    Ties between logits are broken by class index (the lower index ranks first), matching
    ``argmax``. One deliberate difference from CLIP_benchmark: with fewer than 5 classes ``acc5`` is
    top-C accuracy (always 1.0) instead of NaN, so reports stay valid JSON.

    Args:
        logits: (N, C) scores.
        labels: (N,) integer true class of each row, in [0, C).

    Returns:
        ``acc1``, ``acc5`` (top-min(5, C)) and ``mean_per_class_recall`` (mean over the classes that
        occur in ``labels`` of the fraction of their rows predicted correctly; sklearn's
        ``balanced_accuracy_score``).
    """
    _check_logits(logits, labels)
    labels = labels.to(device=logits.device, dtype=torch.long)
    rank = _rank_of_label(logits, labels)
    return {
        "acc1": (rank < 1).double().mean().item(),
        "acc5": (rank < min(5, logits.shape[1])).double().mean().item(),
        "mean_per_class_recall": mean_per_class_recall(logits.argmax(dim=1), labels),
    }


def mean_per_class_recall(pred: Tensor, labels: Tensor) -> float:
    """Mean over the classes present in ``labels`` of per-class recall.

    Args:
        pred: (N,) predicted class indices.
        labels: (N,) true class indices (non-negative).
    """
    if pred.numel() == 0 or pred.numel() != labels.numel():
        raise ValueError(
            f"pred and labels must be non-empty and equally long, got {pred.numel()} and {labels.numel()}"
        )
    pred, labels = pred.long().flatten(), labels.long().flatten().to(pred.device)
    n_classes = int(max(pred.max(), labels.max())) + 1
    total = torch.bincount(labels, minlength=n_classes)
    correct = torch.bincount(labels[pred == labels], minlength=n_classes)
    present = total > 0
    return (correct[present].double() / total[present]).mean().item()


def _rank_of_label(logits: Tensor, labels: Tensor) -> Tensor:
    """(N,) number of classes ranked before the true class (higher logit, or equal and lower index)."""
    true_logit = logits.gather(1, labels[:, None])
    class_idx = torch.arange(logits.shape[1], device=logits.device)
    higher = (logits > true_logit).count_nonzero(1)
    return higher + ((logits == true_logit) & (class_idx[None, :] < labels[:, None])).count_nonzero(1)


def _encode(encode_text: Callable[[list[str]], Tensor], batch: list[str]) -> Tensor:
    """One ``encode_text`` call, checked to return (len(batch), D)."""
    out = encode_text(batch)
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != len(batch):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"encode_text must return a ({len(batch)}, D) tensor for {len(batch)} texts, got {shape}")
    return out


def _check_prompts(classnames: Sequence[str], templates: Sequence[str], batch_size: int) -> None:
    """Raise ValueError naming the first invalid argument."""
    for name, items in (("classnames", classnames), ("templates", templates)):
        if isinstance(items, str) or len(items) == 0:
            raise ValueError(f"{name} must be a non-empty list of strings, got {items!r}")
        bad = [x for x in items if not isinstance(x, str)]
        if bad:
            raise ValueError(f"{name} must contain only strings, got {bad[0]!r}")
    for template in templates:
        if not _SLOT.search(template):
            raise ValueError(f"template {template!r} has no class slot; use '{{}}' or '{{c}}'")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")


def _check_logits(logits: Tensor, labels: Tensor) -> None:
    """logits (N, C) floating without NaN; labels (N,) integer in [0, C)."""
    if logits.ndim != 2 or logits.shape[0] == 0 or logits.shape[1] == 0:
        raise ValueError(f"logits must be a non-empty (N, C) tensor, got shape {tuple(logits.shape)}")
    if not logits.is_floating_point() or torch.isnan(logits).any():
        raise ValueError(f"logits must be floating point without NaN (dtype {logits.dtype})")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(f"labels must have shape ({logits.shape[0]},), got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got {labels.dtype}")
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise ValueError(
            f"labels must be in [0, {logits.shape[1]}), got min {int(labels.min())} max {int(labels.max())}"
        )
