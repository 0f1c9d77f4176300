"""Queries against a store: text, image, weighted combinations, and zero-shot tags.

A query expression is one or more terms joined by ``+`` or ``-``; a term may start with a weight
and a colon. Words between operators form one term, and quotes keep operators inside a term::

    red circle                      one term
    "2:red circle" - "square"       2 * e("red circle") - e("square")
    red circle + 0.5:big - blue     e("red circle") + 0.5 * e("big") - e("blue")

Every term's embedding is L2-normalised, weighted, summed, and the sum normalised again: the query
direction. Adjacent quoted strings without an operator between them are one term.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from coembed.errors import ConfigError
from coembed.loading import Loaded

_WEIGHT = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*:(.*)$", re.S)
_OPERATORS = ("+", "-")
MAX_TERMS = 16
MAX_TERM_CHARS = 1000


class QueryError(ConfigError):
    """A malformed query expression (the message says where and why)."""


@dataclass(frozen=True)
class Term:
    """One part of a query: ``weight`` (signed) times the embedding of ``text``."""

    weight: float
    text: str


def parse_query(expression: str) -> list[Term]:
    """Parse a query expression (see the module docstring) into terms.

    Raises:
        QueryError: empty expression, unbalanced quotes, an operator without a term, a bad weight.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise QueryError("empty query: give some text, e.g. \"red circle\"")
    try:
        tokens = shlex.split(expression, posix=True)
    except ValueError as e:  # "No closing quotation"
        raise QueryError(f"malformed query {expression!r}: {e}") from None
    return parse_tokens(tokens)


def parse_tokens(tokens: Sequence[str]) -> list[Term]:
    """Terms from already split words (e.g. command-line arguments ``"2:red circle" - square``)."""
    groups: list[tuple[float, list[str]]] = []
    sign: float | None = 1.0  # the sign of the next term; None right after a term
    after_operator = False
    for token in tokens:
        if token in _OPERATORS:
            if after_operator:
                raise QueryError(f"two operators in a row before {token!r}: put a term between them")
            sign, after_operator = (1.0 if token == "+" else -1.0), True
            continue
        after_operator = False
        if sign is None:
            groups[-1][1].append(token)
        else:
            groups.append((sign, [token]))
            sign = None
    if not groups:
        raise QueryError("empty query: give some text, e.g. \"red circle\"")
    if sign is not None:
        raise QueryError(f"query ends with an operator: add a term after the last {'+' if sign > 0 else '-'}")
    if len(groups) > MAX_TERMS:
        raise QueryError(f"too many terms ({len(groups)}); at most {MAX_TERMS}")
    return [_term(sign, " ".join(words)) for sign, words in groups]


def _term(sign: float, text: str) -> Term:
    weight, match = 1.0, _WEIGHT.match(text)
    if match:
        weight, text = float(match.group(1)), match.group(2)
        if not np.isfinite(weight) or weight <= 0:
            raise QueryError(f"weight {match.group(1)!r} must be a positive number")
    text = " ".join(text.split())
    if not text:
        raise QueryError("a weight needs text after its colon, e.g. \"2:red circle\"")
    if len(text) > MAX_TERM_CHARS:
        raise QueryError(f"a query term is {len(text)} characters long; at most {MAX_TERM_CHARS}")
    return Term(sign * weight, text)


# ----------------------------------------------------------------------------- encoding
@torch.no_grad()
def encode_texts(loaded: Loaded, texts: Sequence[str]) -> np.ndarray:
    """(N, D) unit-norm float32 text embeddings."""
    from coembed.eval.features import embed_texts

    return embed_texts(loaded.model, loaded.tokenizer, list(texts)).numpy()


@torch.no_grad()
def encode_images(loaded: Loaded, images: Sequence) -> np.ndarray:
    """(N, D) unit-norm float32 embeddings of PIL images."""
    model = loaded.model
    pixels = torch.stack([loaded.preprocess(img) for img in images]).to(next(model.parameters()).device)
    return model.encode_image(pixels, normalize=True).float().cpu().numpy()


def combine(vectors: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """Normalised weighted sum of unit vectors (N, D) -> (D,).

    Raises:
        QueryError: the terms cancel out (the sum is ~0).
    """
    total = (np.asarray(weights, dtype=np.float32)[:, None] * vectors).sum(0)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise QueryError("the query terms cancel out: nothing is left to search for")
    return (total / norm).astype(np.float32)


def query_vector(loaded: Loaded, terms: Sequence[Term], images: Sequence = (), image_weight: float = 1.0,
                 encode_text: Callable[[list[str]], np.ndarray] | None = None) -> np.ndarray:
    """The search direction of text ``terms`` plus PIL ``images`` (each with ``image_weight``).

    ``encode_text`` replaces :func:`encode_texts` (a server passes its micro-batcher).
    """
    parts, weights = [], []
    if terms:
        texts = [t.text for t in terms]
        parts.append(encode_text(texts) if encode_text else encode_texts(loaded, texts))
        weights.extend(t.weight for t in terms)
    if images:
        parts.append(encode_images(loaded, images))
        weights.extend([image_weight] * len(images))
    if not parts:
        raise QueryError("nothing to search for: give a text query or an image")
    return combine(np.concatenate(parts), weights)


# ----------------------------------------------------------------------------- zero-shot tags
def zero_shot_tags(loaded: Loaded, image_emb: np.ndarray, labels: Sequence[str], templates: Sequence[str] = ("a {}",),
                   top: int = 3) -> list[list[tuple[str, float]]]:
    """For each image embedding (N, D): the ``top`` labels and softmax probabilities, best first.

    Raises:
        ConfigError: fewer than two labels.
    """
    from coembed.eval.zeroshot import class_embeddings

    labels = [label.strip() for label in labels if label.strip()]
    if len(labels) < 2:
        raise ConfigError(f"zero-shot tagging needs at least two labels, got {labels!r}")
    classes = class_embeddings(lambda t: torch.from_numpy(encode_texts(loaded, t)), labels, list(templates))
    logits = loaded.model.temperature().detach().float() * torch.from_numpy(image_emb).float() @ classes.T
    probs = logits.softmax(-1)
    values, indices = probs.topk(min(top, len(labels)), dim=-1)
    return [[(labels[i], float(p)) for p, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]
