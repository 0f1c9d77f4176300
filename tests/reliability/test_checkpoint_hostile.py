"""Hostile weight files through every loader: each is refused with one CheckpointError naming the file
(and the key or shape), never a traceback; pickles that would run code are refused without running it.

Loaders: ``coembed.load`` (coembed folders, OpenCLIP files/folders, Hugging Face folders), ``coembed
convert`` (CLI, exit 2), warm start (``warm_start``), train resume (``train(resume=True)``), the BERT
text tower's weights (``towers.bert``) and the merge of ``coembed embed`` output (``.npy`` shards).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

import coembed
from coembed.cli.main import main as cli_main
from coembed.errors import CheckpointError, CoembedError, DataError
from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig
from coembed.towers.text_transformer import TextConfig
from coembed.towers.vit import VisionConfig
from coembed.transforms import ImageTransform

CLIP_TEXT = dict(vocab_size=49408, context_length=77, width=64, layers=1, heads=1, pool_type="argmax", eot_id=49407)
VIT = DualEncoderConfig(embed_dim=16, act="quick_gelu", text=TextConfig(**CLIP_TEXT),
                        vision=VisionConfig(image_size=32, patch_size=16, width=64, layers=1, heads=1))
# heads = width // 64: what OpenCLIP assumes for a bare state dict without its config file
WEIGHTS = {"coembed": "model.safetensors", "openclip": "open_clip_model.safetensors", "hf": "model.safetensors"}


@pytest.fixture(scope="session")
def faults_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One small CLIP ViT in each format (coembed, OpenCLIP folder, Hugging Face folder); read-only."""
    from coembed.interop.convert import convert
    from coembed.tokenizer_clip import ClipTokenizer

    root = tmp_path_factory.mktemp("faults-src")
    torch.manual_seed(0)
    coembed.save(root / "coembed", DualEncoder(VIT), ClipTokenizer.default(), ImageTransform(image_size=32))
    for fmt in ("openclip", "hf"):
        convert(root / "coembed", root / fmt, fmt)
    return {"coembed": root / "coembed", "openclip": root / "openclip", "hf": root / "hf"}


# ----------------------------------------------------------------------------- hostile files
def _header(path: Path) -> tuple[int, dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return n, json.loads(raw[8 : 8 + n]), raw[8 + n :]


def header_cut(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:20])
    return "not a valid safetensors file"


def data_cut(path: Path) -> str:
    path.write_bytes(path.read_bytes()[:-64])
    return "not a valid safetensors file"


def huge_header_length(path: Path) -> str:
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**62) + raw[8:])
    return "not a valid safetensors file"


def header_not_json(path: Path) -> str:
    n, _, _ = _header(path)
    raw = path.read_bytes()
    path.write_bytes(raw[:8] + b"{" + b"\x00" * (n - 1) + raw[8 + n :])
    return "not a valid safetensors file"


def _edit(path: Path, change: Callable[[dict[str, torch.Tensor]], None]) -> None:
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path))


def _key(tensors: dict[str, torch.Tensor], hint: str) -> str:
    return next(k for k in sorted(tensors) if hint in k and tensors[k].ndim == 2)


def wrong_shape(path: Path) -> str:
    key = _key(load_file(str(path)), "proj")
    _edit(path, lambda t: t.__setitem__(key, torch.zeros(3, 5)))
    return "wrong shape"


def missing_key(path: Path) -> str:
    key = _key(load_file(str(path)), "proj")
    _edit(path, lambda t: t.pop(key))
    return "missing"


def extra_key(path: Path) -> str:
    _edit(path, lambda t: t.__setitem__("surprise.weight", torch.zeros(2)))
    return "surprise.weight"


def wrong_dtype(path: Path) -> str:
    key = _key(load_file(str(path)), "proj")
    _edit(path, lambda t: t.__setitem__(key, torch.zeros(t[key].shape, dtype=torch.int64)))
    return "wrong dtype"


