"""Hugging Face ``CLIPModel`` and ``SiglipModel`` folders, to and from coembed (safetensors + JSON only).

Names follow transformers' ``modeling_clip.py`` / ``modeling_siglip.py``: separate ``q_proj`` /
``k_proj`` / ``v_proj`` (coembed packs them into ``in_proj_weight``), ``nn.Linear`` projections
(coembed's CLIP projections are ``(width, embed_dim)`` matrices, hence the transposes), SigLIP's
``logit_scale`` / ``logit_bias`` of shape ``(1,)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from coembed.checkpoint import read_json, read_tensors, write_tensors
from coembed.errors import CheckpointError
from coembed.interop.common import Foreign, count_layers, rename, resolve_quick_gelu, source_dtype
from coembed.interop.hf_tokenizer import HFTokenizer, read_hf_tokenizer
from coembed.io import atomic_write_json, atomic_write_text
from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig
from coembed.tokenizer_clip import HF_SPECIALS, OPENCLIP_SPECIALS, ClipTokenizer
from coembed.towers.resnet import ResNetConfig
from coembed.towers.text_transformer import TextConfig
from coembed.towers.vit import VisionConfig
from coembed.transforms import CLIP_MEAN, CLIP_STD, ImageTransform

WEIGHTS = "model.safetensors"
ACTS = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh"}
HF_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}
LAYER = [
    ("layer_norm1.{s}", "ln_1.{s}"),
    ("layer_norm2.{s}", "ln_2.{s}"),
    ("self_attn.out_proj.{s}", "attn.out_proj.{s}"),
    ("mlp.fc1.{s}", "mlp.c_fc.{s}"),
    ("mlp.fc2.{s}", "mlp.c_proj.{s}"),
]
NAMES = [
    ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
    ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
    ("text_model.final_layer_norm.{s}", "ln_final.{s}"),
    ("text_model.head.{s}", "text_projection.{s}"),
    ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
    ("vision_model.embeddings.patch_embedding.{s}", "visual.conv1.{s}"),
    ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
    ("vision_model.pre_layrnorm.{s}", "visual.ln_pre.{s}"),  # sic: transformers' spelling
    ("vision_model.post_layernorm.{s}", "visual.ln_post.{s}"),
    ("vision_model.head.probe", "visual.attn_pool.probe"),
    ("vision_model.head.attention.in_proj_{s}", "visual.attn_pool.attn.in_proj_{s}"),
    ("vision_model.head.attention.out_proj.{s}", "visual.attn_pool.attn.out_proj.{s}"),
    ("vision_model.head.layernorm.{s}", "visual.attn_pool.ln.{s}"),
    ("vision_model.head.mlp.fc1.{s}", "visual.attn_pool.mlp.c_fc.{s}"),
    ("vision_model.head.mlp.fc2.{s}", "visual.attn_pool.mlp.c_proj.{s}"),
    *[(f"text_model.encoder.layers.{{i}}.{a}", f"transformer.resblocks.{{i}}.{b}") for a, b in LAYER],
    *[(f"vision_model.encoder.layers.{{i}}.{a}", f"visual.transformer.resblocks.{{i}}.{b}") for a, b in LAYER],
]
TRANSPOSED = {"text_projection.weight": "text_projection", "visual_projection.weight": "visual.proj"}
QKV = ("q_proj", "k_proj", "v_proj")


# ----------------------------------------------------------------------------- names
def to_coembed_names(hf: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers names -> coembed names (unknown keys are kept under their own name, and reported)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in hf.items():
        if key.endswith("position_ids"):
            continue  # a non-parameter buffer older transformers versions saved
        if key in TRANSPOSED:
            out[TRANSPOSED[key]] = value.T.contiguous()
        elif key in ("logit_scale", "logit_bias"):
            out[key] = value.reshape(())
        elif ".self_attn." in key and key.split(".")[-2] in QKV:
            continue  # packed below
        else:
            out[rename(key, NAMES)] = value
    for tower, ours in (("text_model", ""), ("vision_model", "visual.")):
        for i in range(count_layers(hf, f"{tower}.encoder.layers.")):
            base = f"{tower}.encoder.layers.{i}.self_attn"
            for kind in ("weight", "bias"):
                parts = [hf.get(f"{base}.{p}.{kind}") for p in QKV]
                if all(p is not None for p in parts):
                    _check_packable(base, kind, parts)
                    out[f"{ours}transformer.resblocks.{i}.attn.in_proj_{kind}"] = torch.cat(parts)
                else:
                    out.update({f"{base}.{p}.{kind}": t for p, t in zip(QKV, parts) if t is not None})
    return out


def _check_packable(base: str, kind: str, parts: list[torch.Tensor]) -> None:
    """q, k and v are packed into one tensor: they must share shape and dtype (a damaged file may not;
    ``torch.cat`` would fail, or silently promote an integer tensor)."""
    for what, values in (("shape", [tuple(t.shape) for t in parts]), ("dtype", [str(t.dtype).removeprefix("torch.") for t in parts])):
        if len(set(values)) > 1:
            listed = ", ".join(f"{base}.{p}.{kind} {v}" for p, v in zip(QKV, values))
            raise CheckpointError(f"wrong {what}: q, k and v projections differ: {listed}")


def from_coembed_names(ours: dict[str, torch.Tensor], *, siglip: bool) -> dict[str, torch.Tensor]:
    """coembed names -> transformers names."""
    inverse = {v: k for k, v in TRANSPOSED.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in ours.items():
        if key in inverse and value.ndim == 2:
            out[inverse[key]] = value.T.contiguous()
        elif key in ("logit_scale", "logit_bias"):
            out[key] = value.reshape(1) if siglip else value
        elif key.endswith(".attn.in_proj_weight") or key.endswith(".attn.in_proj_bias"):
            if key.startswith("visual.attn_pool."):
                out[rename(key, NAMES, reverse=True)] = value
                continue
            tower = "vision_model" if key.startswith("visual.") else "text_model"
            i, kind = key.split(".")[-3], key.rsplit("_", 1)[1]
            for name, part in zip(QKV, value.chunk(3)):
                out[f"{tower}.encoder.layers.{i}.self_attn.{name}.{kind}"] = part.clone()
        else:
            out[rename(key, NAMES, reverse=True)] = value
    return out


# ----------------------------------------------------------------------------- config
def _act(text_cfg: dict[str, Any], vision_cfg: dict[str, Any], default: str) -> str:
    names = {text_cfg.get("hidden_act", default), vision_cfg.get("hidden_act", default)}
    if len(names) != 1 or next(iter(names)) not in ACTS:
        raise CheckpointError(f"hidden_act {sorted(names)}: coembed needs one of {sorted(ACTS)} shared by both towers")
    return ACTS[names.pop()]


def _tower_shapes(cfg: dict[str, Any], defaults: dict[str, Any], where: str) -> dict[str, Any]:
    get = lambda key: _number(cfg, defaults, key, where)  # noqa: E731
    width = get("hidden_size")
    return {"width": width, "layers": get("num_hidden_layers"), "heads": get("num_attention_heads"),
            "mlp_ratio": get("intermediate_size") / width}


CLIP_TEXT_DEFAULTS = {"vocab_size": 49408, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 12,
                      "num_attention_heads": 8, "max_position_embeddings": 77, "layer_norm_eps": 1e-5, "eos_token_id": 49407}
CLIP_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
                        "image_size": 224, "patch_size": 32, "layer_norm_eps": 1e-5}
SIGLIP_TEXT_DEFAULTS = {"vocab_size": 32000, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                        "num_attention_heads": 12, "max_position_embeddings": 64, "layer_norm_eps": 1e-6, "pad_token_id": 1}
SIGLIP_VISION_DEFAULTS = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                          "num_attention_heads": 12, "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6}


def _number(cfg: dict[str, Any], defaults: dict[str, Any], key: str, where: str) -> Any:
    """``cfg[key]`` (else its default), refused when the default is a number and the value is not."""
    value = cfg.get(key, defaults[key])
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(defaults[key], (int, float)) and not isinstance(defaults[key], bool) and not is_number:
        raise ValueError(f"{where}.{key} must be a number, got {value!r}")
    return value


def config_from_hf(hf_cfg: dict[str, Any], quick_gelu: bool | None, source: str) -> DualEncoderConfig:
    """A transformers ``CLIPConfig`` / ``SiglipConfig`` dict -> coembed configuration."""
    siglip = hf_cfg["model_type"] == "siglip"
    t_def, v_def = (SIGLIP_TEXT_DEFAULTS, SIGLIP_VISION_DEFAULTS) if siglip else (CLIP_TEXT_DEFAULTS, CLIP_VISION_DEFAULTS)
    t_cfg, v_cfg = hf_cfg.get("text_config") or {}, hf_cfg.get("vision_config") or {}
    act = _act(t_cfg, v_cfg, "gelu_pytorch_tanh" if siglip else "quick_gelu")
    quick = resolve_quick_gelu(act == "quick_gelu", quick_gelu, False, source, "")
    act = "quick_gelu" if quick else ("gelu" if act == "quick_gelu" else act)
    tget, vget = (lambda k: _number(t_cfg, t_def, k, "text_config")), (lambda k: _number(v_cfg, v_def, k, "vision_config"))
    eos = tget("pad_token_id") if siglip else tget("eos_token_id")
    text = TextConfig(vocab_size=tget("vocab_size"), context_length=tget("max_position_embeddings"),
                      **_tower_shapes(t_cfg, t_def, "text_config"), ln_eps=tget("layer_norm_eps"), pad_id=0 if not siglip else eos,
                      eot_id=eos, pool_type="last" if siglip else ("argmax" if eos == 2 else "eot"),
                      causal=not siglip, proj_bias=siglip)
    vision = VisionConfig(image_size=vget("image_size"), patch_size=vget("patch_size"), **_tower_shapes(v_cfg, v_def, "vision_config"),
                          ln_eps=vget("layer_norm_eps"), class_token=not siglip, ln_pre=not siglip,
                          patch_bias=siglip, pool="map" if siglip else "tok", proj=not siglip)
    embed_dim = vision.width if siglip else _number(hf_cfg, {"projection_dim": 512}, "projection_dim", "config")
    if siglip and t_cfg.get("projection_size", text.width) != vision.width:
        raise CheckpointError(f"{source}: text projection_size must equal the vision width {vision.width}")
    if siglip and not v_cfg.get("vision_use_head", True):
        raise CheckpointError(f"{source}: a SigLIP vision tower without its attention-pooling head is not supported")
    return DualEncoderConfig(embed_dim=embed_dim, vision=vision, text=text, act=act,
                             init_logit_bias=-10.0 if siglip else None)


def _preprocess(folder: Path, image_size: int, siglip: bool) -> ImageTransform:
    path = folder / "preprocessor_config.json"
    cfg = read_json(path) if path.is_file() else {}
    mean = cfg.get("image_mean", (0.5, 0.5, 0.5) if siglip else CLIP_MEAN)
    std = cfg.get("image_std", (0.5, 0.5, 0.5) if siglip else CLIP_STD)
    squash = "height" in (cfg.get("size") or {}) or (siglip and "size" not in cfg)
    return ImageTransform(image_size=image_size, mean=mean, std=std, resize_mode="squash" if squash else "shortest")


def read(path: str | Path, *, quick_gelu: bool | None = None) -> Foreign:
    """Read a Hugging Face ``CLIPModel`` / ``SiglipModel`` folder into coembed terms."""
    folder = Path(path)
    hf_cfg = read_json(folder / "config.json")
    if hf_cfg.get("model_type") not in ("clip", "siglip"):
        raise CheckpointError(f"{folder / 'config.json'}: model_type {hf_cfg.get('model_type')!r} is not clip or siglip")
    for part in ("text_config", "vision_config"):
        if not isinstance(hf_cfg.get(part) or {}, dict):
            raise CheckpointError(f"{folder / 'config.json'}: {part} must be a JSON object")
    if not (folder / WEIGHTS).is_file():
        found = sorted(p.name for p in folder.glob("*.safetensors*")) + sorted(p.name for p in folder.glob("*.bin"))
        raise CheckpointError(f"{folder}: expected {WEIGHTS} (one unsharded safetensors file); found {found or 'none'}")
    raw = read_tensors(folder / WEIGHTS)
    try:
        config = config_from_hf(hf_cfg, quick_gelu, str(folder))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from None
    try:
        sd = to_coembed_names(raw)
    except CheckpointError as e:
        raise CheckpointError(f"{folder / WEIGHTS}: {e}") from None
    if "logit_bias" in sd:
        config.init_logit_bias = float(sd["logit_bias"])
    siglip = hf_cfg["model_type"] == "siglip"
    tokenizer = read_hf_tokenizer(folder) if siglip else ClipTokenizer.from_folder(folder)
    return Foreign(config, sd, _preprocess(folder, config.vision.image_size, siglip), tokenizer, source_dtype(raw))


# ----------------------------------------------------------------------------- writing
def _is_siglip(cfg: DualEncoderConfig) -> bool:
    v, t = cfg.vision, cfg.text
    if isinstance(v, ResNetConfig):
        raise CheckpointError("transformers' CLIPModel has no ResNet image tower; convert an RN model to OpenCLIP instead")
    clip = v.class_token and v.ln_pre and not v.patch_bias and v.pool == "tok" and v.proj and t.causal and not t.proj_bias
    siglip = (not v.class_token and not v.ln_pre and v.patch_bias and v.pool == "map" and not v.proj
              and not t.causal and t.proj_bias and t.pool_type == "last")
    if v.stem != "patch" or not (clip or siglip):
        raise CheckpointError("this model matches neither transformers' CLIPModel nor SiglipModel layout")
    if clip and t.pool_type == "last":
        raise CheckpointError("CLIPModel pools the end-of-text token, not the last position")
    return siglip


def hf_config(cfg: DualEncoderConfig) -> dict[str, Any]:
    """The ``config.json`` transformers reads for this model."""
    siglip = _is_siglip(cfg)
    v, t = cfg.vision, cfg.text
    act = HF_ACT[cfg.act]
    shared = lambda w, n, h, r, eps: {"hidden_size": w, "num_hidden_layers": n, "num_attention_heads": h,  # noqa: E731
                                      "intermediate_size": round(w * r), "hidden_act": act, "layer_norm_eps": eps}
    text = {**shared(t.width, t.layers, t.heads, t.mlp_ratio, t.ln_eps), "vocab_size": t.vocab_size,
            "max_position_embeddings": t.context_length}
    vision = {**shared(v.width, v.layers, v.heads, v.mlp_ratio, v.ln_eps), "image_size": v.image_size,
              "patch_size": v.patch_size, "num_channels": 3}
    if siglip:
        text.update(model_type="siglip_text_model", projection_size=cfg.embed_dim, pad_token_id=t.pad_id, eos_token_id=t.eot_id)
        vision.update(model_type="siglip_vision_model", vision_use_head=True)
        return {"architectures": ["SiglipModel"], "model_type": "siglip", "text_config": text, "vision_config": vision}
    eos = 2 if t.pool_type == "argmax" else t.eot_id
    text.update(model_type="clip_text_model", eos_token_id=eos, bos_token_id=49406, pad_token_id=1, projection_dim=cfg.embed_dim)
    vision.update(model_type="clip_vision_model", projection_dim=cfg.embed_dim)
    return {"architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": cfg.embed_dim,
            "logit_scale_init_value": 2.6592, "text_config": text, "vision_config": vision}


def _preprocessor_config(pre: ImageTransform, siglip: bool) -> dict[str, Any]:
    s = pre.image_size
    size = {"height": s, "width": s} if pre.resize_mode == "squash" else {"shortest_edge": s}
    out = {"image_processor_type": "SiglipImageProcessor" if siglip else "CLIPImageProcessor", "do_resize": True,
           "size": size, "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
           "image_mean": list(pre.mean), "image_std": list(pre.std), "do_convert_rgb": True}
    if pre.resize_mode != "squash":
        out.update(do_center_crop=True, crop_size={"height": s, "width": s})
    return out


def _write_clip_tokenizer(folder: Path, tokenizer: ClipTokenizer, context_length: int) -> None:
    vocab, merges = tokenizer.vocab_and_merges()
    names = dict(zip(OPENCLIP_SPECIALS, HF_SPECIALS))
    vocab = {names.get(k, k): i for k, i in vocab.items()}
    atomic_write_json(folder / "vocab.json", vocab)
    atomic_write_text(folder / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    sot, eot = HF_SPECIALS
    atomic_write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": context_length, "do_lower_case": True,
        "bos_token": sot, "eos_token": eot, "unk_token": eot, "pad_token": eot})
    atomic_write_json(folder / "special_tokens_map.json", {"bos_token": sot, "eos_token": eot, "unk_token": eot, "pad_token": eot})


def write(folder: str | Path, model: DualEncoder, preprocess: ImageTransform, tokenizer: Any,
          dtype: torch.dtype = torch.float32) -> None:
    """Write a folder that ``CLIPModel.from_pretrained`` / ``SiglipModel.from_pretrained`` reads."""
    folder = Path(folder)
    config = hf_config(model.cfg)
    siglip = config["model_type"] == "siglip"
    folder.mkdir(parents=True, exist_ok=True)
    sd = from_coembed_names(model.state_dict(), siglip=siglip)
    write_tensors(folder / WEIGHTS, {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()},
                  metadata={"format": "pt"})
    atomic_write_json(folder / "config.json", {**config, "torch_dtype": str(dtype).removeprefix("torch.")})
    atomic_write_json(folder / "preprocessor_config.json", _preprocessor_config(preprocess, siglip))
    if isinstance(tokenizer, ClipTokenizer):
        _write_clip_tokenizer(folder, tokenizer, model.text_cfg.context_length)
    elif isinstance(tokenizer, HFTokenizer):
        tokenizer.save(folder / "tokenizer.json")
        pad = json.loads(tokenizer.to_str())
        pad_token = next((t["content"] for t in pad.get("added_tokens", []) if t["id"] == tokenizer.pad_id), None)
        atomic_write_json(folder / "tokenizer_config.json", {"model_max_length": model.text_cfg.context_length,
                                                             **({"pad_token": pad_token} if pad_token else {})})
