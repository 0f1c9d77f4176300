"""Training configuration: YAML file + ``--set`` + command-line precedence and validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coembed.errors import ConfigError
from coembed.presets import apply_overrides, get_preset
from coembed.train.config import TrainConfig, build_train_config, parse_sets, read_yaml

BASE = {"data": "data/shapes", "out": "runs/x"}


def _yaml(tmp_path: Path, text: str, name: str = "cfg.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------- precedence
def test_defaults_when_nothing_is_given() -> None:
    cfg = build_train_config(dict(BASE))
    assert (cfg.preset, cfg.loss, cfg.batch_size, cfg.lr, cfg.precision) == ("tiny", "clip", 128, 1e-3, "auto")
    assert cfg.model == {} and cfg.max_steps is None and cfg.betas == (0.9, 0.98)


def test_precedence_defaults_file_set_cli(tmp_path: Path) -> None:
    # Each setting is given at a different set of layers, so every step of the order shows.
    file = _yaml(tmp_path, "lr: 0.01\nseed: 3\nwarmup_steps: 7\nbatch_size: 8\n")
    sets = ["warmup_steps=9", "batch_size=16"]
    base = {**BASE, "batch_size": 24, "preset": None, "max_steps": None}
    cfg = build_train_config(base, file, sets)
    assert cfg.weight_decay == 0.1  # default only
    assert cfg.lr == 0.01 and cfg.seed == 3  # file beats default
    assert cfg.warmup_steps == 9  # --set beats file
    assert cfg.batch_size == 24  # explicit CLI value beats --set
    assert cfg.preset == "tiny" and cfg.max_steps is None  # None on the command line means "not given"


def test_file_can_supply_data_and_out(tmp_path: Path) -> None:
    file = _yaml(tmp_path, "data: d\nout: o\n")
    cfg = build_train_config({"data": None, "out": None}, file)
    assert (cfg.data, cfg.out) == ("d", "o")
    assert build_train_config({"data": "cli", "out": None}, file).data == "cli"


def test_model_keys_from_file_and_set(tmp_path: Path) -> None:
    file = _yaml(tmp_path, "model:\n  vision:\n    layers: 2\n    width: 128\n  embed_dim: 64\n")
    cfg = build_train_config(dict(BASE), file, ["model.vision.layers=1", "model.text.width=64"])
    model = apply_overrides(get_preset("tiny"), cfg.model)
    assert model.vision.layers == 1  # --set beats the file, also for model keys
    assert model.vision.width == 128 and model.embed_dim == 64  # untouched file values survive
    assert model.text.width == 64 and model.text.layers == get_preset("tiny").text.layers
    assert "model.vision.layers" not in {f for f in cfg.to_dict()}  # model keys do not leak to the top level


def test_set_values_are_parsed_as_yaml_scalars() -> None:
    cfg = build_train_config(dict(BASE), None, ["max_steps=null", "grad_clip=null", "progress=false",
                                                 "model.vision.layers=3", "betas=[0.8, 0.9]", "data=other"])
    assert cfg.max_steps is None and cfg.grad_clip is None and cfg.progress is False
    assert cfg.model == {"vision.layers": 3} and cfg.betas == (0.8, 0.9)
    assert cfg.data == "data/shapes"  # explicit CLI value still wins over --set


@pytest.mark.parametrize("text", ["1e-3", "1.0e-3", "0.001", "1E-3"])
def test_exponent_lr_is_a_float(text: str, tmp_path: Path) -> None:
    # PyYAML reads "1e-3" (no dot) as a string; the config must still see the number.
    assert build_train_config(dict(BASE), None, [f"lr={text}"]).lr == pytest.approx(1e-3)
    assert build_train_config(dict(BASE), _yaml(tmp_path, f"lr: {text}\n")).lr == pytest.approx(1e-3)
    assert isinstance(build_train_config(dict(BASE), None, [f"lr={text}"]).lr, float)


def test_integer_written_with_exponent() -> None:
    assert build_train_config(dict(BASE), None, ["max_steps=1e3"]).max_steps == 1000


def test_empty_yaml_file_means_defaults(tmp_path: Path) -> None:
    assert build_train_config(dict(BASE), _yaml(tmp_path, "# nothing\n")) == build_train_config(dict(BASE))


def test_path_objects_become_strings(tmp_path: Path) -> None:
    cfg = TrainConfig(data=tmp_path / "d", out=tmp_path / "o")
    assert cfg.data == str(tmp_path / "d") and isinstance(cfg.out, str)


def test_to_dict_round_trips_through_json() -> None:
    cfg = build_train_config(dict(BASE), None, ["model.vision.layers=2", "lr=5e-4", "max_steps=10"])
    again = TrainConfig(**json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


# ----------------------------------------------------------------------------- errors
def test_unknown_key_from_set_is_named() -> None:
    with pytest.raises(ConfigError, match="unknown training setting.*learning_rate"):
        build_train_config(dict(BASE), None, ["learning_rate=1"])


def test_unknown_key_from_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown training setting.*bach_size"):
        build_train_config(dict(BASE), _yaml(tmp_path, "bach_size: 8\n"))


@pytest.mark.parametrize(
    ("item", "field", "shown"),
    [
        ("batch_size=1", "batch_size", "1"),
        ("loss=foo", "loss", "foo"),
        ("precision=fp16", "precision", "fp16"),
        ("attention_kernel=flash", "attention_kernel", "flash"),
        ("loss_chunk_size=-1", "loss_chunk_size", "-1"),
        ("loss_chunk_size=1.5", "loss_chunk_size", "1.5"),
        ("accum_steps=0", "accum_steps", "0"),
        ("accum_steps=two", "accum_steps", "two"),
        ("batch_size=abc", "batch_size", "abc"),
        ("batch_size=2.5", "batch_size", "2.5"),
        ("lr=-1", "lr", "-1"),
        ("lr=fast", "lr", "fast"),
        ("max_steps=0", "max_steps", "0"),
        ("betas=[0.9]", "betas", "0.9"),
        ("betas=[0.9, 1.5]", "betas", "1.5"),
        ("progress=maybe", "progress", "maybe"),
        ("compile=sometimes", "compile", "sometimes"),
        ("workers=-1", "workers", "-1"),
        ("grad_clip=0", "grad_clip", "0"),
        ("ema_decay=1", "ema_decay", "1"),
        ("ema_decay=-0.1", "ema_decay", "-0.1"),
        ("preset=3", "preset", "3"),
        ("model=7", "model", "7"),
        ("vocab_size=true", "vocab_size", "True"),
    ],
)
def test_invalid_value_names_the_field(item: str, field: str, shown: str) -> None:
    with pytest.raises(ConfigError) as info:
        build_train_config(dict(BASE), None, [item])
    assert field in str(info.value) and shown in str(info.value)


@pytest.mark.parametrize("other", ["loss=triplet", "hard_negatives=true"])
def test_chunked_loss_with_what_it_cannot_compute_is_refused(other: str) -> None:
    with pytest.raises(ConfigError, match="loss_chunk_size needs loss 'clip' or 'siglip' without hard_negatives"):
        build_train_config(dict(BASE), None, ["loss_chunk_size=256", other])


def test_invalid_value_from_file_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="precision.*fp16"):
        build_train_config(dict(BASE), _yaml(tmp_path, "precision: fp16\n"))


def test_model_section_that_is_not_a_mapping(tmp_path: Path) -> None:
    file = _yaml(tmp_path, "model: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml.*'model' must be a mapping"):
        build_train_config(dict(BASE), file)


@pytest.mark.parametrize("item", ["lr", "=3", "", " =1"])
def test_malformed_set(item: str) -> None:
    with pytest.raises(ConfigError, match="--set expects key=value") as info:
        build_train_config(dict(BASE), None, [item])
    assert repr(item) in str(info.value)


def test_parse_sets_keeps_equals_signs_in_values() -> None:
    assert parse_sets(["out=a=b", " lr = 0.5"]) == {"out": "a=b", "lr": 0.5}


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_yaml_that_is_not_a_mapping(tmp_path: Path, text: str) -> None:
    path = _yaml(tmp_path, text)
    with pytest.raises(ConfigError, match="must hold a mapping") as info:
        build_train_config(dict(BASE), path)
    assert path in str(info.value)


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "lr: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        read_yaml(path)
    assert path in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="does not exist") as info:
        build_train_config(dict(BASE), path)
    assert path in str(info.value)


@pytest.mark.parametrize("missing", ["data", "out"])
def test_missing_data_or_out(missing: str) -> None:
    base = {**BASE, missing: None}
    with pytest.raises(ConfigError, match=f"--{missing} is required"):
        build_train_config(base)
    with pytest.raises(ConfigError, match=f"--{missing} is required"):
        build_train_config({k: v for k, v in BASE.items() if k != missing})


def test_loss_weights_from_file_and_set(tmp_path: Path) -> None:
    file = _yaml(tmp_path, "loss_weights:\n  itc: 1\n  mlm: 0.5\n")
    cfg = build_train_config(dict(BASE), file, ["loss_weights.mlm=2", "loss_weights.itm=1e-1"])
    assert cfg.loss_weights == {"itc": 1.0, "mlm": 2.0, "itm": 0.1}


@pytest.mark.parametrize(("item", "shown"), [("loss_weights.itm=-1", "loss_weights.itm must be >= 0"),
                                             ("loss_weights.itm=much", "loss_weights.itm must be a number"),
                                             ("loss_weights=3", "loss_weights must be a mapping")])
def test_invalid_loss_weights_name_the_term(item: str, shown: str) -> None:
    with pytest.raises(ConfigError, match=shown):
        build_train_config(dict(BASE), None, [item])


def test_negative_types_accept_a_list_or_a_comma_string_and_name_bad_values() -> None:
    assert TrainConfig(data="d", out="o", negative_types="swap_attributes, swap_relation").negative_types == ["swap_attributes", "swap_relation"]
    assert TrainConfig(data="d", out="o", negative_types=["swap_relation"]).negative_types == ["swap_relation"]
    for bad in ([], [3], 7):
        with pytest.raises(ValueError, match="negative_types"):
            TrainConfig(data="d", out="o", negative_types=bad)


@pytest.mark.parametrize("other", ["loss=triplet", "hard_negatives=true"])
def test_accumulation_with_what_it_cannot_compute_is_refused(other: str) -> None:
    with pytest.raises(ConfigError, match="accum_steps > 1 needs loss 'clip' or 'siglip' without hard_negatives"):
        build_train_config(dict(BASE), None, ["accum_steps=4", other])
