"""Pooled caption features of a frozen text tower, computed once per run (LiT: only the image side trains).

Every unique training caption (and hard negative) goes through the locked encoder once, shortest
first so that a batch carries little padding; the pooled, pre-projection features stay in RAM and in
``<run>/text_features.safetensors``. The file's key hashes everything the features depend on (the
encoder's weights, tokenizer, context length, pooling, precision and the caption list), so a resumed
run reuses it and any change recomputes it.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save

from coembed.io import atomic_write_bytes
from coembed.models.dual_encoder import DualEncoder

CACHE_FILE = "text_features.safetensors"
BATCH_SIZE = 512  # captions per forward pass; larger batches run bf16 matmuls faster on CPU


@dataclass
class TextFeatureCache:
    """Pooled features (N, hidden), float32, one row per caption of ``captions`` (sorted, unique)."""

    captions: list[str]
    features: torch.Tensor
    key: str
    _row: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._row = {c: i for i, c in enumerate(self.captions)}

    def lookup(self, texts: Sequence[str]) -> torch.Tensor:
        """Rows for ``texts`` (each must be cached): (B, hidden)."""
        missing = [t for t in texts if t not in self._row]
        if missing:
            raise KeyError(f"{len(missing)} caption(s) not in the text feature cache, e.g. {missing[0]!r}")
        return self.features[torch.tensor([self._row[t] for t in texts], dtype=torch.long)]


def cache_key(model: DualEncoder, tokenizer, captions: Sequence[str], bf16: bool) -> str:
    """SHA-256 over what the cached features depend on."""
    h = hashlib.sha256()
    spec = {"context_length": model.text_cfg.context_length, "pooling": model.text_cfg.pooling, "bf16": bf16}
    h.update(json.dumps(spec, sort_keys=True).encode())
    h.update(tokenizer.to_str().encode())
    for name, tensor in sorted(model.text.transformer.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    for caption in captions:
        h.update(caption.encode("utf-8", "surrogatepass") + b"\0")
    return h.hexdigest()


@torch.no_grad()
def compute_features(model: DualEncoder, tokenizer, captions: Sequence[str], *, bf16: bool,
                     batch_size: int = BATCH_SIZE, on_batch: Callable[[int], None] | None = None) -> torch.Tensor:
    """Pooled encoder features (N, hidden) in float32, in the order of ``captions``."""
    tower = model.text
    tokens = tokenizer(list(captions), context_length=model.text_cfg.context_length)  # (N, T)
    order = (tokens != model.text_cfg.pad_id).sum(dim=1).argsort(stable=True)  # shortest first: little padding
    out = torch.empty(len(captions), tower.width)
    for start in range(0, len(captions), batch_size):
        rows = order[start : start + batch_size]
        with torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=bf16):
            out[rows] = tower.forward_features(tokens[rows]).float()
        if on_batch:
            on_batch(len(rows))
    return out


def read_cache(path: Path, key: str, captions: list[str]) -> TextFeatureCache | None:
    """The cache stored at ``path`` if it was made for ``key``; None if absent, stale or unreadable."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            stored = (f.metadata() or {}).get("key")
            features = f.get_tensor("features")
    except (SafetensorError, OSError, KeyError, ValueError):
        return None
    if stored != key or features.shape[0] != len(captions):
        return None
    return TextFeatureCache(captions, features, key)


def write_cache(path: Path, cache: TextFeatureCache) -> None:
    """Save atomically (a reader sees the old file or the new one, never half)."""
    atomic_write_bytes(path, save({"features": cache.features.contiguous()}, metadata={"key": cache.key, "rows": str(len(cache.captions))}))


def load_or_build(path: Path, model: DualEncoder, tokenizer, captions: Sequence[str], *, bf16: bool,
                  progress: Callable[[int], Callable[[int], None]] | None = None) -> tuple[TextFeatureCache, bool]:
    """The run's caption features: read from ``path`` when its key matches, else computed and saved.

    Args:
        progress: given the caption count, returns a per-batch callback (a progress bar's update).

    Returns:
        The cache, and whether it was computed now (False: reused from ``path``).
    """
    unique = sorted(set(captions))
    key = cache_key(model, tokenizer, unique, bf16)
    cache = read_cache(path, key, unique)
    if cache is not None:
        return cache, False
    features = compute_features(model, tokenizer, unique, bf16=bf16, on_batch=progress(len(unique)) if progress else None)
    cache = TextFeatureCache(unique, features, key)
    write_cache(path, cache)
    return cache, True
