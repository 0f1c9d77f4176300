"""Autoregressive decoding driven by one function: ``logits_fn(tokens (N, T)) -> logits (N, T, V)``.

Greedy search, beam search and nucleus (top-p) sampling, with the semantics of Hugging Face's
``generate()`` so that the same logits give the same tokens (tests/generation compares them on a
GPT-2): ``max_length`` counts the prompt; a row that emitted ``eos_id`` is continued with ``pad_id``;
decoding stops when every row has finished or the length is reached; the result is cropped to the
longest row. Every step recomputes the whole prefix (no KV cache): at caption lengths and coembed's
model sizes the decoder's cost is small next to the image tower's.

Beam search follows Hugging Face's vectorised beam search: at each step the ``2 * num_beams`` best
continuations over all beams are taken; those ending in ``eos_id`` (or reaching ``max_length``) among
the first ``num_beams`` become finished hypotheses scored ``sum_logprobs / generated_length **
length_penalty``; the best ``num_beams`` unfinished ones continue. With ``early_stopping=False`` a row
stops collecting hypotheses once it holds ``num_beams`` of them and its best running beam, normalised
at the current length, cannot beat the worst; ``True`` stops as soon as it holds ``num_beams``;
``"never"`` estimates the best running score at ``max_length`` when ``length_penalty > 0``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

LogitsFn = Callable[[Tensor], Tensor]
_NEG = -1.0e9  # the "impossible" score Hugging Face's beam search adds, kept equal so ties break alike


def _check(prompt: Tensor, max_length: int) -> None:
    if prompt.ndim != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be (batch, length >= 1) token ids, got shape {tuple(prompt.shape)}")
    if max_length <= prompt.shape[1]:
        raise ValueError(f"max_length ({max_length}) must exceed the prompt length ({prompt.shape[1]})")


def _next_logits(logits_fn: LogitsFn, tokens: Tensor) -> Tensor:
    """The float32 logits (N, V) of the token after ``tokens`` (N, T)."""
    logits = logits_fn(tokens)
    if logits.ndim != 3 or logits.shape[:2] != tokens.shape:
        raise ValueError(f"logits_fn must return (N, T, V) logits for tokens {tuple(tokens.shape)}, got {tuple(logits.shape)}")
    return logits[:, -1].float()


def _decode(logits_fn: LogitsFn, prompt: Tensor, choose: Callable[[Tensor], Tensor], max_length: int, eos_id: int,
            pad_id: int) -> Tensor:
    """The token-by-token loop shared by greedy search and sampling; ``choose`` maps (N, V) logits to (N,) ids."""
    _check(prompt, max_length)
    tokens = prompt
    running = torch.ones(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    while tokens.shape[1] < max_length:
        chosen = choose(_next_logits(logits_fn, tokens))
        chosen = torch.where(running, chosen, torch.full_like(chosen, pad_id))  # finished rows only pad
        tokens = torch.cat([tokens, chosen[:, None]], dim=1)  # (N, T + 1)
        running &= chosen != eos_id
        if not running.any():
            break
    return tokens


@torch.no_grad()
def greedy_search(logits_fn: LogitsFn, prompt: Tensor, *, max_length: int, eos_id: int, pad_id: int) -> Tensor:
    """The most likely token at every step.

    Args:
        logits_fn: ``(N, T)`` ids -> ``(N, T, V)`` logits.
        prompt: ``(N, P)`` the first tokens of every row (e.g. ``<sot>``).
        max_length: total length, prompt included.
        eos_id: the end token; a row that emitted it is finished.
        pad_id: what follows the end token.

    Returns:
        ``(N, L)`` ids, prompt included, ``L <= max_length``.
    """
    return _decode(logits_fn, prompt, lambda logits: logits.argmax(dim=-1), max_length, eos_id, pad_id)


def top_k_filter(logits: Tensor, top_k: int) -> Tensor:
    """Logits outside the ``top_k`` largest of each row set to -inf (ties with the k-th are kept);
    ``top_k`` 0 keeps all."""
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0, got {top_k}")
    if top_k == 0 or top_k >= logits.shape[-1]:
        return logits
    kth = logits.topk(top_k, dim=-1).values[..., -1:]  # (N, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: Tensor, top_p: float, min_tokens_to_keep: int = 1) -> Tensor:
    """Nucleus filtering (Holtzman et al., 2020): keep the smallest set of most likely tokens whose
    probability reaches ``top_p`` (at least ``min_tokens_to_keep``), the rest set to -inf.

    Computed from the least likely token up, as Hugging Face's ``TopPLogitsWarper``: a token is dropped
    when the probability of it and every less likely token is at most ``1 - top_p``.
    """
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if min_tokens_to_keep < 1:
        raise ValueError(f"min_tokens_to_keep must be >= 1, got {min_tokens_to_keep}")
    ascending, order = logits.sort(dim=-1)  # (N, V), least likely first
    tail_mass = ascending.softmax(dim=-1).cumsum(dim=-1)  # mass of each token and all less likely ones
    drop = tail_mass <= 1 - top_p
    drop[..., -min_tokens_to_keep:] = False
    return logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def sampling_logits(logits: Tensor, *, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """The logits sampling draws from: divided by ``temperature``, then top-k, then top-p filtered
    (Hugging Face's order of warpers)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = top_k_filter(logits / temperature, top_k)
    return top_p_filter(logits, top_p) if top_p < 1.0 else logits


@torch.no_grad()
def nucleus_sampling(logits_fn: LogitsFn, prompt: Tensor, *, max_length: int, eos_id: int, pad_id: int, top_p: float = 0.9,
                     top_k: int = 0, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
    """Sample each token from the filtered distribution (:func:`sampling_logits`); ``generator`` makes a
    draw reproducible. Arguments and result as :func:`greedy_search`."""
    sampling_logits(torch.zeros(1, 2), temperature=temperature, top_k=top_k, top_p=top_p)  # argument errors up front

    def choose(logits: Tensor) -> Tensor:
        probs = sampling_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
        return torch.multinomial(probs, 1, generator=generator)[:, 0]

    return _decode(logits_fn, prompt, choose, max_length, eos_id, pad_id)


def _gather_beams(x: Tensor, index: Tensor) -> Tensor:
    """Rows ``index`` (B, K) of each item's beams ``x`` (B, M, ...) -> (B, K, ...)."""
    expanded = index.view(*index.shape, *([1] * (x.ndim - 2))).expand(*index.shape, *x.shape[2:])
    return x.gather(1, expanded)


class _Beams:
    """The state of a batched beam search: running beams and finished hypotheses, ``(B, num_beams, ...)``."""

    def __init__(self, prompt: Tensor, num_beams: int, max_length: int, pad_id: int) -> None:
        b, p = prompt.shape
        self.prompt_len = p
        self.running = prompt.new_full((b, num_beams, max_length), pad_id)
        self.running[:, :, :p] = prompt[:, None]
        self.scores = torch.zeros(b, num_beams, device=prompt.device)
        self.scores[:, 1:] = _NEG  # only the first beam expands at step one: the beams start identical
        self.done_seqs = self.running.clone()
        self.done_scores = torch.full((b, num_beams), _NEG, device=prompt.device)
        self.done_lengths = torch.full((b, num_beams), max_length, dtype=torch.long, device=prompt.device)
        self.finished = torch.zeros(b, num_beams, dtype=torch.bool, device=prompt.device)
        self.open = torch.ones(b, dtype=torch.bool, device=prompt.device)  # can a new hypothesis still enter?


@torch.no_grad()
def beam_search(logits_fn: LogitsFn, prompt: Tensor, *, num_beams: int, max_length: int, eos_id: int, pad_id: int,
                length_penalty: float = 1.0, early_stopping: bool | str = False) -> Tensor:
    """The best of ``num_beams`` hypotheses per row, as Hugging Face's beam search (see the module doc).

    ``logits_fn`` sees ``B * num_beams`` rows, beam-major within each item (row ``i * num_beams + j`` is
    beam ``j`` of item ``i``): a caller whose logits depend on per-item inputs (an image) repeats them
    with ``repeat_interleave(num_beams, 0)``. Other arguments and the result as :func:`greedy_search`.
    """
    _check(prompt, max_length)
    if num_beams < 1:
        raise ValueError(f"num_beams must be >= 1, got {num_beams}")
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    st = _Beams(prompt, num_beams, max_length, pad_id)
    b, keep = prompt.shape[0], 2 * num_beams  # twice the beams: enough live ones even if half end here
    for cur in range(prompt.shape[1], max_length):
        logp = F.log_softmax(_next_logits(logits_fn, st.running[:, :, :cur].reshape(b * num_beams, cur)), dim=-1)
        vocab = logp.shape[-1]
        total = (logp.view(b, num_beams, vocab) + st.scores[:, :, None]).view(b, -1)  # (B, beams * V)
        top, index = total.topk(keep, dim=1)  # (B, 2 * beams), best first
        cand = _gather_beams(st.running, index // vocab)  # (B, 2 * beams, max_length)
        cand[:, :, cur] = index % vocab
        ends = (index % vocab == eos_id) | (cur + 1 >= max_length)
        _keep_finished(st, cand, top, ends, cur, num_beams, length_penalty, early_stopping)
        alive = top + ends.float() * _NEG
        nxt = alive.topk(num_beams, dim=1).indices
        st.running, st.scores = _gather_beams(cand, nxt), _gather_beams(alive, nxt)
        _close_rows(st, cur + 1, max_length, length_penalty, early_stopping)
        if not st.open.any() or (early_stopping is True and st.finished.all()) or ends.all():
            break
    return st.done_seqs[:, 0, : int(st.done_lengths[:, 0].max())]


def _keep_finished(st: _Beams, cand: Tensor, top: Tensor, ends: Tensor, cur: int, num_beams: int, length_penalty: float,
                   early_stopping: bool | str) -> None:
    """Merge the candidates that just ended (among the first ``num_beams``) into the finished hypotheses."""
    just = ends.clone()
    just[:, num_beams:] = False  # the extra candidates only back up the live beams
    score = top / (cur + 1 - st.prompt_len) ** length_penalty
    full = st.finished.all(dim=1, keepdim=True) & (early_stopping is True)
    score = score + full.float() * _NEG + (~st.open[:, None]).float() * _NEG + (~just).float() * _NEG
    lengths = torch.full_like(just, cur + 1, dtype=torch.long)
    merged = torch.cat([st.done_scores, score], dim=1)  # old hypotheses first: they win ties, as in transformers
    best = merged.topk(num_beams, dim=1).indices
    st.done_seqs = _gather_beams(torch.cat([st.done_seqs, cand], dim=1), best)
    st.done_lengths = _gather_beams(torch.cat([st.done_lengths, lengths], dim=1), best)
    st.finished = _gather_beams(torch.cat([st.finished, just], dim=1), best)
    st.done_scores = _gather_beams(merged, best)


def _close_rows(st: _Beams, length: int, max_length: int, length_penalty: float, early_stopping: bool | str) -> None:
    """Close the rows whose best running beam cannot beat their worst finished hypothesis any more."""
    generated = max_length - st.prompt_len if early_stopping == "never" and length_penalty > 0 else length - st.prompt_len
    best_running = st.scores[:, :1] / generated**length_penalty  # (B, 1)
    worst = torch.where(st.finished, st.done_scores.min(dim=1, keepdim=True).values, _NEG)  # (B, beams)
    st.open &= (best_running > worst).any(dim=1)
