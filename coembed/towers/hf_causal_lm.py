"""Any local Hugging Face causal language model folder as the (frozen) LM of a bridge.

Built offline with ``transformers`` from the folder's ``config.json`` (``AutoModelForCausalLM.from_config``),
its weights read by ``AutoModelForCausalLM.from_pretrained(path, local_files_only=True)``. The module has
the interface of :class:`coembed.models.causal_lm.CausalLM`: ``embed_tokens(ids)``,
``forward_embeds(embeds, mask, before_block=...)`` -> logits, ``decoder_layers()`` and ``width``.

Token ids are the folder's own tokenizer's (``tokenizer.json``, read by
:func:`coembed.interop.hf_tokenizer.read_hf_tokenizer`), with the special tokens its post-processor adds:
GPT-2's adds none, so a GPT-2 row is the caption's words only and has no start or end token (see
:mod:`coembed.models.causal_lm` on what this means for decoding).

``transformers`` is imported on first use only: coembed's core does not need it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from coembed.errors import ConfigError

# Where each architecture keeps its stack of decoder blocks (as open_flamingo's ``decoder_layers_attr_name``);
# other architectures: the largest ModuleList of the model.
DECODER_LAYERS = {"gpt2": "transformer.h", "gpt_neo": "transformer.h", "gptj": "transformer.h", "gpt_neox": "gpt_neox.layers",
                  "llama": "model.layers", "mistral": "model.layers", "qwen2": "model.layers", "phi": "model.layers",
                  "opt": "model.decoder.layers"}


def read_hf_config(path: str) -> dict:
    """The ``config.json`` of a Hugging Face folder as a dict; ConfigError naming the file otherwise."""
    file = Path(path) / "config.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"lm.path: cannot read {file} ({e})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ConfigError(f"lm.path: {file} is not a Hugging Face config (no model_type)")
    return data


def _transformers():
    try:
        import transformers
    except ImportError:  # pragma: no cover - depends on the environment
        raise ConfigError("a Hugging Face LM (lm.kind 'hf') needs the transformers package; pip install transformers") from None
    return transformers


class HFCausalLM(nn.Module):
    """A Hugging Face ``*ForCausalLM`` with the coembed LM interface.

    Args:
        hf_config: the folder's ``config.json`` content (kept in coembed's config so a saved bridge
            rebuilds the architecture without the folder).
        frozen: no gradients to the LM's weights.
    """

    def __init__(self, hf_config: dict, *, frozen: bool = True) -> None:
        super().__init__()
        transformers = _transformers()
        fields = {k: v for k, v in hf_config.items() if k not in ("architectures", "transformers_version")}
        config = transformers.AutoConfig.for_model(**fields)
        self.model = transformers.AutoModelForCausalLM.from_config(config)
        self.model_type = config.model_type
        self.frozen = frozen
        if frozen:  # and without dropout: from_config builds the model in training mode
            self.model.requires_grad_(False)
            self.model.eval()

    @property
    def width(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def max_positions(self) -> int | None:
        cfg = self.model.config
        return getattr(cfg, "n_positions", None) or getattr(cfg, "max_position_embeddings", None)

    def train(self, mode: bool = True) -> HFCausalLM:
        """A frozen LM stays in eval mode (no dropout) while the bridge around it trains."""
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    def load_pretrained(self, path: str) -> None:
        """The weights of the folder ``path``, read by transformers' own ``from_pretrained`` offline."""
        pretrained = _transformers().AutoModelForCausalLM.from_pretrained(path, local_files_only=True, torch_dtype=torch.float32)
        self.model.load_state_dict(pretrained.state_dict())

    def decoder_layers(self) -> nn.ModuleList:
        """The model's stack of decoder blocks (where Flamingo inserts its gated cross-attention)."""
        name = DECODER_LAYERS.get(self.model_type)
        if name is not None:
            module = self.model
            for part in name.split("."):
                module = getattr(module, part)
            return module
        return max((m for m in self.model.modules() if isinstance(m, nn.ModuleList)), key=len)

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B, T, width) input word embeddings (positions are added inside the model)."""
        return self.model.get_input_embeddings()(ids)

    def forward_embeds(self, embeds: torch.Tensor, mask: torch.Tensor | None = None, *,
                       before_block: Callable[[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """(B, L, width) input embeddings, (B, L) bool mask (True at real positions) -> (B, L, vocab) logits.

        ``before_block(i, hidden)`` replaces the hidden states entering decoder block ``i`` (forward
        pre-hooks, removed again after the call)."""
        hooks = []
        if before_block is not None:
            for i, layer in enumerate(self.decoder_layers()):
                hooks.append(layer.register_forward_pre_hook(_hidden_hook(i, before_block), with_kwargs=True))
        try:
            attention = mask.long() if mask is not None else None
            return self.model(inputs_embeds=embeds, attention_mask=attention, use_cache=False).logits
        finally:
            for hook in hooks:
                hook.remove()

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids -> (B, T, vocab) logits."""
        return self.forward_embeds(self.embed_tokens(tokens), mask)


def _hidden_hook(index: int, before_block: Callable[[int, torch.Tensor], torch.Tensor]):
    """A pre-hook that passes a decoder block's hidden states (first argument or ``hidden_states=``) through ``before_block``."""

    def hook(module, args, kwargs):
        if args:
            return (before_block(index, args[0]), *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": before_block(index, kwargs["hidden_states"])}

    return hook
