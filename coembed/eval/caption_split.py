"""Caption a split's images with a captioning model and score the captions against the split's own
captions: BLEU-1..4 and CIDEr-D (:func:`coembed.eval.captioning.caption_metrics`), as the COCO caption
evaluation does with its 5 references per image.

Any model :func:`coembed.generation.is_captioner` accepts is decoded by
:func:`coembed.generation.caption` (greedy or beam search). Besides the COCO metrics the result counts
how many captions repeat one of their references word for word (``exact``) and how many distinct
captions the model wrote (``distinct``): a model that writes one caption for every image can still
score some BLEU, not a high ``distinct``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from coembed.data.datasets import ImageFolderDataset, Sample, collate_images
from coembed.eval.captioning import caption_metrics, tokenize
from coembed.loading import default_preprocess

EVAL_METHODS = ("greedy", "beam")  # sampling is for diversity (CapFilt), not for scoring


@dataclass
class CaptionSplitResult:
    """Scores of the captions written for a split, and the captions.

    Attributes:
        metrics: ``bleu1``..``bleu4``, ``cider``, ``exact`` (share of captions equal to one of their
            references after tokenisation), ``distinct`` (share of distinct captions), ``images``.
        predictions: per scored image ``{"image", "caption", "references"}``.
        skipped: ``(image, reason)`` of the images that could not be read (not scored).
        seconds: wall time of decoding and scoring.
    """

    metrics: dict[str, float]
    predictions: list[dict] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def table(self) -> str:
        """The metrics as a two-column table."""
        from coembed.eval.report import format_table

        rows = [(name, value) for name, value in self.metrics.items()]
        return format_table(rows, headers=("metric", "value"))


def caption_images(model: torch.nn.Module, tokenizer, root: str | Path, samples: Sequence[Sample], *, method: str = "greedy",
                   batch_size: int = 32, progress: Callable[[int, int], None] | None = None,
                   **decoding) -> tuple[dict[int, str], list[tuple[str, str]]]:
    """Captions of the images of ``samples`` (under ``root``): ``{sample index: caption}`` and the skipped images.

    Args:
        method: "greedy" or "beam" (see :data:`EVAL_METHODS`).
        batch_size: images decoded together (a beam search runs ``batch_size * num_beams`` rows).
        progress: ``progress(done, total)`` after each batch.
        decoding: keyword arguments of :func:`coembed.generation.generate` (``max_length``, ``num_beams``, ...).
    """
    from coembed.generation import caption

    if method not in EVAL_METHODS:
        raise ValueError(f"method must be one of {EVAL_METHODS}, got {method!r}")
    device = next(model.parameters()).device
    dataset = ImageFolderDataset(root, [s.image for s in samples], default_preprocess(model))
    captions: dict[int, str] = {}
    skipped: list[tuple[str, str]] = []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_images):
        skipped += [(s.name, s.reason) for s in batch.skipped]
        if batch.images is not None:
            texts = caption(model, batch.images.to(device), tokenizer, method, **decoding)
            captions.update(zip(batch.indices.tolist(), texts))
        if progress is not None:
            progress(len(captions) + len(skipped), len(samples))
    return captions, skipped


def score_captions(samples: Sequence[Sample], captions: dict[int, str]) -> tuple[dict[str, float], list[dict]]:
    """COCO metrics of ``captions`` (sample index -> caption) against each sample's captions, and the
    per-image records. CIDEr-D's document frequencies come from the references of the scored images."""
    if not captions:
        raise ValueError("no caption to score: none of the images could be read")
    refs = {i: list(samples[i].captions) for i in captions}
    metrics = caption_metrics(refs, {i: [c] for i, c in captions.items()})
    words = {i: tokenize(c) for i, c in captions.items()}
    exact = sum(words[i] in {tokenize(r) for r in refs[i]} for i in captions)
    metrics.update(exact=exact / len(captions), distinct=len(set(words.values())) / len(captions), images=len(captions))
    records = [{"image": samples[i].image, "caption": captions[i], "references": refs[i]} for i in sorted(captions)]
    return metrics, records


def evaluate_captioning(model: torch.nn.Module, tokenizer, root: str | Path, samples: Sequence[Sample], *,
                        method: str = "greedy", batch_size: int = 32,
                        progress: Callable[[int, int], None] | None = None, **decoding) -> CaptionSplitResult:
    """Caption every image of ``samples`` and score the captions (:func:`caption_images`, :func:`score_captions`)."""
    start = time.perf_counter()
    captions, skipped = caption_images(model, tokenizer, root, samples, method=method, batch_size=batch_size,
                                       progress=progress, **decoding)
    metrics, records = score_captions(samples, captions)
    return CaptionSplitResult(metrics, records, skipped, time.perf_counter() - start)
