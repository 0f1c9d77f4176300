"""Zero-shot with words the training captions never use: does a text tower know language beyond the data?

`shapes` captions name each shape and colour with a fixed vocabulary (``circle``/``disc``,
``diamond``/``rhombus``, ``cross``/``plus sign``, ``ring``/``donut`` ...). The prompts here replace the
class name with synonyms outside that vocabulary; a tower trained from scratch has never seen them,
a pretrained one (MiniLM) has seen them in its own pre-training. :func:`unseen_words` checks the
"never seen" claim against a dataset's captions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import torch

from coembed.eval.features import SplitFeatures, embed_texts
from coembed.eval.suite import single_object_labels
from coembed.eval.zeroshot import fill_template, zeroshot_classify, zeroshot_metrics
from coembed.loading import Loaded

# Synonyms chosen by hand for the rendered objects (colours: the RGB values in
# coembed/data/synthetic/shapes.py); none is a word of the shapes caption generator.
SHAPE_SYNONYMS = {
    "circle": ["dot", "round blob"],
    "square": ["box", "tile"],
    "triangle": ["wedge", "pyramid"],
    "diamond": ["lozenge", "kite"],
    "star": ["pentagram", "sparkle"],
    "cross": ["addition symbol", "crosshair"],
    "ring": ["hoop", "loop"],
    "heart": ["valentine", "love symbol"],
}
COLOR_SYNONYMS = {
    "red": ["crimson", "scarlet"],
    "green": ["emerald", "jade"],
    "blue": ["cobalt", "sapphire"],
    "yellow": ["golden", "lemon"],
    "purple": ["violet", "lilac"],
    "orange": ["tangerine", "amber"],
    "cyan": ["turquoise", "aqua"],
    "pink": ["rose", "bubblegum"],
}
SYNONYMS = {"shape": SHAPE_SYNONYMS, "color": COLOR_SYNONYMS}
_WORD = re.compile(r"[a-z]+")


def words(texts: Iterable[str]) -> set[str]:
    """Lower-case alphabetic words of ``texts``."""
    return {w for t in texts for w in _WORD.findall(t.lower())}


def unseen_words(synonyms: dict[str, list[str]], captions: Iterable[str]) -> dict[str, list[str]]:
    """Per class, the synonyms none of whose words occurs in ``captions`` (all of them, if the claim holds)."""
    seen = words(captions)
    return {c: [s for s in names if not (words([s]) & seen)] for c, names in synonyms.items()}


def synonym_class_embeddings(loaded: Loaded, synonyms: dict[str, list[str]], classnames: list[str],
                             templates: list[str]) -> torch.Tensor:
    """(C, D) unit class embeddings: the mean over every (synonym, template) prompt of a class."""
    rows = []
    for name in classnames:
        prompts = [fill_template(t, s) for s in synonyms[name] for t in templates]
        emb = embed_texts(loaded.model, loaded.tokenizer, prompts)  # (S*T, D), normalised
        rows.append(torch.nn.functional.normalize(emb.mean(dim=0), dim=-1))
    return torch.stack(rows)


def synonym_zeroshot(loaded: Loaded, feats: SplitFeatures, attribute: str, classnames: list[str],
                     templates: list[str], synonyms: dict[str, list[str]] | None = None) -> dict | None:
    """Zero-shot top-1 etc. on single-object images of ``feats`` with synonym prompts (None: no such image)."""
    rows, labels = single_object_labels(feats.samples, attribute, classnames)
    if not rows:
        return None
    class_emb = synonym_class_embeddings(loaded, synonyms or SYNONYMS[attribute], classnames, templates)
    logits = zeroshot_classify(feats.image_emb[rows], class_emb)
    return {**zeroshot_metrics(logits, torch.tensor(labels)), "n": len(rows)}
