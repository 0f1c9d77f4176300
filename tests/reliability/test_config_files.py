"""Hostile training config files, --set values and model settings: one ConfigError naming the field (and the file)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coembed.errors import ConfigError
from coembed.train.config import build_train_config

BASE = {"data": "d", "out": "o"}

SETS = [
    (["batch_sise=4"], "'batch_sise' (did you mean 'batch_size'?)"),
    (["batch_size=abc"], "batch_size must be an integer, got 'abc'"),
    (["batch_size=true"], "batch_size must be an integer, got True"),
    (["batch_size=2.5"], "batch_size must be an integer, got 2.5"),
    (["batch_size=0"], "batch_size must be >= 2"),
    (["lr=[1,2]"], "lr must be a number, got [1, 2]"),
    (["lr=.nan"], "lr must be a finite number"),
    (["lr=inf"], "lr must be a finite number, got 'inf'"),
    (["lr=-1"], "lr must be positive"),
    (["epochs=0"], "epochs must be positive"),
    (["epochs=true"], "epochs must be a number, got True"),
    (["eps=0"], "eps must be positive"),
    (["grad_clip=.inf"], "grad_clip must be a finite number"),
    (["weight_decay=nan"], "weight_decay must be a finite number"),
    (["betas=[.nan, 0.9]"], "betas must be a finite number"),
    (["workers=-1"], "workers must be >= 0"),
    (["max_steps=0"], "max_steps must be positive"),
    (["loss_weights.itm=nan"], "loss_weights.itm must be a finite number"),
    (["progress=maybe"], "progress must be true or false"),
    (["lr"], "--set expects key=value, got 'lr'"),
    (["=3"], "--set expects key=value"),
    (["model=abc"], "'model' must be a mapping"),
]


@pytest.mark.parametrize("sets, needle", SETS, ids=[s[0][0] for s in SETS])
def test_bad_set_values(sets: list[str], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        build_train_config(BASE, None, sets)
    assert needle in str(e.value) and "\n" not in str(e.value)


FILES = [
    ("empty.yaml", b"", None),
    ("list.yaml", b"- a\n- b\n", "must hold a mapping of settings, got list"),
    ("scalar.yaml", b"5\n", "got int"),
    ("invalid.yaml", b"lr: [1,\n", "is not valid YAML: line 2, column 1"),
    ("tabs.yaml", b"a:\n\tb: 1\n", "line 2, column 1: found character '\\t'"),
    ("dup.yaml", b"lr: 0.1\nlr: 0.2\n", "setting 'lr' is given twice"),
    ("typo.yaml", b"btach_size: 3\n", "typo.yaml: 'btach_size' (did you mean 'batch_size'?)"),
    ("nested.yaml", b"lr: {a: 1}\n", "in {path}: lr must be a number"),
    ("tag.yaml", b"lr: !!python/object/apply:os.system ['echo hi']\n", "could not determine a constructor"),
    ("utf8.yaml", b"lr: \xff\n", "is not UTF-8 text (byte 4)"),
    ("model.yaml", b"model: [1]\n", "'model' must be a mapping"),
    ("config.json", b'{"lr": 0.1, "batch_size": 4}', None),
]


@pytest.mark.parametrize("name, text, needle", FILES, ids=[f[0] for f in FILES])
def test_config_files(tmp_path: Path, name: str, text: bytes, needle: str | None) -> None:
    path = tmp_path / name
    path.write_bytes(text)
    if needle is None:
        build_train_config(BASE, str(path), [])
        return
    with pytest.raises(ConfigError) as e:
        build_train_config(BASE, str(path), [])
    message = str(e.value)
    assert needle.format(path=path) in message and str(path) in message and "\n" not in message


def test_missing_folder_and_file_out(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        build_train_config(BASE, str(tmp_path / "nope.yaml"), [])
    with pytest.raises(ConfigError, match="is a folder, not a YAML file"):
        build_train_config(BASE, str(tmp_path), [])
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="--out .* is a file"):
        build_train_config({"data": "d", "out": str(tmp_path / "file")}, None, [])


MODEL = [
    ({"vision.layers": "abc"}, "vision.layers must be an integer, got 'abc'"),
    ({"vision.layers": True}, "vision.layers must be an integer, got True"),
    ({"vision.layers": 0}, "vision.layers must be positive"),
    ({"embed_dim": 32.5}, "embed_dim must be an integer, got 32.5"),
    ({"embed_dim": -1}, "embed_dim must be positive"),
    ({"vision.image_size": -64}, "vision.image_size must be positive"),
    ({"vision.mlp_ratio": "nan"}, "vision.mlp_ratio must be a finite number"),
    ({"vision.mlp_ratio": [1]}, "vision.mlp_ratio must be a finite number"),
    ({"act": 5}, "act must be a string, got 5"),
    ({"text.context_length": 1}, "text.context_length must be >= 2"),
    ({"vison.layers": 2}, "unknown model setting 'vison.layers' (did you mean 'vision.layers'?)"),
]


@pytest.mark.parametrize("overrides, needle", MODEL, ids=[next(iter(m[0])) + "=" + repr(next(iter(m[0].values()))) for m in MODEL])
def test_model_settings(overrides: dict, needle: str) -> None:
    from coembed.presets import apply_overrides, get_preset

    with pytest.raises(ConfigError) as e:
        apply_overrides(get_preset("tiny"), overrides)
    assert needle in str(e.value)


def test_float_model_setting_from_yaml_string() -> None:
    from coembed.presets import apply_overrides, get_preset

    assert apply_overrides(get_preset("tiny"), {"vision.ln_eps": "1e-6"}).vision.ln_eps == 1e-6
