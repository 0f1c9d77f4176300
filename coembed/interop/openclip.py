"""OpenCLIP / OpenAI state dicts, to and from coembed.

coembed's parameter names *are* OpenCLIP's ``CLIP`` names, so the plain layout maps key for key.
Two other layouts are renamed on the way: ``CustomTextCLIP`` (the text tower under ``text.``) and a
timm ViT trunk (``visual.trunk.*``, which OpenCLIP's SigLIP configurations use). Without an
``open_clip_config.json`` the architecture is inferred from tensor shapes, with OpenCLIP's rules
(``build_model_from_openai_state_dict``): heads = width / 64, layers counted, image size = patch x
grid, ResNet image size = 32 x attention-pool grid.
"""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from coembed.checkpoint import read_json, write_tensors
from coembed.errors import CheckpointError
from coembed.interop.common import Foreign, count_layers, rename, resolve_quick_gelu, source_dtype
from coembed.interop.weights import TORCH_SUFFIXES, read_weights
from coembed.io import atomic_write_json
from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig
from coembed.tokenizer_clip import ClipTokenizer
from coembed.towers.resnet import DOWNSAMPLE, ResNetConfig
from coembed.towers.text_transformer import TextConfig
from coembed.towers.vit import VisionConfig
from coembed.transforms import CLIP_MEAN, CLIP_STD, ImageTransform

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth")
TEXT_KEYS = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)
HEAD_WIDTH = 64
# timm ViT trunk names <-> coembed names; {i}: block index, {s}: weight or bias.
TIMM_NAMES = [
    ("patch_embed.proj.{s}", "conv1.{s}"),
    ("norm_pre.{s}", "ln_pre.{s}"),
    ("blocks.{i}.norm1.{s}", "transformer.resblocks.{i}.ln_1.{s}"),
    ("blocks.{i}.norm2.{s}", "transformer.resblocks.{i}.ln_2.{s}"),
    ("blocks.{i}.attn.qkv.{s}", "transformer.resblocks.{i}.attn.in_proj_{s}"),
    ("blocks.{i}.attn.proj.{s}", "transformer.resblocks.{i}.attn.out_proj.{s}"),
    ("blocks.{i}.mlp.fc1.{s}", "transformer.resblocks.{i}.mlp.c_fc.{s}"),
    ("blocks.{i}.mlp.fc2.{s}", "transformer.resblocks.{i}.mlp.c_proj.{s}"),
    ("norm.{s}", "ln_post.{s}"),
    ("attn_pool.proj.{s}", "attn_pool.attn.out_proj.{s}"),
    ("attn_pool.norm.{s}", "attn_pool.ln.{s}"),
    ("attn_pool.mlp.fc1.{s}", "attn_pool.mlp.c_fc.{s}"),
    ("attn_pool.mlp.fc2.{s}", "attn_pool.mlp.c_proj.{s}"),
]
# timm trunk names of the SigLIP widths OpenCLIP ships configurations for; heads are not width / 64 for all.
TIMM_SIZES = {768: ("base", 12), 1024: ("large", 16), 1152: ("so400m", 16)}


