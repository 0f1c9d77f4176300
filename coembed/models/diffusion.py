"""A small text-to-image diffusion model (DDPM, Ho et al. 2020; classifier-free guidance, Ho & Salimans 2022).

Why a U-Net and not a DiT: on this CPU the model must learn 32-64 px images in well under an hour, and
a convolutional U-Net's locality prior (ADM / Stable Diffusion layout: ResBlocks with GroupNorm, a
sinusoid + MLP time embedding applied as a FiLM scale-shift) learns edges and colours from far fewer
steps than a patch transformer, which must learn locality from data. Attention is only used at the low
resolutions (``attention_levels``), where it is cheap: self-attention over the feature map, then
cross-attention to the caption's token features.

Text conditioning comes from coembed's own text encoder: the frozen text tower of a coembed dual encoder
(``text_path``; the diffusion checkpoint then holds a copy of it, so :func:`coembed.load` needs no other
folder), either the causal transformer of a ``tiny`` run or the Hugging Face encoder of a LiT run such as
the demo's ``tiny-minilm`` (frozen all-MiniLM-L6-v2 plus the learnt projection; Imagen's finding, that a
frozen pretrained text encoder conditions a generator well, at toy scale). Its per-token states feed the
cross-attention; its pooled, projected embedding (the dual encoder's text embedding) is added to the time
embedding for FiLM. The tower must tell the words apart that the images should show: a ``tiny`` run
trained 400 steps (zero-shot shape 0.20) gives captions that differ only in the shape word a pooled cosine
of 0.97, and a model conditioned on it learnt colour but drew shapes at chance (docs/generation.md).
Without ``text_path`` the tower is a random ``tiny`` one (tests). Captions are read with that dual
encoder's tokenizer (:meth:`DiffusionConfig.pretrained_tokenizer`, or the Hugging Face tower's own).

Classifier-free guidance: during training a share ``cond_dropout`` of captions is replaced by a learned
null condition (one null token for the cross-attention, a null pooled embedding for FiLM); sampling
mixes the conditional and null predictions (:mod:`coembed.generation.diffusion`).

Diffusion choices: the cosine noise schedule (Nichol & Dhariwal 2021, ``schedule="cosine"``; ``"linear"``
is DDPM's) over ``timesteps`` steps, v-prediction (Salimans & Ho 2022: the network predicts
``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0``; ``prediction="eps"`` is DDPM's noise prediction), pixels in
[-1, 1]. Why v: with the cosine schedule alpha_bar at the first sampling step is ~2e-9, and an
eps-predictor's clean-image estimate ``(x_t - sqrt(1 - abar) eps) / sqrt(abar)`` divides its error by
~5e-5; our first eps run (250 steps) sampled pure noise for that reason, while v gives the clean image
without a division (``sqrt(abar) x_t - sqrt(1 - abar) v``) and a short run already samples shapes. The trainer hands images normalised with CLIP's mean/std; :meth:`Diffusion.to_pixels` undoes
that, :func:`pixels_to_unit` maps samples back to [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from coembed.layers.attention import Attention
from coembed.layers.pos_embed import sincos_1d
from coembed.towers.hf_text import HFTextConfig, HFTextTower
from coembed.towers.text_transformer import TextConfig, TextTransformer
from coembed.transforms import CLIP_MEAN, CLIP_STD

SCHEDULES = ("cosine", "linear")
PREDICTIONS = ("eps", "v")
COSINE_OFFSET = 0.008  # Nichol & Dhariwal's s: keeps beta_0 from being vanishingly small
MAX_BETA = 0.999  # their clip of the cosine schedule's last betas (alpha_bar -> 0 at t = T)
# `tiny`'s text tower: what a model without text_path builds (random weights, for tests).
TINY_TEXT = TextConfig(vocab_size=1024, context_length=48, width=128, layers=3, heads=2)


# ---------------------------------------------------------------------------------------- noise schedule


def cosine_alphas_cumprod(timesteps: int) -> torch.Tensor:
    """alpha_bar_t for t = 0..T-1 of the cosine schedule, float64 (T,).

    ``f(t) = cos(((t / T + s) / (1 + s)) * pi / 2)^2``, ``beta_t = min(1 - f(t + 1) / f(t), 0.999)``,
    ``alpha_bar_t = prod_{i <= t} (1 - beta_i)``: improved DDPM's eq. 17 with its beta clip.
    """
    t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
    f = torch.cos((t + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2  # (T + 1,)
    betas = (1 - f[1:] / f[:-1]).clamp(max=MAX_BETA)
    return torch.cumprod(1 - betas, dim=0)


def linear_alphas_cumprod(timesteps: int) -> torch.Tensor:
    """DDPM's linear betas from 1e-4 to 0.02, scaled for ``timesteps`` != 1000 (as improved DDPM): (T,) float64."""
    scale = 1000 / timesteps
    betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    return torch.cumprod(1 - betas, dim=0)


