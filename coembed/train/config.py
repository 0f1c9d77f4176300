"""Training configuration: one typed dataclass, read from YAML plus ``--set key=value`` overrides."""

from __future__ import annotations

import difflib
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from coembed.errors import ConfigError
from coembed.layers.kernels import ATTENTION_KERNELS
from coembed.train.precision import PRECISIONS

TASKS = ("caption", "vqa")
LOSSES = ("clip", "siglip", "triplet")
DEVICES = ("auto", "cpu", "cuda")


@dataclass(kw_only=True)
class TrainConfig:
    """Everything a training run needs; saved next to its checkpoints."""

    data: str
    out: str
    preset: str = "tiny"
    model: dict[str, Any] = field(default_factory=dict)  # dotted overrides of the preset
    # "caption": image-caption pairs from each split's manifest; "vqa": question-answer pairs from each
    # split's vqa.jsonl (`coembed data vqa`), the question as the text and the answers carried along.
    task: str = "caption"
    loss: str = "clip"  # the dual encoder's objective; fusion families use their own (coembed.objectives)
    loss_weights: dict[str, float] = field(default_factory=dict)  # fusion families: weight per loss term (1 when absent)
    hard_negatives: bool = False  # NegCLIP: add each sample's manifest "negatives" captions to the softmax
    # Stream training pairs from WebDataset tar shards (a folder, glob or {00000..00009}.tar pattern, as
    # `coembed data shard` writes them) instead of the train split of `data`, which still validates.
    train_shards: str | None = None
    shard_shuffle: int = 1000  # shuffle buffer of streamed samples (0 = file order); shard order is shuffled too
    shard_resampled: bool = False  # draw shards with replacement, an endless stream (no rank runs out first)
    init_from: str | None = None  # a checkpoint or run folder whose matching weights start a new run (coembed.train.warm_start)
    # a checkpoint or run folder whose BPE tokenizer this run uses instead of training one on its captions:
    # fine-tuning on another dataset with init_from keeps the token ids (coembed.train.tokenizer_source)
    tokenizer_from: str | None = None
    init_prefixes: list[str] | None = None  # copy only tensors under these name prefixes, e.g. ["visual."] (all when null)
    negative_types: list[str] | None = None  # draw hard negatives of these manifest "negative_types" only (all when null)
    captions_per_image: int | None = None  # train on the first k captions of each image (all when null)
    batch_size: int = 128
    epochs: float = 1.0
    max_steps: int | None = None  # overrides epochs when set
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 100
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-6
    grad_clip: float | None = 1.0
    # > 0: keep an exponential moving average of the weights with this decay (coembed.train.ema): the
    # checkpoint's model file and validation use it (diffusion models sample with it); 0: off
    ema_decay: float = 0.0
    precision: str = "auto"  # bf16 where the hardware runs it fast, else fp32 (coembed.train.precision)
    # SDPA kernel of training steps: "auto" = the matmul kernel on CPU in bf16 (faster backward for
    # short sequences, see coembed/layers/kernels.py), PyTorch's fused choice otherwise; "math"; "fused".
    attention_kernel: str = "auto"
    # > 0: compute the clip / siglip loss exactly in blocks of this many image rows, never holding the
    # batch x batch logit matrix (coembed.losses.chunked); for very large batches. 0: the full matrix.
    loss_chunk_size: int = 0
    # > 1: embed each batch in this many micro-batches through a feature cache (GradCache): the same
    # loss and gradients as the whole batch (negatives span it), activations of one micro-batch at a time.
    accum_steps: int = 1
    # torch.compile (inductor) every Transformer stack of the model and the diffusion U-Net (train.loop.compile_units):
    # costs a one-off compile (~1 min on a 2-core CPU for `tiny`), then faster steps; text lengths are dynamic.
    compile: bool = False
    # Where to train: "auto" = this process's GPU (LOCAL_RANK under torchrun) when there is one, else the CPU.
    device: str = "auto"
    workers: int = 1  # DataLoader processes; unused with cache_images
    cache_images: bool = False  # decode training images once into RAM (uint8) and batch in-process
    seed: int = 0
    vocab_size: int = 1024
    log_every: int = 10
    val_every: int = 500
    save_every: int = 500
    val_samples: int = 1000
    progress: bool = True

    def __post_init__(self) -> None:
        self._check_types()
        checks = [
            (self.task in TASKS, f"task must be one of {TASKS}, got {self.task!r}"),
            (self.task == "caption" or not (self.train_shards or self.hard_negatives or self.captions_per_image),
             "task 'vqa' reads the train split's vqa.jsonl: train_shards, hard_negatives and captions_per_image do not apply"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}, got {self.loss!r}"),
            (self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
            (self.attention_kernel in ATTENTION_KERNELS,
             f"attention_kernel must be one of {ATTENTION_KERNELS}, got {self.attention_kernel!r}"),
            (not self.hard_negatives or self.loss == "clip", f"hard_negatives needs loss 'clip', got {self.loss!r}"),
            (self.batch_size >= 2, f"batch_size must be >= 2 (contrastive losses need negatives), got {self.batch_size}"),
            (self.epochs > 0, f"epochs must be positive, got {self.epochs}"),
            (self.max_steps is None or self.max_steps > 0, f"max_steps must be positive, got {self.max_steps}"),
            (self.captions_per_image is None or self.captions_per_image > 0,
             f"captions_per_image must be positive or null, got {self.captions_per_image}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.eps > 0, f"eps must be positive (AdamW divides by it), got {self.eps}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), f"betas must be two numbers in [0, 1), got {self.betas}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be positive or null, got {self.grad_clip}"),
            (0 <= self.ema_decay < 1, f"ema_decay must be in [0, 1) (0 = no EMA), got {self.ema_decay}"),
            (self.workers >= 0, f"workers must be >= 0, got {self.workers}"),
            (self.vocab_size >= 64, f"vocab_size must be >= 64, got {self.vocab_size}"),
            (min(self.log_every, self.val_every, self.save_every) > 0, "log_every, val_every and save_every must be positive"),
            (self.val_samples >= 0, f"val_samples must be >= 0, got {self.val_samples}"),
            (self.accum_steps >= 1, f"accum_steps must be >= 1, got {self.accum_steps}"),
            (self.shard_shuffle >= 0, f"shard_shuffle must be >= 0 (0 = off), got {self.shard_shuffle}"),
            (not (self.train_shards and self.cache_images), "cache_images works with the train split of data, not train_shards"),
            (self.accum_steps == 1 or (self.loss in ("clip", "siglip") and not self.hard_negatives),
             f"accum_steps > 1 needs loss 'clip' or 'siglip' without hard_negatives, got loss {self.loss!r}"
             f"{' with hard_negatives' if self.hard_negatives else ''}"),
            (self.loss_chunk_size >= 0, f"loss_chunk_size must be >= 0, got {self.loss_chunk_size}"),
            (not self.loss_chunk_size or (self.loss in ("clip", "siglip") and not self.hard_negatives),
             f"loss_chunk_size needs loss 'clip' or 'siglip' without hard_negatives, got loss {self.loss!r}"
             f"{' with hard_negatives' if self.hard_negatives else ''}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)

    def _check_types(self) -> None:
        """Coerce and type-check fields, so a wrong type is reported by name instead of as a
        ``TypeError`` from a comparison; values come from YAML and ``--set``, not from Python."""
        for name in ("data", "out"):
            value = getattr(self, name)
            if isinstance(value, os.PathLike):
                setattr(self, name, os.fspath(value))
        for name in _STR_FIELDS:
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be a string, got {getattr(self, name)!r}")
        for name in _INT_FIELDS + _FLOAT_FIELDS:
            value = getattr(self, name)
            if value is not None or name not in _OPTIONAL_FIELDS:
                setattr(self, name, _number(name, value, integer=name in _INT_FIELDS))
        if not isinstance(self.betas, (list, tuple)) or len(self.betas) != 2:
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = tuple(_number("betas", b, integer=False) for b in self.betas)
        for name in ("progress", "cache_images", "hard_negatives", "compile", "shard_resampled"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.train_shards is not None and not isinstance(self.train_shards, str):
            raise ValueError(f"train_shards must be a folder, glob or brace pattern of .tar shards, got {self.train_shards!r}")
        if self.init_from is not None and not isinstance(self.init_from, str):
            raise ValueError(f"init_from must be a checkpoint or run folder path, got {self.init_from!r}")
        if self.tokenizer_from is not None and not isinstance(self.tokenizer_from, str):
            raise ValueError(f"tokenizer_from must be a checkpoint or run folder path, got {self.tokenizer_from!r}")
        self.init_prefixes = _name_list("init_prefixes", self.init_prefixes, "name prefixes")
        self.negative_types = _name_list("negative_types", self.negative_types, "names")
        if not isinstance(self.model, dict):
            raise ValueError(f"model must be a mapping of model settings, got {self.model!r}")
        if not isinstance(self.loss_weights, dict):
            raise ValueError(f"loss_weights must be a mapping of loss term -> weight, got {self.loss_weights!r}")
        self.loss_weights = {str(k): _number(f"loss_weights.{k}", v, integer=False) for k, v in self.loss_weights.items()}
        negative = [k for k, v in self.loss_weights.items() if v < 0]
        if negative:
            raise ValueError(f"loss_weights.{negative[0]} must be >= 0, got {self.loss_weights[negative[0]]}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _name_list(field_name: str, value: Any, what: str) -> list[str] | None:
    """A list-of-strings setting: null, a list, or a comma-separated string (as ``--set`` gives it)."""
    if isinstance(value, str):
        value = [t.strip() for t in value.split(",") if t.strip()]
    if value is None:
        return None
    if not (isinstance(value, (list, tuple)) and value and all(isinstance(t, str) for t in value)):
        raise ValueError(f"{field_name} must be a non-empty list of {what} (or null), got {value!r}")
    return list(value)


_STR_FIELDS = ("data", "out", "preset", "task", "loss", "precision", "attention_kernel", "device")
_INT_FIELDS = ("batch_size", "max_steps", "captions_per_image", "warmup_steps", "workers", "seed", "vocab_size", "log_every", "val_every",
               "save_every", "val_samples", "loss_chunk_size", "accum_steps", "shard_shuffle")
_FLOAT_FIELDS = ("epochs", "lr", "weight_decay", "eps", "grad_clip", "ema_decay")
_OPTIONAL_FIELDS = ("max_steps", "grad_clip", "captions_per_image")


def _number(name: str, value: Any, *, integer: bool) -> int | float:
    """``value`` as an int or float, or a ValueError naming the field.

    Strings are parsed because PyYAML reads exponents without a dot (``1e-3``) as strings.
    """
    kind = "an integer" if integer else "a number"
    number = value
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"{name} must be {kind}, got {value!r}") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if not integer:
        if not math.isfinite(number):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        return float(number)
    if isinstance(number, float) and not number.is_integer():
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    return int(number)


def _parse_value(text: str) -> Any:
    """YAML scalar parsing so ``--set lr=0.5`` gives a float and ``--set max_steps=null`` None.

    PyYAML leaves ``3e-4`` a string; :class:`TrainConfig` parses numeric fields given as strings.
    """
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_sets(items: list[str]) -> dict[str, Any]:
    """Turn ``["lr=1e-3", "model.vision.layers=6"]`` into a dict, naming any malformed item."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = _parse_value(value)
    return out


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: PyYAML keeps
    the last value silently, so the setting the user read first would be lost."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"setting {key!r} is given twice", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line: ``line 3, column 5: found character '\\t' that cannot start any token``."""
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return " ".join(f"{where}{problem}".split())


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (or JSON) mapping, naming the file on failure."""
    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a folder, not a YAML file") from None
    except OSError as e:
        raise ConfigError(f"config file {path} cannot be read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {path} is not UTF-8 text (byte {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {_yaml_problem(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, got {type(data).__name__}")
    return data


def _model_section(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: 'model' must be a mapping of model settings, got {value!r}")
    return dict(value)


_REQUIRED = {"data": "the dataset folder to train on", "out": "the run folder for checkpoints and metrics"}


def build_train_config(base: dict[str, Any], file: str | None = None, sets: list[str] | None = None) -> TrainConfig:
    """Merge defaults < config file < ``--set`` overrides < explicit command-line values in ``base``.

    ``model.*`` keys in ``--set`` go to the model overrides (``model.vision.layers=6``).

    Raises:
        ConfigError: unreadable file, malformed ``--set``, unknown or invalid setting, or a missing
            ``data`` / ``out``; the message names the setting.
    """
    merged: dict[str, Any] = read_yaml(file) if file else {}
    from_file = set(merged)
    model = _model_section(merged.pop("model", None), f"config file {file}")
    for key, value in parse_sets(sets or []).items():
        if key.startswith("model."):
            model[key.removeprefix("model.")] = value
        elif key == "model":
            model.update(_model_section(value, "--set model"))
        elif key.startswith("loss_weights."):  # --set loss_weights.itm=2 adds to (or overrides) the file's weights
            weights = merged.get("loss_weights")
            merged["loss_weights"] = {**(weights if isinstance(weights, dict) else {}), key.removeprefix("loss_weights."): value}
        else:
            merged[key] = value
    merged.update({k: v for k, v in base.items() if v is not None})
    model.update(_model_section(merged.pop("model", None), "model"))
    _check_known(merged, file, from_file)
    for name, what in _REQUIRED.items():
        if merged.get(name) in (None, ""):
            raise ConfigError(f"--{name} is required: {what} (give --{name} or set '{name}:' in the config file)")
    try:
        cfg = TrainConfig(**merged, model=model)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"invalid training setting{f' in {file}' if file else ''}: {e}") from None
    if Path(cfg.out).exists() and not Path(cfg.out).is_dir():
        raise ConfigError(f"--out {cfg.out} is a file; give a folder for the run's checkpoints and metrics")
    return cfg


def _check_known(merged: dict[str, Any], file: str | None, from_file: set[str]) -> None:
    """A ConfigError naming each unknown setting, with the closest known name when there is one."""
    known = sorted(f.name for f in fields(TrainConfig))
    unknown = sorted(set(merged) - set(known), key=str)
    if not unknown:
        return
    names = []
    for name in unknown:
        close = difflib.get_close_matches(str(name), known, n=1)
        names.append(f"{name!r} (did you mean {close[0]!r}?)" if close else repr(name))
    where = f" in {file}" if file and set(unknown) <= from_file else ""
    raise ConfigError(f"unknown training setting(s){where}: {', '.join(names)}; known: {', '.join(known)}")
