"""A frozen Hugging Face text tower in the training loop: caption features cached once, reused on
resume, identical to what the tower computes; an unfrozen tower trains end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import coembed
from coembed.checkpoint import read_tensors
from coembed.interop.hf_tokenizer import read_hf_tokenizer
from coembed.train import loop as loop_mod
from coembed.train import text_cache
from coembed.train.config import TrainConfig
from coembed.train.loop import TIMING_KEYS, train
from coembed.train.text_cache import CACHE_FILE, compute_features, load_or_build

STEPS = {"max_steps": 6, "save_every": 3, "log_every": 1, "val_every": 3, "warmup_steps": 2, "lr": 2e-3}


def hf_settings(folder: Path, frozen: bool = True) -> dict:
    model = {"vision.layers": 1, "vision.width": 64, "vision.heads": 2, "embed_dim": 32,
             "text.tower": "hf", "text.path": str(folder), "text.frozen": frozen, "text.context_length": 48}
    return {"preset": "tiny", "model": model, "workers": 0, "batch_size": 32, "precision": "fp32", "progress": False,
            "hard_negatives": True, "val_samples": 32}


def _cfg(data: Path, out: Path, folder: Path, **kw) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), **{**hf_settings(folder), **STEPS, **kw})


def _lines(run: Path) -> list[dict]:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in x.items() if k not in TIMING_KEYS} for x in lines]


@pytest.fixture(scope="module")
def reference(shapes_data: Path, tiny_bert_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hf-ref") / "run"
    train(_cfg(shapes_data, out, tiny_bert_folder))
    return out


def test_frozen_run_caches_captions_and_negatives(reference: Path, shapes_data: Path, tiny_bert_folder: Path) -> None:
    model, _, tokenizer = coembed.load(reference)
    assert tokenizer.kind == "hf" and model.cfg.text.frozen
    texts = ["a large cyan triangle", "crimson lozenge, left of a hoop!"]
    assert torch.equal(tokenizer(texts, context_length=48), read_hf_tokenizer(tiny_bert_folder)(texts, context_length=48))
    first = _lines(reference)[0]
    samples = [json.loads(x) for x in (shapes_data / "train" / "captions.jsonl").read_text().splitlines()]
    unique = sorted({c for s in samples for c in s["captions"] + s["negatives"]})
    assert first == {"step": 0, "text_cache_captions": len(unique)}
    features = read_tensors(reference / CACHE_FILE)["features"]
    with torch.no_grad():
        want = model.text.forward_features(tokenizer(unique[:40], context_length=48))
    torch.testing.assert_close(features[:40], want, rtol=0, atol=1e-6)
    # The loop's cached path and inference agree: projecting cached features = encode_text.
    with torch.no_grad():
        torch.testing.assert_close(model.project_text(features[:40], normalize=True),
                                   model.encode_text(tokenizer(unique[:40], context_length=48), normalize=True), rtol=0, atol=1e-6)


def test_frozen_tower_weights_do_not_change(reference: Path, tiny_bert_folder: Path) -> None:
    trained = read_tensors(reference / "checkpoint" / "model.safetensors")
    original = read_tensors(tiny_bert_folder / "model.safetensors")
    assert all(torch.equal(trained[f"text.transformer.{k}"], v) for k, v in original.items())
    assert not torch.equal(trained["visual.proj"], coembed.create_model("tiny", **{
        k.replace(".", "__"): v for k, v in hf_settings(tiny_bert_folder)["model"].items()}).state_dict()["visual.proj"])


def test_resume_reuses_the_cache_and_reproduces_the_run(reference: Path, shapes_data: Path, tiny_bert_folder: Path,
                                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _cfg(shapes_data, tmp_path / "b", tiny_bert_folder)
    real_step = loop_mod.train_step

    def interrupted(*args, step: int, **kwargs):
        if step == 5:
            raise KeyboardInterrupt
        return real_step(*args, step=step, **kwargs)

    monkeypatch.setattr(loop_mod, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(loop_mod, "train_step", real_step)

    def no_recompute(*args, **kwargs):
        raise AssertionError("the cache was recomputed on resume")

    monkeypatch.setattr(text_cache, "compute_features", no_recompute)
    result = train(cfg, resume=True)
    assert result.steps == 6
    assert _lines(Path(cfg.out)) == _lines(reference)
    want = read_tensors(reference / "checkpoint" / "model.safetensors")
    got = read_tensors(Path(cfg.out) / "checkpoint" / "model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_stale_or_broken_cache_is_recomputed(reference: Path, tmp_path: Path) -> None:
    model, _, tokenizer = coembed.load(reference)
    path = tmp_path / CACHE_FILE
    captions = ["a red circle", "a blue star", "a red circle"]
    cache, computed = load_or_build(path, model, tokenizer, captions, bf16=False)
    assert computed and cache.captions == ["a blue star", "a red circle"] and path.is_file()
    assert load_or_build(path, model, tokenizer, captions, bf16=False)[1] is False
    assert load_or_build(path, model, tokenizer, [*captions, "a green ring"], bf16=False)[1] is True  # other captions
    assert load_or_build(path, model, tokenizer, [*captions, "a green ring"], bf16=True)[1] is True  # other precision
    path.write_bytes(b"not safetensors")
    cache, computed = load_or_build(path, model, tokenizer, captions, bf16=False)
    assert computed and torch.equal(cache.lookup(["a red circle"]), cache.features[1:2])
    with pytest.raises(KeyError, match="not in the text feature cache"):
        cache.lookup(["a purple heart"])


def test_bf16_features_keep_the_direction(minilm_folder: Path, shapes_data: Path) -> None:
    model = coembed.create_model("tiny-minilm")
    from coembed.towers.hf_text import read_tokenizer

    tokenizer = read_tokenizer(model.cfg.text)
    samples = [json.loads(x) for x in (shapes_data / "val" / "captions.jsonl").read_text().splitlines()]
    captions = [c for s in samples[:16] for c in s["captions"]]
    fp32 = compute_features(model, tokenizer, captions, bf16=False)
    bf16 = compute_features(model, tokenizer, captions, bf16=True)
    assert torch.nn.functional.cosine_similarity(fp32, bf16).min().item() > 0.999


def test_unfrozen_tower_trains(shapes_data: Path, tiny_bert_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "unfrozen"
    settings = {**hf_settings(tiny_bert_folder, frozen=False), "max_steps": 2, "val_samples": 0, "hard_negatives": False}
    train(TrainConfig(data=str(shapes_data), out=str(out), **settings))
    assert not (out / CACHE_FILE).exists()
    trained = read_tensors(out / "checkpoint" / "model.safetensors")
    original = read_tensors(tiny_bert_folder / "model.safetensors")
    assert not torch.equal(trained["text.transformer.encoder.layer.0.attention.self.query.weight"],
                           original["encoder.layer.0.attention.self.query.weight"])