def alphas_cumprod(schedule: str, timesteps: int) -> torch.Tensor:
    """alpha_bar_t (T,) float64 of the named schedule."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return cosine_alphas_cumprod(timesteps) if schedule == "cosine" else linear_alphas_cumprod(timesteps)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The forward process: ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` for (B, C, H, W) x0, (B,) t."""
    a = abar.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def v_target(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    """The v-prediction target ``v = sqrt(abar_t) noise - sqrt(1 - abar_t) x0`` (Salimans & Ho 2022, eq. 9)."""
    a = abar.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)  # (B, 1, 1, 1)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def pixels_to_unit(x: torch.Tensor) -> torch.Tensor:
    """Model pixels in [-1, 1] -> images in [0, 1] (clamped)."""
    return ((x + 1) / 2).clamp(0, 1)


# ---------------------------------------------------------------------------------------- config


@dataclass(kw_only=True)
class DiffusionConfig:
    """A text-conditioned U-Net denoiser and the frozen text tower it reads captions with."""

    image_size: int = 32
    patch_size: int = 1  # space-to-depth factor before the U-Net (pixel (un)shuffle): 2 runs it at S/2
    channels: list = field(default_factory=lambda: [64, 128, 128])  # per resolution level, full size first
    res_blocks: int = 1  # ResBlocks per level on the way down (one more on the way up, as ADM)
    attention_levels: list = field(default_factory=lambda: [1, 2])  # levels with self- + cross-attention
    heads: int = 4
    groups: int = 8  # GroupNorm groups
    dropout: float = 0.0
    timesteps: int = 1000
    schedule: str = "cosine"
    # What the network predicts: "eps" (the noise, DDPM; the default, so a checkpoint saved before this field
    # existed reads as what it is) or "v" (Salimans & Ho 2022; the preset's)
    prediction: str = "eps"
    cond_dropout: float = 0.1  # share of captions replaced by the null condition in training (CFG)
    # Min-SNR-gamma loss weighting (Hang et al. 2023): each image's training loss is weighted by
    # min(SNR_t, gamma) / SNR_t (eps) or / (SNR_t + 1) (v), so the nearly-clean timesteps, whose targets are
    # mostly the unpredictable pixel noise of the data, stop dominating the gradient. 0: unweighted (DDPM's
    # L_simple); the paper's value is 5. Validation (val_denoise) is always unweighted.
    snr_gamma: float = 0.0
    # The text tower: coembed's causal transformer or a Hugging Face encoder (a LiT run's frozen MiniLM);
    # None: read from text_path (or `tiny`'s text tower without one)
    text: TextConfig | HFTextConfig | None = None
    text_path: str = ""  # a coembed dual-encoder checkpoint whose text tower conditions the model
    text_embed_dim: int = 128  # the tower's projection (the dual encoder's embed_dim)
    text_act: str = "gelu"  # the transformer tower's activation (the dual encoder's act)

    def __post_init__(self) -> None:
        self._resolve_text()
        self.channels, self.attention_levels = list(self.channels), list(self.attention_levels)
        for name in ("image_size", "patch_size", "res_blocks", "heads", "groups", "timesteps", "text_embed_dim"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self._check_levels()
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {self.schedule!r}")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {self.prediction!r}")
        for name in ("dropout", "cond_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)!r}")
        if isinstance(self.snr_gamma, bool) or not isinstance(self.snr_gamma, (int, float)) or not 0.0 <= self.snr_gamma < math.inf:
            raise ValueError(f"snr_gamma must be a finite number >= 0 (0 turns the weighting off), got {self.snr_gamma!r}")

    def _resolve_text(self) -> None:
        from coembed.models.dual_encoder import text_tower_config

        if isinstance(self.text, dict):
            self.text = text_tower_config(self.text)
        elif self.text is None:
            if self.text_path:
                sections = text_sections(self.text_path)
                self.text, self.text_embed_dim, self.text_act = text_tower_config(sections["text"]), sections["text_embed_dim"], sections["text_act"]
            else:
                self.text = TextConfig(**asdict(TINY_TEXT))
        if not isinstance(self.text, (TextConfig, HFTextConfig)):
            raise ValueError(f"text must be a text tower section, got {type(self.text).__name__}")

    @property
    def context_width(self) -> int:
        """The width of the text tower's token states, which the cross-attention reads."""
        return self.text.bert.hidden_size if isinstance(self.text, HFTextConfig) else self.text.width

    def _check_levels(self) -> None:
        if not self.channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 or c % self.groups for c in self.channels):
            raise ValueError(f"channels must be a non-empty list of positive ints divisible by groups ({self.groups}), got {self.channels!r}")
        if any(c % self.heads for c in self.channels):
            raise ValueError(f"every entry of channels must be divisible by heads ({self.heads}), got {self.channels!r}")
        factor = self.patch_size * 2 ** (len(self.channels) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size ({self.image_size}) must be divisible by patch_size * 2^(levels - 1) = {factor}")
        if any(not isinstance(i, int) or not 0 <= i < len(self.channels) for i in self.attention_levels):
            raise ValueError(f"attention_levels must be level indices in [0, {len(self.channels) - 1}], got {self.attention_levels!r}")

    def pretrained_tokenizer(self):
        """The BPE tokenizer of the dual encoder at ``text_path``, or None (the trainer trains a BPE). A
        Hugging Face tower reads captions with its own tokenizer, which the trainer takes from its folder."""
        if not self.text_path or isinstance(self.text, HFTextConfig):
            return None
        from coembed.checkpoint import TOKENIZER_FILE, resolve
        from coembed.tokenizer import Tokenizer

        return Tokenizer.from_file(resolve(self.text_path) / TOKENIZER_FILE)

    def to_dict(self) -> dict:
        return {"family": "diffusion", **asdict(self)}


def text_sections(path: str) -> dict:
    """What the coembed dual-encoder checkpoint ``path`` says about its text tower: ``{"text": {...},
    "text_embed_dim": E, "text_act": act}`` (the fields of :class:`DiffusionConfig` it decides)."""
    from coembed.checkpoint import read_json, resolve
    from coembed.errors import CheckpointError, ConfigError
    from coembed.models.dual_encoder import TEXT_TOWERS

    try:
        model = read_json(resolve(Path(path)) / "config.json").get("model")
    except CheckpointError as e:
        raise ConfigError(f"text_path: {e}") from None
    model = model if isinstance(model, dict) else {}
    text = model.get("text")
    if model.get("family", "dual_encoder") != "dual_encoder" or not isinstance(text, dict) or text.get("tower", "transformer") not in TEXT_TOWERS:
        raise ConfigError(f"text_path {path}: not a coembed dual encoder with a transformer or Hugging Face text tower (model.text)")
    return {"text": text, "text_embed_dim": int(model["embed_dim"]), "text_act": model.get("act", "gelu")}


# ---------------------------------------------------------------------------------------- blocks


def timestep_embedding(t: torch.Tensor, width: int) -> torch.Tensor:
    """(B,) integer timesteps -> (B, width) sine-cosine features (the Transformer's position code)."""
    return sincos_1d(width, t).to(t.device)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice, the second norm's output scaled and shifted by the conditioning
    embedding (FiLM, ADM's ``use_scale_shift_norm``), plus a (1x1-projected) skip."""

    def __init__(self, cin: int, cout: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(groups, cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.conv2 = nn.GroupNorm(groups, cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity (ADM's zero_module)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """x (B, cin, H, W), emb (B, emb_dim) -> (B, cout, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.film(F.silu(emb))[:, :, None, None].chunk(2, dim=1)  # each (B, cout, 1, 1)
        h = self.norm2(h) * (1 + scale) + shift
        return self.skip(x) + self.conv2(self.dropout(F.silu(h)))


class AttentionBlock(nn.Module):
    """Self-attention over the feature map's positions, then cross-attention to the caption tokens
    (padding keys masked), each pre-normed and residual."""

    def __init__(self, channels: int, context_dim: int, heads: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.attn = Attention(channels, heads)
        self.norm_cross = nn.LayerNorm(channels)
        # torch's attention with kdim/vdim (the context width differs) and a key padding mask
        self.cross = nn.MultiheadAttention(channels, heads, kdim=context_dim, vdim=context_dim, batch_first=True)

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor) -> torch.Tensor:
        """x (B, C, H, W), context (B, T, D), context_mask (B, T) True at real tokens -> (B, C, H, W)."""
        B, C, H, W = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # (B, HW, C)
        h = x.flatten(2).transpose(1, 2) + self.attn(h)  # (B, HW, C)
        q = self.norm_cross(h)
        h = h + self.cross(q, context, context, key_padding_mask=~context_mask, need_weights=False)[0]
        return h.transpose(1, 2).reshape(B, C, H, W)


class Level(nn.Module):
    """One resolution level of the U-Net: ResBlocks, each followed by an attention block when enabled."""

    def __init__(self, ins: list[int], cout: int, emb_dim: int, cfg: DiffusionConfig, attention: bool) -> None:
        super().__init__()
        self.res = nn.ModuleList(ResBlock(cin, cout, emb_dim, cfg.groups, cfg.dropout) for cin in ins)
        self.attn = nn.ModuleList(AttentionBlock(cout, cfg.context_width, cfg.heads, cfg.groups) for _ in ins) if attention else None

    def block(self, i: int, h: torch.Tensor, emb: torch.Tensor, context: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.res[i](h, emb)
        return self.attn[i](h, context, mask) if self.attn is not None else h


# ---------------------------------------------------------------------------------------- the model


class Diffusion(nn.Module):
    """Text-conditioned U-Net that predicts the noise in ``x_t``.

    Args:
        cfg: model configuration.
    """

    config_class = DiffusionConfig
    # `--set compile=true` compiles forward, the whole U-Net (train.loop.compile_units). In a one-off timing on
    # a 2-core CPU (not yet a benchmarks/ script) a compiled training step of the 32 px, [32, 64, 128] U-Net was
    # ~1.25x faster than eager, after ~4 min of compiling (and again for validation's shapes): for runs of
    # hours. Compiling each block separately gained less (1.16x; the blocks hit dynamo's recompile limit).
    compile_unit = True

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        if isinstance(cfg.text, HFTextConfig):
            self.text = HFTextTower(cfg.text, cfg.text_embed_dim)
        else:
            self.text = TextTransformer(cfg.text, cfg.text_embed_dim, act=cfg.text_act)
        self.text.requires_grad_(False)  # coembed's encoder conditions the model; it is not trained here
        self.register_buffer("alphas_cumprod", alphas_cumprod(cfg.schedule, cfg.timesteps).float(), persistent=False)
        base = cfg.channels[0]
        emb_dim = 4 * base
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.text_mlp = nn.Sequential(nn.Linear(cfg.text_embed_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.null_token = nn.Parameter(torch.randn(cfg.context_width) * 0.02)  # the CFG null condition
        self.null_pooled = nn.Parameter(torch.randn(cfg.text_embed_dim) * 0.02)
        pixels = 3 * cfg.patch_size**2  # channels after space-to-depth
        self.conv_in = nn.Conv2d(pixels, base, 3, padding=1)
        self._build_unet(emb_dim)
        self.norm_out, self.conv_out = nn.GroupNorm(cfg.groups, base), nn.Conv2d(base, pixels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    def _build_unet(self, emb_dim: int) -> None:
        cfg, chans = self.cfg, self.cfg.channels
        skips, cur = [chans[0]], chans[0]  # channels of every skip the up path reads, in push order
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        for i, c in enumerate(chans):
            ins = [cur] + [c] * (cfg.res_blocks - 1)
            self.down.append(Level(ins, c, emb_dim, cfg, i in cfg.attention_levels))
            cur = c
            skips += [c] * cfg.res_blocks
            if i < len(chans) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid = Level([cur, cur], cur, emb_dim, cfg, True)
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, c in reversed(list(enumerate(chans))):
            ins = []
            for _ in range(cfg.res_blocks + 1):
                ins.append(cur + skips.pop())
                cur = c
            self.up.append(Level(ins, c, emb_dim, cfg, i in cfg.attention_levels))
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))

    # ------------------------------------------------------------------ inputs

    def to_pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Trainer images (normalised with CLIP's mean/std, what ``default_preprocess`` gives) -> pixels in [-1, 1]."""
        mean = torch.tensor(CLIP_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
        return (images * std + mean) * 2 - 1

    @torch.no_grad()
    def encode_text(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The frozen tower on (B, T) ids -> token states (B, T', width), their mask (B, T') (True at
        non-padding tokens; trailing all-padding columns are trimmed) and the pooled, projected
        embedding (B, text_embed_dim): the dual encoder's text embedding before normalisation."""
        if isinstance(self.text, HFTextTower):
            states, mask = self.text.token_states(tokens)
            return states, mask, self.text.forward_head(self.text.pool(states, mask))
        states = self.text.text_features(tokens)
        tokens = tokens[:, : states.shape[1]]
        return states, tokens != self.cfg.text.pad_id, self.text.text_head(tokens, states)

    def condition(self, tokens: torch.Tensor, drop: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Caption conditioning (context, mask, pooled) of :meth:`encode_text`, with the rows where ``drop``
        (B,) is True replaced by the null condition: one null token, the null pooled embedding."""
        context, mask, pooled = self.encode_text(tokens)
        if drop is None or not bool(drop.any()):
            return context, mask, pooled
        null_context = torch.zeros_like(context)
        null_context[:, 0] = self.null_token.to(context.dtype)
        null_mask = torch.zeros_like(mask)
        null_mask[:, 0] = True
        d = drop.view(-1, 1, 1)
        return (torch.where(d, null_context, context), torch.where(drop.view(-1, 1), null_mask, mask),
                torch.where(drop.view(-1, 1), self.null_pooled.to(pooled.dtype).expand_as(pooled), pooled))

    def null_condition(self, batch: int, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The unconditional (null) condition for ``batch`` rows: context (B, 1, width), mask (B, 1), pooled."""
        context = self.null_token.view(1, 1, -1).expand(batch, 1, -1).to(device)
        return context, torch.ones(batch, 1, dtype=torch.bool, device=device), self.null_pooled.expand(batch, -1).to(device)

    # ------------------------------------------------------------------ forward

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, context_mask: torch.Tensor,
                pooled: torch.Tensor) -> torch.Tensor:
        """Predicted noise (B, 3, S, S) of ``x`` (B, 3, S, S) at timesteps ``t`` (B,) given the condition
        (context (B, T, width), context_mask (B, T), pooled (B, text_embed_dim); see :meth:`condition`)."""
        emb = self.time_mlp(timestep_embedding(t, self.cfg.channels[0]).to(x.dtype)) + self.text_mlp(pooled.to(x.dtype))
        cond = (emb, context.to(x.dtype), context_mask)
        h = self.conv_in(F.pixel_unshuffle(x, self.cfg.patch_size))  # (B, C, S/p, S/p)
        hs = [h]
        for i, level in enumerate(self.down):
            for j in range(self.cfg.res_blocks):
                h = level.block(j, h, *cond)
                hs.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)  # (B, C, H/2, W/2)
                hs.append(h)
        h = self.mid.block(1, self.mid.block(0, h, *cond), *cond)
        for i, level in enumerate(self.up):
            for j in range(self.cfg.res_blocks + 1):
                h = level.block(j, torch.cat([h, hs.pop()], dim=1), *cond)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))  # (B, C, 2H, 2W)
        return F.pixel_shuffle(self.conv_out(F.silu(self.norm_out(h))), self.cfg.patch_size)  # (B, 3, S, S)

    def load_pretrained(self) -> None:
        """The text tower from ``text_path`` (when given): every text tensor of the dual encoder."""
        if self.cfg.text_path:
            load_text_tower(self.text, self.cfg.text_path)

    def no_weight_decay(self) -> set[str]:
        """Gains, biases, the null condition: what AdamW must not decay."""
        return {name for name, p in self.named_parameters() if p.ndim < 2 or name.startswith("null_")}


def load_text_tower(text: TextTransformer | HFTextTower, path: str) -> None:
    """Copy the text tensors of the dual-encoder checkpoint ``path`` into ``text``: all but ``visual.*``
    and the logit scale/bias for a transformer tower (OpenAI CLIP's top-level names), the ``text.*``
    tensors (prefix dropped) for a Hugging Face one. Missing, unexpected or mis-shaped tensors are an
    error listing them."""
    from coembed.checkpoint import check_keys, read_model_files

    files = read_model_files(path)
    if isinstance(text, HFTextTower):
        state = {k.removeprefix("text."): v for k, v in files.state_dict.items() if k.startswith("text.")}
    else:
        state = {k: v for k, v in files.state_dict.items() if not k.startswith("visual.") and k not in ("logit_scale", "logit_bias")}
    check_keys(text, state, files.path)
    text.load_state_dict(state)
