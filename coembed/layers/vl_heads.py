"""Heads of fusion encoders over the joint sequence: image-text matching and masked language modelling."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ItmHead(nn.Module):
    """BERT's pooler on the first token (``tanh(dense(x[:, 0]))``) then ``Linear(width, 2)``:
    logits (B, 2) of not matched / matched, as ViLT's ``Pooler`` + ``ITMHead``."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.pooler = nn.Linear(width, width)
        self.fc = nn.Linear(width, 2)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.tanh(self.pooler(states[:, 0])))


class MlmHead(nn.Module):
    """BERT's prediction head: dense -> GELU -> LayerNorm, then the word embeddings transposed (tied)
    plus a bias: states (B, T, width) -> logits (B, T, vocab)."""

    def __init__(self, width: int, vocab_size: int, eps: float = 1e-12) -> None:
        super().__init__()
        self.dense = nn.Linear(width, width)
        self.norm = nn.LayerNorm(width, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, states: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.gelu(self.dense(states)))
        return F.linear(x, word_embeddings, self.bias)