FILE_CASES = [header_cut, data_cut, huge_header_length, header_not_json, wrong_shape, missing_key, extra_key, wrong_dtype]


def _copy(faults_sources: dict[str, Path], fmt: str, tmp_path: Path) -> Path:
    dst = tmp_path / fmt
    shutil.copytree(faults_sources[fmt], dst)
    return dst


def _refused(call: Callable[[], object], *needles: str) -> str:
    with pytest.raises(CheckpointError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message.strip() or "Traceback" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


@pytest.mark.parametrize("fmt", list(WEIGHTS))
@pytest.mark.parametrize("case", FILE_CASES, ids=lambda c: c.__name__)
def test_hostile_weights_through_load(faults_sources: dict[str, Path], tmp_path: Path, fmt: str, case) -> None:
    folder = _copy(faults_sources, fmt, tmp_path)
    needle = case(folder / WEIGHTS[fmt])
    names_file = needle.startswith("not a valid")
    _refused(lambda: coembed.load(folder), str(folder / WEIGHTS[fmt]) if names_file else str(folder), needle)


@pytest.mark.parametrize("case", [header_cut, huge_header_length, wrong_shape, wrong_dtype], ids=lambda c: c.__name__)
def test_hostile_bare_openclip_file(faults_sources: dict[str, Path], tmp_path: Path, case) -> None:
    path = tmp_path / "weights.safetensors"
    shutil.copy(faults_sources["openclip"] / WEIGHTS["openclip"], path)
    needle = case(path)
    # without a config the architecture is read off the shapes: a damaged shape may make no model at all
    with pytest.raises(CheckpointError) as info:
        coembed.load(path)
    assert str(path) in str(info.value)
    assert needle in str(info.value) or (case is wrong_shape and "cannot build a model from these shapes" in str(info.value))


def _cli(capsys, *argv: str) -> tuple[int, str]:
    code = cli_main(list(argv))
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("fmt", list(WEIGHTS))
@pytest.mark.parametrize("case", [data_cut, wrong_shape, missing_key, wrong_dtype], ids=lambda c: c.__name__)
def test_hostile_weights_through_convert_cli(faults_sources: dict[str, Path], tmp_path: Path, capsys, fmt: str, case) -> None:
    folder = _copy(faults_sources, fmt, tmp_path)
    needle = case(folder / WEIGHTS[fmt])
    to = "openclip" if fmt != "openclip" else "hf"
    code, err = _cli(capsys, "convert", str(folder), str(tmp_path / "out"), "--to", to)
    assert code == 2 and err.startswith("coembed convert: error: ") and err.count("\n") == 1, err
    assert needle in err and str(folder) in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


# ----------------------------------------------------------------------------- configs
def _write_json(path: Path, obj) -> None:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))


def _config_case(name: str, fmt: str, folder: Path) -> str:
    """Break the folder's config as ``name`` says; return the expected message part."""
    file = folder / ("open_clip_config.json" if fmt == "openclip" else "config.json")
    data = json.loads(file.read_text())
    if name == "invalid_json":
        _write_json(file, '{"model": ')
        return "not valid JSON"
    if name == "not_an_object":
        _write_json(file, "[1, 2]")
        return "JSON object"
    if name == "missing_fields":
        if fmt == "coembed":
            data.pop("model")
            needle = "no 'model' section"
        elif fmt == "hf":
            data.pop("model_type")
            needle = "unsupported format_version None"
        else:
            data["model_cfg"]["vision_cfg"] = "not a dict"
            needle = "vision_cfg"
        _write_json(file, data)
        return needle
    if name == "unknown_architecture":
        if fmt == "coembed":
            data["model"]["family"] = "transformer_xl"
        elif fmt == "hf":
            data["model_type"] = "llama"
        else:
            data["model_cfg"]["vision_cfg"]["timm_model_name"] = "convnext_xxlarge"
        _write_json(file, data)
        return {"coembed": "transformer_xl", "hf": "llama", "openclip": "convnext_xxlarge"}[fmt]
    if name == "bad_field_value":
        if fmt == "coembed":
            data["model"]["embed_dim"] = "wide"
        elif fmt == "hf":
            data["projection_dim"] = "wide"
        else:  # OpenCLIP's architecture is read off the tensor shapes; its config only adds flags
            data["model_cfg"]["text_cfg"]["pool_type"] = 7
        _write_json(file, data)
        return {"coembed": "model.embed_dim must be a number, got 'wide'", "hf": "config.projection_dim must be a number, got 'wide'",
                "openclip": "pool_type 7"}[fmt]
    raise AssertionError(name)


