"""``tokenizer_from``: a run that reads its captions with another checkpoint's BPE tokenizer instead of
training a new one on its own captions.

The trainer trains a BPE per dataset, so two runs on different datasets give the same word different
ids. Fine-tuning a run on another dataset (BLIP: pre-train on noisy web pairs, fine-tune on COCO) with
``init_from`` then copies token embeddings whose rows mean other words; with ``tokenizer_from`` set to
the pre-trained run, the ids stay the same and every text weight keeps its meaning.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from coembed.checkpoint import CONFIG_FILE, TOKENIZER_FILE, resolve
from coembed.errors import CheckpointError, ConfigError
from coembed.tokenizer import Tokenizer


def source_tokenizer(path: str | os.PathLike, field: str = "tokenizer_from") -> Tokenizer:
    """The BPE tokenizer of the checkpoint (or run folder) at ``path``.

    Raises:
        ConfigError: naming ``field``, when ``path`` is no checkpoint, holds no readable tokenizer, or
            holds another kind of tokenizer (a Hugging Face or CLIP one) than coembed's BPE.
    """
    try:
        folder = resolve(path)
        kind = _tokenizer_kind(folder)
        if kind != "bpe":
            raise ConfigError(f"{field} {folder} holds a {kind!r} tokenizer; only coembed's own BPE tokenizer can be reused")
        return Tokenizer.from_file(folder / TOKENIZER_FILE)
    except CheckpointError as e:
        raise ConfigError(f"{field}: {e}") from None


def _tokenizer_kind(folder: Path) -> str:
    try:
        config = json.loads((folder / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG_FILE}: cannot read ({e})") from None
    spec = config.get("tokenizer") if isinstance(config, dict) else None
    return str(spec.get("kind", "bpe")) if isinstance(spec, dict) else "bpe"


def check_model_ids(path: str, ids: dict[str, int], model_overrides: dict[str, Any]) -> None:
    """A ``model.*`` override that contradicts the reused tokenizer's vocabulary size or special ids
    (``ids``: setting name -> the tokenizer's value) is an error: the model would index past, or
    mis-read, the tokenizer's ids."""
    clashes = [f"model.{k}={model_overrides[k]!r} (its tokenizer has {v})" for k, v in ids.items()
               if k in model_overrides and model_overrides[k] != v]
    if clashes:
        raise ConfigError(f"tokenizer_from {path}: " + "; ".join(clashes) + "; drop the override(s) or use another tokenizer_from")


def same_vocabulary(a: Tokenizer, b: Tokenizer) -> bool:
    """Whether two BPE tokenizers map every string to the same ids (same vocabulary, merges, specials)."""
    def core(tok: Tokenizer) -> tuple[Any, Any]:
        spec = json.loads(tok.to_str())
        return spec.get("model"), [(t["id"], t["content"]) for t in spec.get("added_tokens", [])]

    return core(a) == core(b)


def check_init_tokenizer(tokenizer: Tokenizer, init_from: str, *, strict: bool) -> str | None:
    """Compare the run's tokenizer with ``init_from``'s; a checkpoint without a BPE tokenizer is not compared.

    Returns:
        None when they agree, else a warning (token embeddings copied by ``init_from`` map to other words).

    Raises:
        ConfigError: when they disagree and ``strict`` (``tokenizer_from`` was given: the user asked for
            one vocabulary, and ``init_from`` was trained with another).
    """
    if not isinstance(tokenizer, Tokenizer):
        return None  # a Hugging Face or language-model tokenizer: the run did not train a BPE
    try:
        theirs = source_tokenizer(init_from, field="init_from")
    except ConfigError:
        return None  # not a BPE checkpoint (e.g. a Hugging Face text tower): ids are not comparable
    if same_vocabulary(tokenizer, theirs):
        return None
    if strict:
        raise ConfigError(f"init_from {init_from} was trained with another tokenizer than tokenizer_from gives: its token "
                          "embeddings would map to other words; set tokenizer_from to the init_from checkpoint (or its source)")
    return (f"warning: init_from {init_from} has another tokenizer than this run's (a BPE trained on this run's captions): "
            f"token embeddings copied from it map to other words; set tokenizer_from: {init_from} to keep its token ids")
