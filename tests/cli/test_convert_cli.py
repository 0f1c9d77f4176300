"""``coembed convert`` and foreign checkpoints through the real ``coembed`` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import coembed
from coembed.models.dual_encoder import DualEncoder, DualEncoderConfig
from coembed.tokenizer_clip import ClipTokenizer
from coembed.towers.text_transformer import TextConfig
from coembed.towers.vit import VisionConfig

ENTRY_POINT = Path(sys.executable).parent / "coembed"


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(ENTRY_POINT), *map(str, args)], capture_output=True, text=True, timeout=180,
                          env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    cfg = DualEncoderConfig(embed_dim=32, act="quick_gelu",
                            vision=VisionConfig(image_size=32, patch_size=16, width=64, layers=1, heads=2),
                            text=TextConfig(vocab_size=49408, context_length=77, width=64, layers=1, heads=2,
                                            pool_type="argmax", eot_id=49407))
    path = tmp_path_factory.mktemp("convert") / "coembed"
    coembed.save(path, DualEncoder(cfg), ClipTokenizer.default())
    return path


def test_convert_round_trip_through_the_command(source: Path, tmp_path: Path) -> None:
    proc = run("convert", source, tmp_path / "hf", "--to", "hf", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["target_format"] == "hf"
    assert run("convert", tmp_path / "hf", tmp_path / "oc", "--to", "openclip").returncode == 0
    proc = run("convert", tmp_path / "oc", tmp_path / "back", "--to", "coembed")
    assert proc.returncode == 0 and "(openclip) ->" in proc.stdout, proc.stderr
    want, got = load_file(str(source / "model.safetensors")), load_file(str(tmp_path / "back" / "model.safetensors"))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_classify_reads_foreign_checkpoints(source: Path, tmp_path: Path) -> None:
    Image.new("RGB", (40, 40), (200, 30, 30)).save(tmp_path / "red.png")
    assert run("convert", source, tmp_path / "oc", "--to", "openclip").returncode == 0
    for checkpoint in (tmp_path / "oc", tmp_path / "oc" / "open_clip_model.safetensors"):
        proc = run("classify", "--checkpoint", checkpoint, tmp_path / "red.png", "--labels", "red,blue", "--json")
        assert proc.returncode == 0, proc.stderr
        assert {x["label"] for x in json.loads(proc.stdout)[0]["labels"]} == {"red", "blue"}


def test_quick_gelu_flag_silences_the_guess(source: Path, tmp_path: Path) -> None:
    weights = load_file(str(source / "model.safetensors"))
    torch.save(weights, tmp_path / "openai.pt")
    Image.new("RGB", (32, 32)).save(tmp_path / "x.png")
    guessed = run("classify", "--checkpoint", tmp_path / "openai.pt", tmp_path / "x.png", "--labels", "a,b")
    assert guessed.returncode == 0 and "assuming quick_gelu=True" in guessed.stderr
    stated = run("classify", "--checkpoint", tmp_path / "openai.pt", "--quick-gelu", tmp_path / "x.png", "--labels", "a,b")
    assert stated.returncode == 0 and "quick_gelu" not in stated.stderr


def test_convert_errors_are_one_line(tmp_path: Path) -> None:
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(tmp_path / "jit.pt"))
    proc = run("convert", tmp_path / "jit.pt", tmp_path / "out", "--to", "coembed")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith("coembed convert: error: ") and "TorchScript" in proc.stderr