CONFIG_CASES = ["invalid_json", "not_an_object", "missing_fields", "unknown_architecture", "bad_field_value"]


@pytest.mark.parametrize("fmt", list(WEIGHTS))
@pytest.mark.parametrize("name", CONFIG_CASES)
def test_hostile_config_through_load(faults_sources: dict[str, Path], tmp_path: Path, fmt: str, name: str) -> None:
    folder = _copy(faults_sources, fmt, tmp_path)
    needle = _config_case(name, fmt, folder)
    _refused(lambda: coembed.load(folder), str(folder), needle)


@pytest.mark.parametrize("fmt", list(WEIGHTS))
def test_hostile_config_through_convert_cli(faults_sources: dict[str, Path], tmp_path: Path, capsys, fmt: str) -> None:
    folder = _copy(faults_sources, fmt, tmp_path)
    needle = _config_case("unknown_architecture", fmt, folder)
    code, err = _cli(capsys, "convert", str(folder), str(tmp_path / "out"), "--to", "coembed")
    assert code == 2 and err.startswith("coembed convert: error: ") and needle in err and err.count("\n") == 1, err


def test_empty_folder_and_missing_path(tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(lambda: coembed.load(empty), str(empty), "not a coembed checkpoint")
    _refused(lambda: coembed.load(tmp_path / "nowhere"), str(tmp_path / "nowhere"), "does not exist")
    code, err = _cli(capsys, "convert", str(empty), str(tmp_path / "out"), "--to", "hf")
    assert code == 2 and str(empty) in err and err.count("\n") == 1, err


def test_empty_weights_file(tmp_path: Path) -> None:
    for name in ("w.safetensors", "w.pt"):
        (tmp_path / name).write_bytes(b"")
        _refused(lambda: coembed.load(tmp_path / name), str(tmp_path / name))


# ----------------------------------------------------------------------------- pickles that run code
class _Touch:
    """Unpickling this calls ``pathlib.Path.touch(marker)``: it would create the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


class _System:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _evil(path: Path, marker: Path, payload: type) -> Path:
    torch.save({"visual.proj": torch.zeros(2), "evil": payload(marker)}, path)
    return path


@pytest.mark.parametrize("payload", [_Touch, _System], ids=["Path.touch", "os.system"])
@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pth"])
def test_code_running_pickle_is_refused_and_not_run(tmp_path: Path, payload: type, suffix: str) -> None:
    marker = tmp_path / "pwned"
    folder = tmp_path / "ckpt"
    folder.mkdir()
    weights = _evil(folder / f"open_clip_pytorch_model{suffix}" if suffix == ".bin" else folder / f"model{suffix}", marker, payload)
    _refused(lambda: coembed.load(weights), str(weights), "weights-only")
    if suffix == ".bin":  # a folder is OpenCLIP's when it holds one of OpenCLIP's file names
        _refused(lambda: coembed.load(folder), str(weights), "weights-only")
    assert not marker.exists()


def test_code_running_pickle_via_cli_and_other_loaders(tmp_path: Path, capsys, faults_sources: dict[str, Path]) -> None:
    marker = tmp_path / "pwned"
    weights = _evil(tmp_path / "evil.pt", marker, _Touch)
    code, err = _cli(capsys, "convert", str(weights), str(tmp_path / "out"), "--to", "coembed")
    assert code == 2 and str(weights) in err and "weights-only" in err and err.count("\n") == 1, err
    hf = _copy(faults_sources, "hf", tmp_path)  # an HF folder with only a pickled pytorch_model.bin
    (hf / "model.safetensors").unlink()
    _evil(hf / "pytorch_model.bin", marker, _Touch)
    _refused(lambda: coembed.load(hf), str(hf), "pytorch_model.bin")
    bert = tmp_path / "bert"  # a BERT text-tower folder whose only weights are the pickle
    bert.mkdir()
    _write_json(bert / "config.json", {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1})
    _evil(bert / "pytorch_model.bin", marker, _Touch)
    from coembed.towers.bert import read_bert_config, read_bert_state

    _refused(lambda: read_bert_state(bert), str(bert / "pytorch_model.bin"), "weights-only")
    _refused(lambda: read_bert_config(bert), str(bert / "pytorch_model.bin"), "weights-only")
    assert not marker.exists()


@pytest.mark.parametrize("case", [header_cut, huge_header_length], ids=lambda c: c.__name__)
def test_hostile_bert_tower_weights(tmp_path: Path, case) -> None:
    from coembed.towers.bert import read_bert_config, read_bert_state

    bert = tmp_path / "bert"
    bert.mkdir()
    _write_json(bert / "config.json", {"model_type": "bert", "hidden_size": 8, "num_hidden_layers": 1})
    save_file({"embeddings.word_embeddings.weight": torch.zeros(4, 8)}, str(bert / "model.safetensors"))
    needle = case(bert / "model.safetensors")
    _refused(lambda: read_bert_config(bert), str(bert / "model.safetensors"), needle)
    _refused(lambda: read_bert_state(bert), str(bert / "model.safetensors"), needle)


def test_torchscript_archive_is_refused_not_run(tmp_path: Path, capsys) -> None:
    marker = tmp_path / "pwned"

    class Scripted(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    path = tmp_path / "ViT-B-32.pt"
    torch.jit.save(torch.jit.script(Scripted()), str(path))
    real_jit_load = torch.jit.load
    torch.jit.load = lambda *a, **k: marker.touch()  # type: ignore[assignment]
    try:
        _refused(lambda: coembed.load(path), str(path), "TorchScript archive")
        code, err = _cli(capsys, "convert", str(path), str(tmp_path / "out"), "--to", "coembed")
    finally:
        torch.jit.load = real_jit_load
    assert code == 2 and "TorchScript archive" in err and not marker.exists()


# ----------------------------------------------------------------------------- warm start, resume
@pytest.mark.parametrize("case", [header_cut, data_cut, huge_header_length], ids=lambda c: c.__name__)
def test_hostile_warm_start_source(tiny_checkpoint: Path, tmp_path: Path, case) -> None:
    from coembed.train.warm_start import warm_start

    folder = tmp_path / "init"
    shutil.copytree(tiny_checkpoint, folder)
    needle = case(folder / "model.safetensors")
    model = coembed.load(tiny_checkpoint).model
    _refused(lambda: warm_start(model, folder), str(folder / "model.safetensors"), needle)
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(lambda: warm_start(model, empty), str(empty), "not a coembed checkpoint")


def _run_copy(tiny_checkpoint: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(tiny_checkpoint.parent, run)
    return run


def _bad_state(run: Path, name: str) -> str:
    folder = run / "checkpoint"
    if name == "state_tensors_cut":
        return data_cut(folder / "train_state.safetensors")
    if name == "state_json_invalid":
        (folder / "train_state.json").write_text('{"progress": ')
        return "not valid JSON"
    if name == "state_json_no_progress":
        meta = json.loads((folder / "train_state.json").read_text())
        meta["progress"] = {"steps": "many"}
        (folder / "train_state.json").write_text(json.dumps(meta))
        return "malformed progress"
    if name == "optimizer_wrong_shape":
        key = next(k for k in sorted(load_file(str(folder / "train_state.safetensors"))) if k.endswith("exp_avg"))
        _edit(folder / "train_state.safetensors", lambda t: t.__setitem__(key, torch.zeros(7, 3)))
        return key
    if name == "model_missing":
        (folder / "model.safetensors").unlink()
        return "missing"
    raise AssertionError(name)


RESUME_CASES = ["state_tensors_cut", "state_json_invalid", "state_json_no_progress", "optimizer_wrong_shape", "model_missing"]


@pytest.mark.parametrize("name", RESUME_CASES)
def test_hostile_train_state_through_resume_cli(tiny_checkpoint: Path, shapes_data: Path, tiny_sets: list[str], tmp_path: Path,
                                                capsys, name: str) -> None:
    run = _run_copy(tiny_checkpoint, tmp_path)
    needle = _bad_state(run, name)
    before = {p.name: p.read_bytes() for p in (run / "checkpoint").iterdir()}
    sets = [x for s in tiny_sets for x in ("--set", s)]
    code, err = _cli(capsys, "train", "--data", str(shapes_data), "--out", str(run), "--max-steps", "8", "--batch-size", "32",
                     "--resume", "--no-progress", "--set", "lr=3e-3", "--set", "warmup_steps=2", "--set", "precision=fp32", *sets)
    assert code == 2 and err.startswith("coembed train: error: ") and err.count("\n") == 1, err
    assert needle in err and str(run / "checkpoint") in err
    assert {p.name: p.read_bytes() for p in (run / "checkpoint").iterdir()} == before  # nothing overwritten


# ----------------------------------------------------------------------------- embeddings merge (.npy)
@pytest.fixture
def faults_embedded(capsys, monkeypatch, tiny_checkpoint: Path, shapes_data: Path, tmp_path: Path) -> Path:
    from tests.helpers import copy_test_images

    for name in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    photos = copy_test_images(shapes_data, tmp_path / "photos", 4, lambda i: "p")
    out = tmp_path / "emb"
    code, err = _cli(capsys, "embed", "--checkpoint", str(tiny_checkpoint), "--images", str(photos), "--out", str(out), "--no-progress")
    assert code == 0, err
    return out


def _npy_case(npy: Path, name: str, marker: Path) -> None:
    if name == "truncated":
        npy.write_bytes(npy.read_bytes()[:100])
    elif name == "garbage":
        npy.write_bytes(b"\x00not numpy at all" * 8)
    elif name == "pickled_objects":
        np.save(npy, np.array([_Touch(marker), 1], dtype=object), allow_pickle=True)
    elif name == "empty":
        npy.write_bytes(b"")
    elif name == "missing":
        npy.unlink()


@pytest.mark.parametrize("name", ["truncated", "garbage", "pickled_objects", "empty", "missing"])
def test_hostile_npy_through_index_from_embeddings(faults_embedded: Path, tmp_path: Path, capsys, name: str) -> None:
    npy, marker = faults_embedded / "img_emb" / "img_emb_0.npy", tmp_path / "pwned"
    _npy_case(npy, name, marker)
    argv = ["index", "--from-embeddings", str(faults_embedded), "--db", str(tmp_path / "i.db"), "--no-progress"]
    code, err = _cli(capsys, *argv)  # the partition's marker holds the file's sha256: a changed file is unfinished
    assert code == 2 and "part_00000" in err and "not finished" in err and err.count("\n") == 1, err
    if name != "missing":  # a marker forged to match the hostile file: np.load itself must refuse it
        from coembed.embeddings.layout import file_digest, marker_path

        done = marker_path(faults_embedded, 0)
        done.write_text(json.dumps({**json.loads(done.read_text()), "npy_sha256": file_digest(npy)}))
        code, err = _cli(capsys, *argv)
        assert code == 2 and err.startswith("coembed index: error: ") and str(npy) in err and err.count("\n") == 1, err
    assert not marker.exists()
