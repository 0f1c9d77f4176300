"""Captions from a captioning model: the decoding methods of :mod:`coembed.generation.decoding` run over
a model's ``caption_memory(images)`` and ``caption_logits(memory, tokens)``.

Any model with those two methods and a :class:`~coembed.generation.spec.DecodingSpec` captions this
way: CoCa (:mod:`coembed.models.coca`) and the BLIP decoder (:mod:`coembed.models.blip_captioner`) from
their ``text`` section, the causal LM and the bridges from their LM section and tokenizer.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from coembed.generation.decoding import beam_search, greedy_search, nucleus_sampling
from coembed.generation.spec import DecodingSpec, decode_ids, decoding_spec

METHODS = ("greedy", "beam", "nucleus")


def is_captioner(model: nn.Module) -> bool:
    """Whether ``model`` has a captioning head (``caption_memory`` and ``caption_logits``)."""
    return callable(getattr(model, "caption_memory", None)) and callable(getattr(model, "caption_logits", None))


@torch.no_grad()
def generate(model: nn.Module, images: Tensor, method: str = "greedy", *, max_length: int | None = None, num_beams: int = 3,
             length_penalty: float = 1.0, top_p: float = 0.9, top_k: int = 0, temperature: float = 1.0,
             seed: int | None = None, spec: DecodingSpec | None = None, prompt: list[int] | None = None) -> Tensor:
    """Caption token ids of ``images``.

    Args:
        model: a captioning model (see :func:`is_captioner`), put in eval mode here.
        images: ``(B, 3, H, W)`` preprocessed images.
        method: "greedy", "beam" (``num_beams``, ``length_penalty``) or "nucleus" (``top_p``, ``top_k``,
            ``temperature``, drawn from a generator seeded with ``seed``, 0 when None).
        max_length: tokens per caption, start, prompt and end included; ``spec.max_length`` when None.
        spec: the model's decoding ids (:func:`~coembed.generation.spec.decoding_spec`); resolved from a
            ``cfg.text`` section when None (a bridge or LM needs its tokenizer: pass the spec).
        prompt: the first ids of every row (``spec.prompt_ids(tokenizer, text)``); ``spec.start_ids`` when None.

    Returns:
        ``(B, L)`` ids starting with the prompt, padded after the end token.

    Raises:
        ValueError: an unknown method, a model without a captioning head, or bad decoding settings.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not is_captioner(model):
        raise ValueError(f"{type(model).__name__} has no captioning head (caption_memory / caption_logits)")
    spec = decoding_spec(model) if spec is None else spec
    first = list(spec.start_ids) if prompt is None else list(prompt)
    max_length = spec.max_length if max_length is None else max_length
    if not len(first) < max_length <= spec.max_length:
        raise ValueError(f"max_length must be in [{len(first) + 1}, {spec.max_length}] (past the {len(first)} prompt "
                         f"token(s), within the model's context length), got {max_length}")
    model.eval()
    memory = model.caption_memory(images)  # (B, M, W)
    start = torch.tensor([first] * images.shape[0], dtype=torch.long, device=images.device)  # (B, P)
    ids = {"max_length": max_length, "eos_id": spec.stop_id, "pad_id": spec.pad_id}
    if method == "beam":
        beams = memory.repeat_interleave(num_beams, dim=0)  # (B * beams, M, W): row i * beams + j is item i
        return beam_search(lambda t: model.caption_logits(beams, t), start, num_beams=num_beams,
                           length_penalty=length_penalty, **ids)
    if method == "nucleus":
        generator = torch.Generator(device=images.device).manual_seed(0 if seed is None else seed)
        return nucleus_sampling(lambda t: model.caption_logits(memory, t), start, top_p=top_p, top_k=top_k,
                                temperature=temperature, generator=generator, **ids)
    return greedy_search(lambda t: model.caption_logits(memory, t), start, **ids)


def decode_captions(tokens: Tensor, tokenizer, eot_id: int | None) -> list[str]:
    """Each row's text up to its first ``eot_id`` (all of it when None; special tokens dropped)."""
    texts = []
    for row in tokens.tolist():
        end = row.index(eot_id) if eot_id is not None and eot_id in row else len(row)
        texts.append(decode_ids(tokenizer, row[:end]))
    return texts


def caption(model: nn.Module, images: Tensor, tokenizer, method: str = "greedy", *, prompt: str | None = None,
            **kwargs) -> list[str]:
    """Captions of ``images`` as strings: :func:`generate` (same keyword arguments), then decoded.

    ``prompt``: text every caption continues (and begins with); required when the model's tokenizer adds
    no start token (a GPT-2-like Hugging Face LM), optional otherwise.
    """
    spec = decoding_spec(model, tokenizer)
    ids = generate(model, images, method, spec=spec, prompt=spec.prompt_ids(tokenizer, prompt), **kwargs)
    return decode_captions(ids, tokenizer, spec.eos_id)
