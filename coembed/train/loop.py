"""The training loop: data, tokenizer, model, optimisation, validation, checkpoints.

Dual encoders take the contrastive step of :mod:`coembed.train.step`; every other registered family
(ALBEF/BLIP, ViLT, VLMo, MAE) takes :func:`coembed.train.fusion_step.fusion_train_step` with its objective
from :data:`coembed.models.families.OBJECTIVES`.

Determinism: the sample order of epoch ``e`` is a permutation seeded by ``(seed, e)`` and the caption
drawn for a sample depends only on ``(seed, e, index)``, so a resumed run replays exactly the batches an
uninterrupted run would have seen.

Under ``torchrun`` (:mod:`coembed.train.distributed`) every rank draws the same global batch and loads
its own slice of it; the loss spans the global batch, gradients are summed over ranks, and rank 0
alone logs, validates and saves.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Sampler

from coembed.checkpoint import CHECKPOINT_DIR, resolve
from coembed.data import shards
from coembed.data.datasets import ImageFolderDataset, ImageTextDataset, SkipReport, collate_image_text, collate_images, read_samples
from coembed.data.splits import split_root
from coembed.data.vqa_pairs import answer_scores, answer_vocabulary, qa_tokens, target_answer, vqa_samples
from coembed.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from coembed.eval.caption_loss import caption_validation_loss
from coembed.eval.features import embed_split
from coembed.eval.retrieval import retrieval_metrics
from coembed.eval.suite import zeroshot_task
from coembed.eval.vqa_answer import is_vqa_model, vqa_split_accuracy
from coembed.io import atomic_write_json, atomic_write_text
from coembed.layers.transformer import Transformer
from coembed.loading import Loaded, checkpoint_config, default_preprocess, load, tokenizer_section
from coembed.generation.captions import is_captioner
from coembed.losses.contrastive import clip_loss
from coembed.models.families import context_length, model_class
from coembed.models.fusion import FusionHFTextConfig
from coembed.objectives import FusionBatch
from coembed.presets import apply_overrides, get_preset, has_setting, new_model
from coembed.tokenizer import Tokenizer
from coembed.towers.hf_text import HFTextConfig, read_tokenizer
from coembed.train.config import TrainConfig
from coembed.train.distributed import DistEnv, broadcast_state, from_env
from coembed.train.precision import resolve_precision
from coembed.train.optim import build_optimizer, cosine_lr, set_lr
from coembed.train.ema import WeightEMA
from coembed.train.state import Progress, load_run_state, read_state_tensors, save_run_checkpoint
from coembed.train.fusion_step import fusion_train_step, objective_module
from coembed.train.step import StepResult, train_step
from coembed.train.text_cache import CACHE_FILE, TextFeatureCache, load_or_build
from coembed.train.tokenizer_source import check_init_tokenizer, check_model_ids, source_tokenizer
from coembed.train.warm_start import warm_start

# Settings a resumed run must share with the run it continues (others, like log_every, may change).
RESUME_INVARIANTS = ("data", "task", "preset", "model", "init_from", "init_prefixes", "tokenizer_from", "loss", "hard_negatives", "negative_types", "batch_size", "epochs", "max_steps", "lr", "weight_decay",
                     "warmup_steps", "seed", "precision", "captions_per_image", "loss_weights", "train_shards", "shard_shuffle",
                     "shard_resampled", "ema_decay")
TOKENIZER_CAPTIONS = 100_000  # captions a BPE vocabulary is trained on when the pairs stream from shards


class EpochBatchSampler(Sampler[list[int]]):
    """Batches of a seeded permutation of ``range(n)``, starting at batch ``start`` (drop-last); with
    ``env``, this rank's slice of each (:meth:`DistEnv.local_slice`)."""

    def __init__(self, n: int, batch_size: int, *, seed: int, epoch: int, start: int = 0, env: DistEnv | None = None) -> None:
        self.n, self.batch_size, self.seed, self.epoch, self.start = n, batch_size, seed, epoch, start
        self.env = env or DistEnv()

    def __len__(self) -> int:
        return self.n // self.batch_size - self.start

    def __iter__(self) -> Iterator[list[int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        for b in range(self.start, self.n // self.batch_size):
            yield self.env.local_slice(order[b * self.batch_size : (b + 1) * self.batch_size])


@dataclass
class TrainResult:
    """Summary of a finished run."""

    out: Path
    checkpoint: Path
    steps: int
    samples_seen: int
    seconds: float
    last_loss: float
    last_val: dict[str, float]
    skipped: SkipReport  # metadata lines skipped, plus each image that failed to load (once)


@dataclass
class _Run:
    model: torch.nn.Module  # a DualEncoder, or a model of another registered family
    tokenizer: Tokenizer
    optimizer: torch.optim.Optimizer
    progress: Progress
    dataset: ImageTextDataset | None  # the train split; None when the pairs stream from shards
    val: tuple[Path, list, dict | None] | None  # root, samples, zero-shot spec
    total_steps: int
    steps_per_epoch: int
    read_skips: SkipReport  # lines of the metadata file that were skipped
    skipped_names: set[str] = field(default_factory=set)  # images that failed to load in this session
    empty_batches: int = 0  # consecutive batches without one loadable image
    text_cache: TextFeatureCache | None = None  # pooled caption features of a frozen text tower
    objective: Callable[..., dict[str, torch.Tensor]] | None = None  # a fusion family's compute_losses; None: contrastive step
    # the objective's DEFAULT_WEIGHTS (CoCa's caption weight 2) overridden by cfg.loss_weights
    loss_weights: dict[str, float] = field(default_factory=dict)
    bf16: bool = False  # cfg.precision resolved for this machine (coembed.train.precision)
    env: DistEnv = field(default_factory=DistEnv)  # this process's rank, world size and device
    stream: list[Path] | None = None  # cfg.train_shards resolved: the tar shards the pairs stream from
    source: str = ""  # where the training pairs come from, for messages
    task: str = "caption"  # cfg.task: "vqa" trains and validates on question-answer pairs
    ema: WeightEMA | None = None  # cfg.ema_decay > 0: the moving average of the weights


def _worker_init(_: int) -> None:
    # Loader workers share the two cores with the training process: one thread each.
    torch.set_num_threads(1)


def _new_model(cfg: TrainConfig, captions: Callable[[], Iterator[str]],
               answers: tuple[str, ...] | None = None) -> tuple[torch.nn.Module, Tokenizer]:
    """A fresh model and its tokenizer: a BPE vocabulary trained on the captions (with ``task: vqa``,
    the questions and answers), or a Hugging Face text tower's own tokenizer (and pretrained weights).
    ``answers``: the training answer vocabulary, given to a model whose config has ``answers``."""
    model_cfg = apply_overrides(get_preset(cfg.preset), cfg.model)
    if isinstance(getattr(model_cfg, "text", None), (HFTextConfig, FusionHFTextConfig)):
        _refuse_tokenizer_from(cfg, "a Hugging Face text tower's own tokenizer")
        tokenizer = read_tokenizer(model_cfg.text)
        if isinstance(model_cfg.text, FusionHFTextConfig):
            _check_mlm_ids(model_cfg.text, tokenizer)
        return new_model(model_cfg), tokenizer
    # A bridge to a pretrained LM (lm.path) reads captions with that LM's tokenizer; otherwise train a BPE.
    tokenizer = model_cfg.pretrained_tokenizer() if hasattr(model_cfg, "pretrained_tokenizer") else None
    if tokenizer is not None:
        _refuse_tokenizer_from(cfg, "its language model's tokenizer")
    elif cfg.tokenizer_from:
        tokenizer = source_tokenizer(cfg.tokenizer_from)
    else:
        tokenizer = Tokenizer.train(captions(), vocab_size=cfg.vocab_size)
    ids = {f"text.{name}": getattr(tokenizer, name) for name in ("vocab_size", "pad_id", "eot_id", "mask_id", "sot_id")
           if getattr(tokenizer, name, None) is not None}
    # A single-stream family (ViLT, VLMo, the causal LM) keeps its text fields at the top level of its
    # config; a bridge also in its LM section.
    named = {name: v for k, v in ids.items() for name in (k, k.removeprefix("text."), "lm." + k.removeprefix("text."))
             if has_setting(model_cfg, name)}
    if answers is not None and has_setting(model_cfg, "answers"):
        named["answers"] = list(answers)
    if cfg.tokenizer_from:
        check_model_ids(cfg.tokenizer_from, {k: v for k, v in named.items() if k != "answers"}, cfg.model)
    overrides = {**named, **cfg.model}
    return new_model(apply_overrides(get_preset(cfg.preset), overrides)), tokenizer


def _refuse_tokenizer_from(cfg: TrainConfig, reader: str) -> None:
    if cfg.tokenizer_from:
        raise ConfigError(f"tokenizer_from does not apply to preset {cfg.preset!r}: it reads text with {reader}")


def compile_units(model: torch.nn.Module, backend: str = "inductor") -> int:
    """``torch.compile`` the compute units of ``model`` in place (parameter names unchanged, so checkpoints
    are unaffected); returns how many.

    The units are every Transformer stack, both entry points (``forward`` and ``forward_first``, a
    class-token ViT's path) compiled for dynamic shapes (text lengths vary), and every module whose class
    sets ``compile_unit = True``: a network that is not a Transformer stack, such as the diffusion U-Net,
    whose ``forward`` is the whole denoiser. Those keep torch's default (static shapes; a dimension that
    changes, such as a smaller last batch, becomes dynamic on the one recompile): inductor cannot compile
    the U-Net with symbolic image sides (its stride ordering compares ``3*s**2`` with ``3*s``)."""
    units = [m for m in model.modules() if isinstance(m, Transformer) or getattr(m, "compile_unit", False)]
    for unit in units:
        stack = isinstance(unit, Transformer)
        unit.compile(dynamic=True if stack else None, backend=backend)
        if stack:
            unit.forward_first = torch.compile(unit.forward_first, dynamic=True, backend=backend)
    return len(units)


def _check_mlm_ids(text: FusionHFTextConfig, tokenizer) -> None:
    """The MLM mask and special ids of the config must be the tokenizer's own."""
    mask = tokenizer.token_id("[MASK]")
    if mask != text.mask_id:
        raise ConfigError(f"text.mask_id is {text.mask_id} but {text.path}'s tokenizer has [MASK] = {mask}; set text.mask_id "
                          "and text.special_ids to its ids")


def _check_resume_compatible(cfg: TrainConfig, saved: dict) -> None:
    diffs = [f"{k}: {saved.get(k)!r} -> {getattr(cfg, k)!r}" for k in RESUME_INVARIANTS
             if k in saved and _norm(saved[k]) != _norm(getattr(cfg, k))]
    if diffs:
        raise ConfigError("cannot resume with changed settings (" + "; ".join(diffs) + "); use a new --out or the old settings")


def _norm(value):
    return json.loads(json.dumps(value))


@dataclass
class _TrainingData:
    samples: list | None  # the train split's samples; None when streaming
    stream: list[Path] | None  # tar shards; None for the train split
    count: int  # training pairs per epoch
    skipped: SkipReport  # manifest lines left out
    source: str
    captions: Callable[[], Iterator[str]]  # what a new BPE tokenizer is trained on


def _training_data(cfg: TrainConfig) -> _TrainingData:
    if cfg.train_shards:
        stream = shards.resolve_shards(cfg.train_shards)
        count = shards.count_samples(stream)
        data = _TrainingData(None, stream, count, SkipReport(), cfg.train_shards,
                             lambda: iter(shards.shard_captions(stream, TOKENIZER_CAPTIONS)))
    elif cfg.task == "vqa":
        train_dir = split_root(cfg.data, "train")
        samples = vqa_samples(train_dir)
        data = _TrainingData(samples, None, len(samples), SkipReport(), str(train_dir), lambda: _qa_texts(samples))
    else:
        train_dir = split_root(cfg.data, "train")
        samples, skipped = read_samples(train_dir)
        if cfg.captions_per_image:
            samples = [replace(s, captions=s.captions[: cfg.captions_per_image]) for s in samples]
        data = _TrainingData(samples, None, len(samples), skipped, str(train_dir), lambda: (c for s in samples for c in s.captions))
    if data.count < cfg.batch_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is larger than the {data.count} usable training samples in {data.source}")
    return data


def _qa_texts(samples: list) -> Iterator[str]:
    """What a VQA run's BPE vocabulary is trained on: each question and its answers."""
    for s in samples:
        yield s.captions[0]
        yield from s.meta["answers"]


def _check_task(cfg: TrainConfig, model_cfg) -> None:
    """A model config with ``check_task`` (the bridges, the causal LM) says which tasks it trains with;
    otherwise a VQA model (a family with a ``vqa_kind``) trains with task 'vqa', and only a VQA model does."""
    if callable(getattr(model_cfg, "check_task", None)):
        model_cfg.check_task(cfg.task)
        return
    family = model_cfg.to_dict()["family"]
    vqa_model = getattr(model_class(family), "vqa_kind", None) is not None
    if vqa_model != (cfg.task == "vqa"):
        raise ConfigError(f"preset {cfg.preset!r} is a {family} model, which answers questions: set task: vqa" if vqa_model else
                          f"task 'vqa' needs a VQA model (preset vqa-albef-tiny, vqa-blip-tiny, or a bridge: llava-tiny, "
                          f"flamingo-tiny, qformer-tiny with model.stage=2); {cfg.preset!r} is a {family} model")


def _prepare(cfg: TrainConfig, resume: bool, env: DistEnv) -> _Run:
    torch.manual_seed(cfg.seed)
    _check_task(cfg, apply_overrides(get_preset(cfg.preset), cfg.model))  # a resumed run keeps its preset, model and task
    data = _training_data(cfg)
    samples, skipped = data.samples, data.skipped
    out = Path(cfg.out)
    if resume:
        model, _, tokenizer = load(resolve(out / CHECKPOINT_DIR))
    else:
        answers = answer_vocabulary(samples) if cfg.task == "vqa" else None
        model, tokenizer = _new_model(cfg, data.captions, answers)
        if cfg.init_from:
            # a BPE trained on other captions gives words other ids: refused when tokenizer_from asked for one vocabulary
            mismatch = check_init_tokenizer(tokenizer, cfg.init_from, strict=bool(cfg.tokenizer_from))
            summary = warm_start(model, cfg.init_from, cfg.init_prefixes).summary()
            if env.is_main:
                print("\n".join(filter(None, [mismatch, summary])), file=sys.stderr, flush=True)
    if cfg.hard_negatives and samples is not None and not any(s.meta.get("negatives") for s in samples):
        raise ConfigError(f"hard_negatives is on but no training sample in {data.source} has a 'negatives' list of false captions")
    if cfg.loss == "siglip" and getattr(model, "logit_bias", None) is None:
        raise ConfigError(f"loss 'siglip' needs a model with a logit_bias, and preset {cfg.preset!r} has none; "
                          "use preset tiny-siglip or set model.init_logit_bias")
    _check_distributed(cfg, env)
    model.to(env.device)
    broadcast_state(model, env)  # every rank starts from rank 0's weights
    if cfg.compile:
        compile_units(model)
    optimizer = build_optimizer(model, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=cfg.betas, eps=cfg.eps)
    progress = Progress(skipped=dict(skipped.by_reason), skipped_examples=[f"{n} ({r})" for n, r in skipped.examples])
    if resume:
        progress, saved_cfg = load_run_state(resolve(out / CHECKPOINT_DIR), optimizer)
        _check_resume_compatible(cfg, saved_cfg)
    ema = _weight_ema(model, cfg, resolve(out / CHECKPOINT_DIR) if resume else None)
    if env.rank:  # dropout and patch-dropout masks differ between ranks; rank 0 keeps a single process's stream
        torch.manual_seed(cfg.seed * 1_000_003 + 104_729 * env.rank + progress.step)
    dataset = None
    if samples is not None:
        dataset = ImageTextDataset(Path(data.source), samples, default_preprocess(model), caption_mode="random", seed=cfg.seed,
                                   with_negatives=cfg.hard_negatives, negative_types=cfg.negative_types)
        if cfg.cache_images:
            dataset.preload()
    steps_per_epoch = data.count // cfg.batch_size
    total = cfg.max_steps or math.ceil(cfg.epochs * steps_per_epoch)
    family = model.cfg.to_dict()["family"]
    module = None if family == "dual_encoder" else objective_module(family)
    objective = None if module is None else module.compute_losses
    weights = {**getattr(module, "DEFAULT_WEIGHTS", {}), **cfg.loss_weights}
    if objective is not None and cfg.accum_steps > 1:
        raise ConfigError(f"accum_steps > 1 works for dual encoders; preset {cfg.preset!r} is a {family} model (set accum_steps: 1)")
    precision = resolve_precision(cfg.precision, env.device.type)
    if env.is_main and (cfg.progress or precision.slow):
        print(precision.note, file=sys.stderr, flush=True)
    return _Run(model, tokenizer, optimizer, progress, dataset, _val_split(cfg), total, steps_per_epoch, skipped, objective=objective,
                loss_weights=weights, bf16=precision.name == "bf16", env=env, stream=data.stream, source=data.source, task=cfg.task, ema=ema)


def _weight_ema(model: torch.nn.Module, cfg: TrainConfig, resumed: Path | None) -> WeightEMA | None:
    """The run's weight EMA (None without ``ema_decay``); a resumed run's continues from its checkpoint,
    whose model file holds the EMA weights and whose train state the raw ones (restored into ``model``)."""
    if not cfg.ema_decay:
        return None
    if resumed is None:
        return WeightEMA(model, cfg.ema_decay)
    try:
        return WeightEMA.resume(model, cfg.ema_decay, read_state_tensors(resumed, "ema."), str(resumed))
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def _check_distributed(cfg: TrainConfig, env: DistEnv) -> None:
    """Settings that do not (yet) span ranks, refused before any work."""
    if not env.enabled:
        return
    if cfg.batch_size < 2 * env.world_size:
        raise ConfigError(f"batch_size {cfg.batch_size} is the global batch and must give each of the {env.world_size} "
                          f"ranks at least 2 pairs (>= {2 * env.world_size})")
    if cfg.loss == "triplet" or cfg.hard_negatives:
        raise ConfigError("across ranks the losses are 'clip' and 'siglip' without hard_negatives; "
                          f"got loss {cfg.loss!r}{' with hard_negatives' if cfg.hard_negatives else ''}")


def _val_split(cfg: TrainConfig) -> tuple[Path, list, dict | None] | None:
    root = split_root(cfg.data, "val", required=False)
    if root is None or cfg.val_samples == 0:
        return None
    if cfg.task == "vqa":
        return root, vqa_samples(root)[: cfg.val_samples], None
    samples, _ = read_samples(root)
    return root, samples[: cfg.val_samples], _zeroshot_spec(cfg.data)


def _loader(run: _Run, cfg: TrainConfig, epoch: int, start: int) -> DataLoader:
    if run.stream is not None:
        # each rank reads its own shards, in batches of its share of the global batch
        return shards.shard_loader(run.stream, batch_size=run.env.local_size(cfg.batch_size), preprocess=default_preprocess(run.model),
                                   seed=cfg.seed, epoch=epoch,
                                   rank=run.env.rank, world_size=run.env.world_size, workers=cfg.workers, shuffle=cfg.shard_shuffle,
                                   resampled=cfg.shard_resampled, skip_batches=start, with_negatives=cfg.hard_negatives)
    run.dataset.set_epoch(epoch)
    sampler = EpochBatchSampler(len(run.dataset), cfg.batch_size, seed=cfg.seed, epoch=epoch, start=start, env=run.env)
    # Its own generator: a DataLoader otherwise draws its workers' base seed from the global RNG at
    # every iteration, so a run resumed mid-epoch would continue with a different RNG state.
    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    workers = 0 if cfg.cache_images else cfg.workers  # cached batches cost less than shipping them from a worker
    return DataLoader(run.dataset, batch_sampler=sampler, num_workers=workers, collate_fn=collate_image_text,
                      worker_init_fn=_worker_init if workers else None, prefetch_factor=4 if workers else None,
                      generator=generator)


@torch.no_grad()
def validate(model: torch.nn.Module, tokenizer: Tokenizer, root: Path, samples: list,
             zeroshot: dict[str, tuple[list[str], list[str]]] | None = None, *, task: str = "caption") -> dict[str, float]:
    """Validation on the val split. With ``task`` "vqa" (``samples`` from
    :func:`coembed.data.vqa_pairs.vqa_samples`): ``val_vqa_acc`` and ``val_vqa_acc/<type>`` only. Else, for models with ``encode_image`` the CLIP loss over first captions,
    R@1 both ways and, with ``zeroshot`` (attribute -> (class names, templates)), zero-shot top-1 per
    attribute; for models with ``itm_logits`` also the ITM pair accuracy (:func:`itm_pair_accuracy`); for
    captioners (``caption_logits``) the first captions' next-token loss (:func:`caption_validation_loss`)."""
    model.eval()
    if task == "vqa":
        result, _ = vqa_split_accuracy(model, tokenizer, root, samples)
        return {"val_vqa_acc": result.overall, **{f"val_vqa_acc/{t}": a for t, a in result.per_type.items()}}
    out: dict[str, float] = {}
    if hasattr(model, "encode_image"):
        out.update(_validate_contrastive(model, tokenizer, root, samples, zeroshot))
    if hasattr(model, "itm_logits"):
        out["val_itm_pair_acc"] = itm_pair_accuracy(model, tokenizer, root, samples)
    if model.cfg.to_dict().get("family") == "mae":
        out["val_mae"] = mae_validation_loss(model, root, samples)
    if model.cfg.to_dict().get("family") == "diffusion":
        from coembed.objectives.diffusion import split_validation_loss

        out["val_denoise"] = split_validation_loss(model, tokenizer, root, samples)
    if is_captioner(model):
        out["val_caption_loss"] = caption_validation_loss(model, tokenizer, root, samples)
    return out


@torch.no_grad()
def mae_validation_loss(model: torch.nn.Module, root: Path, samples: list, batch_size: int = 64) -> float:
    """An MAE's masked-patch loss over the val images, with fixed masks (:func:`coembed.objectives.mae.validation_loss`)."""
    from coembed.objectives.mae import validation_loss

    loader = DataLoader(ImageFolderDataset(root, [s.image for s in samples], default_preprocess(model)), batch_size=batch_size,
                        collate_fn=collate_images)
    total, count, device = 0.0, 0, next(model.parameters()).device
    for batch in loader:
        if batch.images is not None:
            total += validation_loss(model, batch.images.to(device)) * len(batch.images)
            count += len(batch.images)
    return total / count if count else float("nan")


def _validate_contrastive(model, tokenizer, root, samples, zeroshot) -> dict[str, float]:
    feats = embed_split(model, tokenizer, root, samples, default_preprocess(model))
    first = torch.tensor([int((feats.text_to_image == i).nonzero()[0]) for i in range(len(feats.samples))])
    loss = clip_loss(feats.image_emb, feats.text_emb[first], model.temperature().float())
    r = retrieval_metrics(feats.image_emb, feats.text_emb, feats.text_to_image, ks=(1,))
    out = {"val_loss": loss.item(), "val_t2i_r1": r["image_retrieval_recall@1"], "val_i2t_r1": r["text_retrieval_recall@1"]}
    loaded = Loaded(model, default_preprocess(model), tokenizer)
    for attribute, (names, templates) in (zeroshot or {}).items():
        if (task := zeroshot_task(loaded, feats, attribute, names, templates)) is not None:
            out[f"val_zeroshot_{attribute}"] = task["acc1"]
    return out


@torch.no_grad()
def itm_pair_accuracy(model: torch.nn.Module, tokenizer: Tokenizer, root: Path, samples: list, batch_size: int = 64) -> float:
    """Share of images whose first caption gets a higher ITM match margin (matched minus unmatched
    logit) than a false caption: the sample's first manifest ``negatives`` entry when it has one (for
    `shapes`, a minimally changed caption), else the next sample's first caption."""
    dataset = ImageFolderDataset(root, [s.image for s in samples], default_preprocess(model))
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_images)
    context = context_length(model)
    wins, total = 0, 0
    for batch in loader:
        if batch.images is None:
            continue
        rows = batch.indices.tolist()
        positives = [samples[i].captions[0] for i in rows]
        negatives = [_false_caption(samples, i) for i in rows]
        margins = [_itm_margin(model, batch.images, tokenizer(texts, context_length=context)) for texts in (positives, negatives)]
        wins += int((margins[0] > margins[1]).sum())
        total += len(rows)
    return wins / total if total else float("nan")


def _false_caption(samples: list, i: int) -> str:
    negatives = [n for n in samples[i].meta.get("negatives") or [] if isinstance(n, str) and n.strip()]
    return negatives[0] if negatives else samples[(i + 1) % len(samples)].captions[0]


def _itm_margin(model: torch.nn.Module, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    logits = model.itm_logits(images, tokens).float()  # (B, 2): not matched, matched
    return logits[:, 1] - logits[:, 0]


def _zeroshot_spec(data: str) -> dict[str, tuple[list[str], list[str]]] | None:
    """Class names and templates from a `shapes`-style ``meta.json``, if the dataset has one."""
    path = Path(data) / "meta.json"
    try:
        meta = json.loads(path.read_text())
        templates = meta["zeroshot_templates"]
        return {"shape": (meta["shapes"], templates["shape"]), "color": (meta["colors"], templates["color"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


class MetricsLog:
    """``metrics.jsonl``: one JSON object per line; on resume, lines past the resumed step are dropped."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        self.path = path
        if resume_step is None:
            path.write_text("")
        elif path.exists():
            kept = [ln for ln in path.read_text().splitlines() if _line_step(ln) is not None and _line_step(ln) <= resume_step]
            atomic_write_text(path, "".join(ln + "\n" for ln in kept))  # a crash now keeps the old file whole

    def write(self, record: dict) -> None:
        try:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as e:  # a full disk: name the file (a torn last line is dropped on resume)
            raise OSError(e.errno, e.strerror, str(self.path)) from e


def _line_step(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None  # a line cut short by a crash


def _save(run: _Run, cfg: TrainConfig, out: Path) -> None:
    """Checkpoint by rank 0 (every rank holds the same weights); the others wait until it is complete."""
    if run.env.is_main:
        config = checkpoint_config(run.model, default_preprocess(run.model), preset=cfg.preset, **tokenizer_section(run.tokenizer))
        extra = run.ema.raw_tensors(run.model) if run.ema is not None else None
        with _ema_weights(run):  # the model file holds the EMA weights, the train state the raw ones
            save_run_checkpoint(out, run.model, config, run.tokenizer.to_str(), run.optimizer, run.progress, cfg.to_dict(), extra)
    run.env.barrier()


# metrics.jsonl fields that depend on the machine and the moment, not on the run's maths: a resumed
# run matches an uninterrupted one in everything else.
TIMING_KEYS = frozenset({"samples_per_s", "time", "val_s", "text_cache_seconds"})


def train(cfg: TrainConfig, *, resume: bool = False) -> TrainResult:
    """Train a dual encoder as configured; with ``resume``, continue ``cfg.out``'s checkpoint.

    Raises:
        TrainingDiverged: the loss or gradient became NaN/inf; the last checkpoint is left as it was.
        DataError: the data folder is missing or holds no usable sample.
        ConfigError: invalid settings, or settings a resumed run may not change.
        CheckpointError: ``resume`` without a readable checkpoint in ``cfg.out``.
    """
    out = Path(cfg.out)
    if resume and not (out / CHECKPOINT_DIR).exists() and not (out / f"{CHECKPOINT_DIR}.old").exists():
        raise CheckpointError(f"--resume: no checkpoint in {out} to continue from")
    owns_group = not torch.distributed.is_initialized()
    env = from_env(cfg.device)
    try:
        return _train(cfg, resume, env)
    finally:
        if owns_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(cfg: TrainConfig, resume: bool, env: DistEnv) -> TrainResult:
    out = Path(cfg.out)
    run = _prepare(cfg, resume, env)
    out.mkdir(parents=True, exist_ok=True)  # only now: a user error must not leave an empty run folder
    if env.is_main:
        atomic_write_json(out / "train_config.json", cfg.to_dict())
    log = MetricsLog(out / "metrics.jsonl", run.progress.step if resume else None) if env.is_main else None
    run.text_cache = _text_cache(run, cfg, out, log)
    skipped = SkipReport()
    skipped.merge(run.read_skips)
    start_time, last_loss = time.perf_counter(), float("nan")
    bar = _progress_bar(cfg, run) if env.is_main else None
    try:
        while run.progress.step < run.total_steps:
            epoch, offset = divmod(run.progress.step, run.steps_per_epoch)
            last_loss = _run_epoch(run, cfg, out, log, skipped, bar, epoch, offset)
    finally:
        if bar is not None:
            bar.close()
    env.barrier()  # the last checkpoint is complete before any rank returns
    checkpoint = out / CHECKPOINT_DIR
    return TrainResult(out, checkpoint, run.progress.step, run.progress.samples_seen, time.perf_counter() - start_time,
                       last_loss, run.progress.last_val, skipped)


def _progress_bar(cfg: TrainConfig, run: _Run):
    if not cfg.progress:
        return None
    from tqdm.auto import tqdm  # training extra; the library itself does not need it

    return tqdm(total=run.total_steps, initial=run.progress.step, desc="train", unit="step", dynamic_ncols=True)


def _text_cache(run: _Run, cfg: TrainConfig, out: Path, log: MetricsLog | None) -> TextFeatureCache | None:
    """A frozen Hugging Face tower's pooled features of every training caption (and negative), computed
    once and kept in ``out``; None when the text tower trains."""
    text_cfg = getattr(run.model, "text_cfg", None)
    if run.stream is not None or not (isinstance(text_cfg, HFTextConfig) and text_cfg.frozen and run.objective is None):
        return None  # streamed captions are not known up front: the frozen tower runs in each step
    samples = run.dataset.samples
    captions = [c for s in samples for c in s.captions]
    if cfg.hard_negatives:
        captions += [n for i in range(len(samples)) for n in run.dataset.candidate_negatives(i)]
    bars = []

    def progress(total: int):
        from tqdm.auto import tqdm

        bars.append(tqdm(total=total, desc="cache captions", unit="caption", dynamic_ncols=True))
        return bars[-1].update

    start = time.perf_counter()
    if not run.env.is_main:
        run.env.barrier()  # rank 0 builds (or checks) the cache file first
    cache, computed = load_or_build(out / CACHE_FILE, run.model, run.tokenizer, captions, bf16=run.bf16,
                                    progress=progress if cfg.progress and run.env.is_main else None)
    if run.env.is_main:
        run.env.barrier()
    for bar in bars:
        bar.close()
    if computed and log is not None:
        seconds = time.perf_counter() - start
        log.write({"step": run.progress.step, "text_cache_captions": len(cache.captions), "text_cache_seconds": round(seconds, 2)})
    return cache


def _run_epoch(run: _Run, cfg: TrainConfig, out: Path, log: MetricsLog | None, skipped: SkipReport, bar, epoch: int,
               offset: int) -> float:
    loss = float("nan")
    window_start, window_samples = time.perf_counter(), 0
    epoch_end = min((epoch + 1) * run.steps_per_epoch, run.total_steps)
    for batch in _every_rank_has_one(run, _loader(run, cfg, epoch, offset)):
        pairs = _global_pairs(run, batch, skipped)
        step = run.progress.step + 1
        if pairs < 2:
            run.progress.step = step  # keep batch positions aligned with an uninterrupted run
            _check_not_all_bad(run, skipped)
        else:
            run.empty_batches = 0
            result, lr = _train_batch(run, cfg, out, batch, step)
            run.progress.step, loss = step, result.loss
            run.progress.samples_seen += pairs
            window_samples += pairs
            if log is not None and (step % cfg.log_every == 0 or step == run.total_steps):
                sps = window_samples / max(time.perf_counter() - window_start, 1e-9)
                _log_step(run, log, step, epoch, result, lr, sps)
                window_start, window_samples = time.perf_counter(), 0
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", sps=f"{sps:.0f}")
        paused = time.perf_counter()  # validation and saving do not count against samples_per_s
        if run.val and (step % cfg.val_every == 0 or step == run.total_steps):
            _validate_on_main(run, log, step)
        if step % cfg.save_every == 0 or step == run.total_steps:
            _save(run, cfg, out)
        window_start += time.perf_counter() - paused
        if bar is not None:
            bar.update(1)
        if step >= epoch_end:
            break
    if run.progress.step < epoch_end:
        _end_stream_epoch(run, log, bar, epoch_end)
        if run.progress.step >= run.total_steps:  # the run's end: its last validation and checkpoint
            if run.val:
                _validate_on_main(run, log, run.progress.step)
            _save(run, cfg, out)
    return loss


def _every_rank_has_one(run: _Run, batches: Iterator) -> Iterator:
    """The batches of ``batches`` while every rank still has one: a rank's shards may run out first
    (one collective per step, only when streaming across ranks)."""
    collective = run.env.enabled and run.stream is not None
    for batch in itertools.chain(batches, [None]):
        if collective and not all(run.env.gather_objects(batch is not None)):
            return
        if batch is None:
            return
        yield batch


def _end_stream_epoch(run: _Run, log: MetricsLog | None, bar, epoch_end: int) -> None:
    """Shards gave fewer batches than samples / batch_size (per-worker drop-last, uneven shards): the
    step count moves to the epoch's end, so resumed runs find their epoch at the same step."""
    if run.stream is None:
        raise AssertionError(f"the sampler ended at step {run.progress.step} before the epoch's end {epoch_end}")
    start = run.progress.step - run.progress.step % run.steps_per_epoch
    if run.progress.step == start:
        raise DataError(f"the shards {run.source} gave no batch of {run.steps_per_epoch} expected this epoch; "
                        "are they shorter than a batch per reader? Use fewer workers or write larger shards")
    if log is not None:
        log.write({"step": run.progress.step, "time": round(time.time(), 3), "stream_ended_steps_early": epoch_end - run.progress.step})
    if bar is not None:
        bar.update(epoch_end - run.progress.step)
    run.progress.step = epoch_end


def _global_pairs(run: _Run, batch, skipped: SkipReport) -> int:
    """The global batch's loadable pairs, 0 when some rank has none (every rank then skips the step,
    as the collectives of a step need all of them); records every rank's unloadable images."""
    local = 0 if batch.images is None else len(batch.captions)
    counts = run.env.gather_objects((local, batch.skipped))
    for _, failed in counts:
        _record_skips(run, failed, skipped)
    return 0 if min(n for n, _ in counts) == 0 else sum(n for n, _ in counts)


def _log_step(run: _Run, log: MetricsLog, step: int, epoch: int, result: StepResult, lr: float, samples_per_s: float) -> None:
    record = {"step": step, "epoch": epoch, "time": round(time.time(), 3), "loss": result.loss, "lr": lr, "grad_norm": result.grad_norm,
              "samples_per_s": samples_per_s, **{f"loss_{k}": v for k, v in result.terms.items()}}
    if hasattr(run.model, "temperature"):
        record["logit_scale"] = run.model.temperature().item()
    log.write(record)


def _ema_weights(run: _Run):
    """A context in which the model holds its EMA weights (a no-op without EMA)."""
    return run.ema.swapped_in(run.model) if run.ema is not None else contextlib.nullcontext()


def _validate_on_main(run: _Run, log: MetricsLog | None, step: int) -> None:
    """Validation by rank 0 (the others wait): the metrics land in ``run.progress`` and the log."""
    if run.env.is_main:
        start = time.perf_counter()
        with _ema_weights(run):
            run.progress.last_val = validate(run.model, run.tokenizer, *run.val, task=run.task)
        log.write({"step": step, "time": round(time.time(), 3), "val_s": round(time.perf_counter() - start, 3), **run.progress.last_val})
    run.env.barrier()


def _train_batch(run: _Run, cfg: TrainConfig, out: Path, batch, step: int) -> tuple[StepResult, float]:
    """One optimisation step on ``batch``; returns its result and learning rate."""
    lr = cosine_lr(step - 1, base_lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=run.total_steps)
    set_lr(run.optimizer, lr)
    texts, negatives = _text_inputs(run, batch)
    device = run.env.device
    images = batch.images.to(device, non_blocking=True)
    texts = texts.to(device, non_blocking=True)
    negatives = negatives.to(device, non_blocking=True) if negatives is not None else None
    try:
        if run.objective is not None:
            fusion = FusionBatch(images, texts, batch.indices.to(device), negatives if negatives is not None and len(negatives) == len(texts) else None,
                                 **(_vqa_fields(run, batch, device) if run.task == "vqa" else {}))
            result = fusion_train_step(run.model, run.optimizer, fusion, compute_losses=run.objective, weights=run.loss_weights,
                                       progress=(step - 1) / run.total_steps, seed=cfg.seed, step=step, bf16=run.bf16,
                                       grad_clip=cfg.grad_clip, attention=cfg.attention_kernel, env=run.env)
        else:
            result = train_step(run.model, run.optimizer, images, texts, loss_name=cfg.loss, bf16=run.bf16,
                                grad_clip=cfg.grad_clip, step=step, negative_tokens=negatives, pooled_text=run.text_cache is not None,
                                attention=cfg.attention_kernel, loss_chunk_size=cfg.loss_chunk_size, accum_steps=cfg.accum_steps,
                                env=run.env)
    except TrainingDiverged as e:
        kept = out / CHECKPOINT_DIR
        where = f"the last good checkpoint {kept} (step {_saved_step(kept)}) is kept" if kept.exists() else "no checkpoint had been written yet"
        raise TrainingDiverged(f"{e} (lr {lr:.3g}); {where}. Try a lower lr, grad_clip, or precision=fp32.") from None
    if run.ema is not None:
        run.ema.update(run.model)
    return result, lr


def _vqa_fields(run: _Run, batch, device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's answers for a VQA objective: soft scores over a classifier's ``cfg.answers``, or the
    ``<sot> question answer <eot>`` rows and answer mask of a generative answerer."""
    rows = [run.dataset.samples[i] for i in batch.indices.tolist()]
    vocabulary = getattr(run.model.cfg, "answers", None)
    if vocabulary is not None:
        return {"answer_scores": answer_scores([s.meta["answers"] for s in rows], vocabulary).to(device)}
    tokens, mask = qa_tokens(run.tokenizer, batch.captions, [target_answer(s.meta["answers"]) for s in rows], context_length(run.model))
    return {"qa_tokens": tokens.to(device), "answer_mask": mask.to(device)}


def _text_inputs(run: _Run, batch) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Token ids of the batch's captions and negatives, or their cached pooled features."""
    if run.text_cache is not None:
        return run.text_cache.lookup(batch.captions), run.text_cache.lookup(batch.negatives) if batch.negatives else None
    context = context_length(run.model)
    negatives = run.tokenizer(batch.negatives, context_length=context) if batch.negatives else None
    return run.tokenizer(batch.captions, context_length=context), negatives


def _record_skips(run: _Run, failed: list[tuple[str, str]], skipped: SkipReport) -> None:
    """Count each unloadable image (name, reason) once per session, however many epochs meet it."""
    for name, reason in failed:
        if name in run.skipped_names:
            continue
        run.skipped_names.add(name)
        skipped.add(name, reason)
        run.progress.skipped[reason] = run.progress.skipped.get(reason, 0) + 1


def _check_not_all_bad(run: _Run, skipped: SkipReport) -> None:
    """Stop once a whole epoch's worth of batches in a row had no loadable image: nothing can be learnt."""
    run.empty_batches += 1
    if run.empty_batches >= run.steps_per_epoch:
        raise DataError(f"no usable training sample in {run.source}: {run.empty_batches} batches in a row "
                        f"had fewer than two loadable images ({skipped.summary()})")


def _saved_step(folder: Path) -> int | str:
    try:
        return json.loads((folder / "train_state.json").read_text())["progress"]["step"]
    except (OSError, ValueError, KeyError):
        return "?"