# ----------------------------------------------------------------------------- key layouts
def _timm_to_coembed(trunk: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in trunk.items():
        if key == "pos_embed":
            out["positional_embedding"] = value.reshape(value.shape[-2:])  # (1, N, D) -> (N, D)
        elif key == "cls_token":
            out["class_embedding"] = value.reshape(-1)
        elif key == "attn_pool.latent":
            out["attn_pool.probe"] = value
        elif key.startswith(("attn_pool.q.", "attn_pool.kv.")):
            continue  # merged below
        else:
            new = rename(key, TIMM_NAMES)
            out[new if new != key else f"trunk.{key}"] = value  # unknown: reported under its own name
    for kind in ("weight", "bias"):
        if f"attn_pool.q.{kind}" in trunk and f"attn_pool.kv.{kind}" in trunk:
            out[f"attn_pool.attn.in_proj_{kind}"] = torch.cat([trunk[f"attn_pool.q.{kind}"], trunk[f"attn_pool.kv.{kind}"]])
        else:
            out.update({k: trunk[k] for k in (f"attn_pool.q.{kind}", f"attn_pool.kv.{kind}") if k in trunk})
    return out


def _coembed_to_timm(visual: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in visual.items():
        if key == "positional_embedding":
            out["pos_embed"] = value.unsqueeze(0)
        elif key == "class_embedding":
            out["cls_token"] = value.reshape(1, 1, -1)
        elif key == "attn_pool.probe":
            out["attn_pool.latent"] = value
        elif key.startswith("attn_pool.attn.in_proj_"):
            kind = key.rsplit("_", 1)[1]
            q, kv = value.split([value.shape[0] // 3, 2 * value.shape[0] // 3])
            out[f"attn_pool.q.{kind}"], out[f"attn_pool.kv.{kind}"] = q.clone(), kv.clone()
        else:
            out[rename(key, TIMM_NAMES, reverse=True)] = value
    return out


def to_coembed_names(state_dict: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, bool]]:
    """OpenCLIP names -> coembed names, and which layouts were found (``custom_text``, ``timm``)."""
    layout = {"custom_text": any(k.startswith("text.") for k in state_dict),
              "timm": any(k.startswith("visual.trunk.") for k in state_dict)}
    out: dict[str, torch.Tensor] = {}
    trunk = {}
    for key, value in state_dict.items():
        if layout["custom_text"] and key.startswith("text.") and key[5:].startswith(TEXT_KEYS):
            out[key[5:]] = value
        elif key.startswith("visual.trunk."):
            trunk[key[len("visual.trunk."):]] = value
        else:
            out[key] = value
    out.update({f"visual.{k}": v for k, v in _timm_to_coembed(trunk).items()})
    return out, layout


def from_coembed_names(state_dict: dict[str, torch.Tensor], *, custom_text: bool, timm: bool) -> dict[str, torch.Tensor]:
    """coembed names -> OpenCLIP names for the chosen layout."""
    out: dict[str, torch.Tensor] = {}
    visual = {}
    for key, value in state_dict.items():
        if key.startswith("visual.") and timm:
            visual[key[len("visual."):]] = value
        elif custom_text and key.startswith(TEXT_KEYS):
            out["text." + key] = value
        else:
            out[key] = value
    out.update({f"visual.trunk.{k}": v for k, v in _coembed_to_timm(visual).items()})
    return out


# ----------------------------------------------------------------------------- shapes -> config
def _text_config(sd: dict[str, torch.Tensor], text_cfg: dict[str, Any], siglip: bool) -> TextConfig:
    vocab, width = sd["token_embedding.weight"].shape
    pool = text_cfg.get("pool_type", "last" if siglip else "argmax")
    if pool not in ("argmax", "last", "eos"):
        raise CheckpointError(f"text pool_type {pool!r} is not supported (argmax, last, eos are)")
    eps = (text_cfg.get("norm_kwargs") or {}).get("eps", 1e-6 if siglip else 1e-5)
    return TextConfig(
        vocab_size=vocab, width=width, context_length=sd["positional_embedding"].shape[0],
        layers=count_layers(sd, "transformer.resblocks."), heads=text_cfg.get("heads", width // HEAD_WIDTH),
        mlp_ratio=sd["transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        pool_type="eot" if pool == "eos" else pool, eot_id=text_cfg.get("eos_id", 49407 if vocab == 49408 else 2),
        pad_id=text_cfg.get("pad_id", 0), causal=not text_cfg.get("no_causal_mask", siglip),
        proj_bias="text_projection.bias" in sd, ln_eps=eps,
    )


def _vit_config(sd: dict[str, torch.Tensor], vision_cfg: dict[str, Any], timm: bool) -> VisionConfig:
    width, _, patch, _ = sd["visual.conv1.weight"].shape
    class_token = "visual.class_embedding" in sd
    grid = math.isqrt(sd["visual.positional_embedding"].shape[0] - int(class_token))
    heads = TIMM_SIZES.get(width, (None, width // HEAD_WIDTH))[1] if timm else width // vision_cfg.get("head_width", HEAD_WIDTH)
    eps = 1e-6 if timm else (vision_cfg.get("norm_kwargs") or {}).get("eps", 1e-5)
    return VisionConfig(
        image_size=patch * grid, patch_size=patch, width=width, heads=heads,
        layers=count_layers(sd, "visual.transformer.resblocks."),
        mlp_ratio=sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0] / width,
        class_token=class_token, ln_pre="visual.ln_pre.weight" in sd, patch_bias="visual.conv1.bias" in sd,
        pool="map" if "visual.attn_pool.probe" in sd else "tok", proj="visual.proj" in sd, ln_eps=eps,
        patch_dropout=float(vision_cfg.get("patch_dropout") or 0.0),
    )


def _resnet_config(sd: dict[str, torch.Tensor], vision_cfg: dict[str, Any]) -> ResNetConfig:
    width = sd["visual.layer1.0.conv1.weight"].shape[0]
    grid = math.isqrt(sd["visual.attnpool.positional_embedding"].shape[0] - 1)
    return ResNetConfig(
        image_size=grid * DOWNSAMPLE, width=width, layers=[count_layers(sd, f"visual.layer{i}.") for i in range(1, 5)],
        heads=width * DOWNSAMPLE // vision_cfg.get("head_width", HEAD_WIDTH),
    )


def _check_supported(model_cfg: dict[str, Any]) -> None:
    """Refuse OpenCLIP options that change the computation without changing the tensor names."""
    vision, text = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    checks = [
        (vision, "final_ln_after_pool", False), (vision, "attentional_pool", False), (vision, "pool_type", "tok"),
        (vision, "pos_embed_type", "learnable"), (vision, "ls_init_value", None), (vision, "act_kwargs", None),
        (text, "final_ln_after_pool", False), (text, "embed_cls", False), (text, "ls_init_value", None),
        (text, "hf_model_name", None), (text, "proj_type", "linear"), (text, "use_pad_mask", False),
    ]
    for part in (vision, text):
        for flag in ("qk_norm", "scaled_cosine_attn", "scale_heads", "scale_attn_inner", "scale_attn", "scale_fc"):
            checks.append((part, flag, False))
    bad = [f"{name}={part[name]!r}" for part, name, default in checks if part.get(name, default) != default]
    if vision.get("timm_model_name") and (vision.get("timm_pool") != "map" or vision.get("timm_proj") not in ("none", None, "")):
        bad.append(f"timm tower {vision['timm_model_name']} with pool {vision.get('timm_pool')!r} / proj {vision.get('timm_proj')!r}")
    if text.get("act_kwargs") not in (None, {}, {"approximate": "tanh"}):
        bad.append(f"text act_kwargs={text['act_kwargs']!r}")
    if bad:
        raise CheckpointError("OpenCLIP settings coembed cannot reproduce: " + ", ".join(bad))


def infer_config(sd: dict[str, torch.Tensor], model_cfg: dict[str, Any], *, quick_gelu: bool, siglip: bool,
                 timm: bool) -> DualEncoderConfig:
    """The coembed configuration of a state dict in coembed names, helped by an OpenCLIP model config."""
    vision_cfg, text_cfg = model_cfg.get("vision_cfg") or {}, model_cfg.get("text_cfg") or {}
    try:
        if "visual.layer1.0.conv1.weight" in sd:
            vision: VisionConfig | ResNetConfig = _resnet_config(sd, vision_cfg)
            embed_dim = sd["visual.attnpool.c_proj.weight"].shape[0]
        else:
            vision = _vit_config(sd, vision_cfg, timm)
            embed_dim = sd["visual.proj"].shape[1] if "visual.proj" in sd else vision.width
        text = _text_config(sd, text_cfg, siglip)
    except KeyError as e:
        raise CheckpointError(f"not an OpenCLIP/OpenAI CLIP state dict: no tensor {e.args[0]}") from None
    except ValueError as e:  # shapes that make no model (a damaged tensor): zero heads, a width not divisible...
        raise CheckpointError(f"cannot build a model from these shapes: {e}") from None
    tanh = text_cfg.get("act_kwargs") == {"approximate": "tanh"}
    act = "quick_gelu" if quick_gelu else ("gelu_tanh" if tanh else "gelu")
    bias = float(sd["logit_bias"].reshape(())) if "logit_bias" in sd else None
    try:
        return DualEncoderConfig(embed_dim=embed_dim, vision=vision, text=text, act=act, init_logit_bias=bias)
    except ValueError as e:
        raise CheckpointError(f"cannot build a model from these shapes: {e}") from None


# ----------------------------------------------------------------------------- files
def find_files(path: Path) -> tuple[Path, Path | None]:
    """The weights file and the ``open_clip_config.json`` (or None) for a file or folder ``path``."""
    if path.is_dir():
        weights = next((path / n for n in WEIGHT_FILES if (path / n).is_file()), None)
        if weights is None:
            found = sorted(p.name for p in path.iterdir() if p.suffix in (".safetensors", *TORCH_SUFFIXES))
            if len(found) != 1:
                raise CheckpointError(f"{path}: expected one of {', '.join(WEIGHT_FILES)}; found {found or 'no weights'}")
            weights = path / found[0]
        folder = path
    else:
        weights, folder = path, path.parent
    config = folder / CONFIG_FILE
    return weights, config if config.is_file() else None


def _model_cfg(config_file: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    if config_file is None:
        return {}, {}
    data = read_json(config_file)
    model_cfg, pre_cfg = (data["model_cfg"] or {}, data.get("preprocess_cfg") or {}) if "model_cfg" in data else (data, {})
    for name, part in (("model_cfg", model_cfg), ("preprocess_cfg", pre_cfg),
                       ("vision_cfg", model_cfg.get("vision_cfg") if isinstance(model_cfg, dict) else None),
                       ("text_cfg", model_cfg.get("text_cfg") if isinstance(model_cfg, dict) else None)):
        if part is not None and not isinstance(part, dict):
            raise CheckpointError(f"{config_file}: {name} must be a JSON object, got {type(part).__name__}")
    return model_cfg, pre_cfg


def _preprocess(pre_cfg: dict[str, Any], image_size: int, siglip: bool) -> ImageTransform:
    mean = pre_cfg.get("mean", SIGLIP_MEAN if siglip else CLIP_MEAN)
    std = pre_cfg.get("std", SIGLIP_STD if siglip else CLIP_STD)
    mode = pre_cfg.get("resize_mode", "squash" if siglip else "shortest")
    return ImageTransform(image_size=image_size, mean=mean, std=std, resize_mode="squash" if mode == "squash" else "shortest")


def _tokenizer(folder: Path, vocab_size: int) -> ClipTokenizer | None:
    if vocab_size == 49408:
        return ClipTokenizer.from_folder(folder)
    from coembed.interop.hf_tokenizer import read_hf_tokenizer

    return read_hf_tokenizer(folder)


def read(path: str | Path, *, quick_gelu: bool | None = None) -> Foreign:
    """Read an OpenCLIP/OpenAI state dict (file, or folder with ``open_clip_config.json``) into coembed terms."""
    weights, config_file = find_files(Path(path))
    model_cfg, pre_cfg = _model_cfg(config_file)
    try:
        _check_supported(model_cfg)
    except CheckpointError as e:
        raise CheckpointError(f"{config_file}: {e}") from None
    raw = read_weights(weights)
    for extra in ("input_resolution", "context_length", "vocab_size"):  # scalars in OpenAI's JIT state dicts
        raw.pop(extra, None)
    sd, layout = to_coembed_names(raw)
    siglip = "logit_bias" in sd and layout["custom_text"]
    if siglip and not model_cfg:
        warnings.warn(f"{weights}: no {CONFIG_FILE}; a SigLIP layout, so assuming SigLIP's settings "
                      "(bidirectional text, last-token pooling, LayerNorm eps 1e-6)", stacklevel=2)
    guess_reason = ("timm towers and SigLIP use GELU" if layout["timm"] or siglip else
                    "the OpenAI layout without a config; OpenAI's weights use QuickGELU, OpenCLIP-trained ones GELU")
    quick = resolve_quick_gelu(model_cfg.get("quick_gelu", False) if model_cfg else None, quick_gelu,
                               not (layout["timm"] or siglip), str(weights), guess_reason)
    try:
        config = infer_config(sd, model_cfg, quick_gelu=quick, siglip=siglip, timm=layout["timm"])
    except CheckpointError as e:
        raise CheckpointError(f"{weights}: {e}") from None
    return Foreign(config, sd, _preprocess(pre_cfg, config.vision.image_size, siglip),
                   _tokenizer(weights.parent, config.text.vocab_size), source_dtype(raw))


# ----------------------------------------------------------------------------- writing
def _timm_name(vision: VisionConfig) -> str:
    size = TIMM_SIZES.get(vision.width)
    if size is None or size[1] != vision.heads:
        raise CheckpointError(f"no timm SigLIP trunk has width {vision.width} with {vision.heads} heads; "
                              f"OpenCLIP layout needs one of {sorted(TIMM_SIZES)}")
    return f"vit_{size[0]}_patch{vision.patch_size}_siglip_{vision.image_size}"


def _vision_cfg(cfg: DualEncoderConfig) -> tuple[dict[str, Any], bool]:
    """OpenCLIP ``vision_cfg`` and whether the tower goes in the timm layout."""
    v = cfg.vision
    if isinstance(v, ResNetConfig):
        return {"image_size": v.image_size, "layers": list(v.layers), "width": v.width,
                "head_width": v.width * DOWNSAMPLE // v.heads, "patch_size": None}, False
    if v.stem != "patch":
        raise CheckpointError("a ViT with a conv stem has no OpenCLIP equivalent; only the patch embedding converts")
    if v.pool == "map" or not v.class_token:
        if v.ln_pre or v.class_token or not v.patch_bias or v.proj or v.ln_eps != 1e-6 or cfg.act != "gelu":
            raise CheckpointError("an attention-pooled ViT converts to OpenCLIP only in SigLIP's timm form "
                                  "(no class token, patch bias, no ln_pre, no projection, eps 1e-6, exact GELU)")
        return {"image_size": v.image_size, "timm_model_name": _timm_name(v), "timm_model_pretrained": False,
                "timm_pool": "map", "timm_proj": "none"}, True
    if v.patch_bias or not v.proj:
        raise CheckpointError("OpenCLIP's ViT has no patch bias and always projects")
    out = {"image_size": v.image_size, "layers": v.layers, "width": v.width, "patch_size": v.patch_size,
           "head_width": v.width // v.heads, "mlp_ratio": v.mlp_ratio}
    if v.patch_dropout:
        out["patch_dropout"] = v.patch_dropout
    if not v.ln_pre:
        out["no_ln_pre"] = True
    if v.ln_eps != 1e-5:
        out["norm_kwargs"] = {"eps": v.ln_eps}
    if cfg.act == "gelu_tanh":
        out["act_kwargs"] = {"approximate": "tanh"}
    return out, False


def _text_cfg(cfg: DualEncoderConfig) -> dict[str, Any]:
    t = cfg.text
    out: dict[str, Any] = {"context_length": t.context_length, "vocab_size": t.vocab_size, "width": t.width,
                           "heads": t.heads, "layers": t.layers, "mlp_ratio": t.mlp_ratio, "pad_id": t.pad_id,
                           "pool_type": "eos" if t.pool_type == "eot" else t.pool_type}
    if t.pool_type == "eot":
        out["eos_id"] = t.eot_id
    if not t.causal:
        out["no_causal_mask"] = True
    if t.proj_bias:
        out["proj_bias"] = True
    if t.ln_eps != 1e-5:
        out["norm_kwargs"] = {"eps": t.ln_eps}
    if cfg.act == "gelu_tanh":
        out["act_kwargs"] = {"approximate": "tanh"}
    return out


def openclip_config(model: DualEncoder, preprocess: ImageTransform) -> tuple[dict[str, Any], bool, bool]:
    """The ``open_clip_config.json`` content, and the layout flags (custom_text, timm)."""
    cfg = model.cfg
    vision_cfg, timm = _vision_cfg(cfg)
    text_cfg = _text_cfg(cfg)
    custom_text = timm or cfg.text.proj_bias or not cfg.text.causal
    model_cfg: dict[str, Any] = {"embed_dim": cfg.embed_dim, "vision_cfg": vision_cfg, "text_cfg": text_cfg}
    if cfg.act == "quick_gelu":
        model_cfg["quick_gelu"] = True
    if custom_text:
        model_cfg["custom_text"] = True
    if cfg.init_logit_bias is not None:
        model_cfg["init_logit_bias"] = cfg.init_logit_bias
    pre_cfg = {"mean": list(preprocess.mean), "std": list(preprocess.std), "interpolation": "bicubic",
               "resize_mode": preprocess.resize_mode}
    return {"model_cfg": model_cfg, "preprocess_cfg": pre_cfg}, custom_text, timm


def write(folder: str | Path, model: DualEncoder, preprocess: ImageTransform, dtype: torch.dtype = torch.float32) -> None:
    """Write ``open_clip_config.json`` + ``open_clip_model.safetensors`` (``open_clip.create_model("local-dir:...")``)."""
    folder = Path(folder)
    config, custom_text, timm = openclip_config(model, preprocess)
    folder.mkdir(parents=True, exist_ok=True)
    sd = from_coembed_names(model.state_dict(), custom_text=custom_text, timm=timm)
    write_tensors(folder / WEIGHT_FILES[0], {k: v.to(dtype) if v.is_floating_point() else v for k, v in sd.items()})
    atomic_write_json(folder / CONFIG_FILE, config)
