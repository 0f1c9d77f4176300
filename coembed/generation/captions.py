"""Captions from a captioning model: the decoding methods of :mod:`coembed.generation.decoding` run over
a model's ``caption_memory(images)`` and ``caption_logits(memory, tokens)``.

Any model with those two methods and a config whose ``text`` section names ``sot_id``, ``eot_id``,
``pad_id`` and ``context_length`` captions this way (CoCa, :mod:`coembed.models.coca`; the BLIP
decoder, :mod:`coembed.models.blip_captioner`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from coembed.generation.decoding import beam_search, greedy_search, nucleus_sampling

METHODS = ("greedy", "beam", "nucleus")


def is_captioner(model: nn.Module) -> bool:
    """Whether ``model`` has a captioning head (``caption_memory`` and ``caption_logits``)."""
    return callable(getattr(model, "caption_memory", None)) and callable(getattr(model, "caption_logits", None))


@torch.no_grad()
def generate(model: nn.Module, images: Tensor, method: str = "greedy", *, max_length: int | None = None, num_beams: int = 3,
             length_penalty: float = 1.0, top_p: float = 0.9, top_k: int = 0, temperature: float = 1.0,
             seed: int | None = None) -> Tensor:
    """Caption token ids of ``images``.

    Args:
        model: a captioning model (see :func:`is_captioner`), put in eval mode here.
        images: ``(B, 3, H, W)`` preprocessed images.
        method: "greedy", "beam" (``num_beams``, ``length_penalty``) or "nucleus" (``top_p``, ``top_k``,
            ``temperature``, drawn from a generator seeded with ``seed``, 0 when None).
        max_length: tokens per caption, ``<sot>`` and ``<eot>`` included; the model's context length when None.

    Returns:
        ``(B, L)`` ids starting with ``<sot>``, padded after ``<eot>``.

    Raises:
        ValueError: an unknown method, a model without a captioning head, or bad decoding settings.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not is_captioner(model):
        raise ValueError(f"{type(model).__name__} has no captioning head (caption_memory / caption_logits)")
    text = model.cfg.text
    max_length = text.context_length if max_length is None else max_length
    if not 2 <= max_length <= text.context_length:
        raise ValueError(f"max_length must be in [2, {text.context_length}] (the model's context length), got {max_length}")
    model.eval()
    memory = model.caption_memory(images)  # (B, M, W)
    prompt = torch.full((images.shape[0], 1), text.sot_id, dtype=torch.long, device=images.device)
    ids = {"max_length": max_length, "eos_id": text.eot_id, "pad_id": text.pad_id}
    if method == "beam":
        beams = memory.repeat_interleave(num_beams, dim=0)  # (B * beams, M, W): row i * beams + j is item i
        return beam_search(lambda t: model.caption_logits(beams, t), prompt, num_beams=num_beams,
                           length_penalty=length_penalty, **ids)
    if method == "nucleus":
        generator = torch.Generator(device=images.device).manual_seed(0 if seed is None else seed)
        return nucleus_sampling(lambda t: model.caption_logits(memory, t), prompt, top_p=top_p, top_k=top_k,
                                temperature=temperature, generator=generator, **ids)
    return greedy_search(lambda t: model.caption_logits(memory, t), prompt, **ids)


def decode_captions(tokens: Tensor, tokenizer, eot_id: int) -> list[str]:
    """Each row's text up to its first ``eot_id`` (special tokens dropped by ``tokenizer.decode``)."""
    texts = []
    for row in tokens.tolist():
        end = row.index(eot_id) if eot_id in row else len(row)
        texts.append(tokenizer.decode(row[:end]).strip())
    return texts


def caption(model: nn.Module, images: Tensor, tokenizer, method: str = "greedy", **kwargs) -> list[str]:
    """Captions of ``images`` as strings: :func:`generate` (same keyword arguments), then decoded."""
    return decode_captions(generate(model, images, method, **kwargs), tokenizer, model.cfg.text.eot_id)

