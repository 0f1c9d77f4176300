"""What the three bridges to a language model share (not a family: see qformer.py, flamingo.py, llava.py).

Each bridge holds a frozen ViT image tower ``visual`` (:mod:`coembed.towers.frozen_vision`, read from the
coembed checkpoint ``vision_path``) and a language model ``lm`` (:mod:`coembed.models.causal_lm`: a small
coembed LM, a trained ``lm-tiny`` run, or a Hugging Face causal LM folder, frozen unless said otherwise).
``load_pretrained()`` (called by :func:`coembed.presets.new_model` for a model to train) reads both
folders; a saved bridge holds every tensor, so :func:`coembed.load` needs neither folder.

Every bridge is a captioner with the interface of coembed's captioners, so the decoders of
:mod:`coembed.generation` drive it unchanged: ``caption_memory(images)`` computes what the image gives the
LM once, ``caption_logits(memory, tokens) -> (B, T, vocab)`` the next-token logits over ``tokens``
(``<sot> ...`` with a coembed LM; see :mod:`coembed.models.causal_lm` for a Hugging Face LM's ids).
``decoding_spec(tokenizer)`` says how a decoder starts and stops (:mod:`coembed.generation.spec`).

Every bridge (Q-Former in stage 2 only) also answers questions (``vqa_kind`` "generative"): the LM reads
the image, then ``<sot> question`` and continues with the answer, decoded greedily
(:mod:`coembed.eval.vqa_answer`). With ``task: vqa`` the trainer gives the objective
(:mod:`coembed.objectives.bridge`) ``<sot> question answer <eot>`` rows, and the loss covers the answer
tokens only. A caption-trained bridge can be asked too (its LM has seen questions if its training
text had them). Answers need coembed's ``<sot>``/``<eot>`` rows, so a Hugging Face LM is captioning only.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import torch
from torch import nn

from coembed.errors import ConfigError
from coembed.generation.spec import DecodingSpec, tokenizer_specials
from coembed.models.causal_lm import LMConfig, build_lm, lm_tokenizer, load_lm_weights
from coembed.towers.frozen_vision import frozen_visual, image_tokens, load_visual, resolve_vision
from coembed.towers.vit import VisionConfig

TASKS = ("caption", "vqa")
# Answer tokens decoded at most after a question (shapes answers are 1-2 tokens; as blip_vqa's default).
MAX_ANSWER_TOKENS = 8

# `tiny`'s image tower: what a bridge without vision_path builds (random weights, for tests and presets).
TINY_VISION = VisionConfig(image_size=64, patch_size=8, width=128, layers=4, heads=2, stem="conv")


def lm_section(lm: LMConfig | dict) -> LMConfig:
    """A bridge's ``lm`` section from a config dict (or as given)."""
    if isinstance(lm, dict):
        known = {f.name for f in fields(LMConfig)}
        unknown = sorted(set(lm) - known)
        if unknown:
            raise ValueError(f"unknown lm setting(s) {', '.join(unknown)}")
        return LMConfig(**lm)
    if not isinstance(lm, LMConfig):
        raise ValueError(f"lm must be an LM section, got {type(lm).__name__}")
    return lm


def check_bridge(cfg: Any) -> None:
    """Resolve and validate the fields every bridge config has: ``vision``/``vision_path``, ``lm``, ``context_length``."""
    cfg.vision = resolve_vision(cfg.vision, cfg.vision_path, TINY_VISION)
    cfg.lm = lm_section(cfg.lm)
    value = cfg.context_length
    if isinstance(value, bool) or not isinstance(value, int) or value < 2:
        raise ValueError(f"context_length must be an int >= 2 (room for <sot> and a word), got {value!r}")


def check_bridge_task(cfg: Any, task: str) -> None:
    """ConfigError unless a bridge config ``cfg`` can train with ``task`` ("caption" or "vqa")."""
    if task not in TASKS:
        raise ConfigError(f"task must be one of {TASKS}, got {task!r}")
    if task == "vqa" and cfg.lm.kind == "hf":
        raise ConfigError("task 'vqa' needs a coembed LM (lm.path a causal_lm run): the question-answer rows are "
                          "<sot> question answer <eot>, which a Hugging Face LM's tokenizer does not write")


def bridge_spec(lm: LMConfig, context_length: int, tokenizer, pad_id: int) -> DecodingSpec:
    """A bridge's decoding spec: coembed's ``<sot>``/``<eot>`` with a coembed LM, or the specials a Hugging
    Face LM's tokenizer adds (GPT-2: none, so no start and no end: decode from a prompt to the length)."""
    if lm.kind == "hf":
        start, end = tokenizer_specials(tokenizer)
        return DecodingSpec(start, end, pad_id, context_length)
    return DecodingSpec((tokenizer.sot_id,), lm.eot_id, pad_id, context_length)


class Bridge(nn.Module):
    """Base of the bridges: the frozen image tower, the LM and what reads their folders."""

    def _build_towers(self, cfg: Any) -> None:
        self.visual = frozen_visual(cfg.vision)
        self.lm = build_lm(cfg.lm)

    @property
    def pad_id(self) -> int:
        return self.cfg.lm.pad_id

    @property
    def vqa_kind(self) -> str | None:
        """"generative" (answers after the question prompt, :mod:`coembed.eval.vqa_answer`) when the bridge
        can train with task vqa, else None."""
        try:
            self.cfg.check_task("vqa")
        except ConfigError:
            return None
        return "generative"

    @property
    def max_answer_tokens(self) -> int:
        return MAX_ANSWER_TOKENS

    def decoding_spec(self, tokenizer) -> DecodingSpec:
        """How a decoder starts and stops on this bridge (see :func:`bridge_spec`)."""
        return bridge_spec(self.cfg.lm, self.cfg.context_length, tokenizer, self.pad_id)

    def load_pretrained(self) -> None:
        """The image tower from ``vision_path`` and the LM from ``lm.path`` (each when given)."""
        if self.cfg.vision_path:
            load_visual(self.visual, self.cfg.vision_path)
        load_lm_weights(self.lm, self.cfg.lm)

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen tower's output tokens (B, [1 +] N, vision width), no gradient."""
        return image_tokens(self.visual, images)

    def patch_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """The patch tokens only (class token dropped): (B, N, vision width)."""
        tokens = self.image_tokens(images)
        return tokens[:, 1:] if self.cfg.vision.class_token else tokens

    def check_length(self, prefix: int) -> None:
        """ValueError when ``prefix`` soft tokens plus ``context_length`` caption tokens exceed the LM's positions."""
        limit = self.lm.max_positions
        if limit is not None and prefix + self.cfg.context_length > limit:
            raise ValueError(f"{prefix} image tokens + context_length {self.cfg.context_length} exceed the LM's "
                             f"{limit} positions (lm.context_length); lower context_length or the image tokens")

    def no_weight_decay(self) -> set[str]:
        """Gains, biases, embeddings, learned queries/latents: what AdamW must not decay."""
        skip = ("embedding", "queries", "latents", "gate", "tile_position")
        return {name for name, p in self.named_parameters() if p.ndim < 2 or any(s in name for s in skip)}


def pretrained_tokenizer(cfg: Any):
    """The tokenizer of a bridge config's pretrained LM (``lm.path``), or None (the trainer trains a BPE)."""
    return lm_tokenizer(cfg.lm)
