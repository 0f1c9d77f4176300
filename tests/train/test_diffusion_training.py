"""The trainer on the diffusion family: resume is bit-identical, validation is the deterministic
denoising loss of the val pairs, and a run conditioned on a dual encoder's text tower keeps it frozen."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

import coembed
from coembed.data.datasets import read_samples
from coembed.objectives.diffusion import validation_loss
from coembed.train.config import TrainConfig
from coembed.train.loop import train
from coembed.transforms import load_image
from tests.helpers import assert_same_runs, interrupt_then_resume

SMALL = {"image_size": 16, "patch_size": 1, "channels": [8, 16], "groups": 4, "heads": 2, "text.layers": 1, "text.width": 32,
         "text.heads": 2, "text_embed_dim": 16}


def _cfg(data: Path, out: Path, **extra) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), preset="diffusion-tiny", model={**SMALL, **extra}, batch_size=16, max_steps=4,
                       log_every=1, save_every=2, val_samples=0, workers=0, precision="fp32", progress=False, warmup_steps=1)


def test_diffusion_resume_reproduces_the_uninterrupted_run(shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    train(_cfg(shapes_data, tmp_path / "ref"))
    interrupt_then_resume(_cfg(shapes_data, tmp_path / "b"), 3, monkeypatch)
    lines = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4] and all("loss_denoise" in x for x in lines)
    assert_same_runs(tmp_path / "ref", tmp_path / "b")


def test_diffusion_validation_is_the_fixed_noise_denoising_loss(shapes_data: Path, tmp_path: Path) -> None:
    result = train(replace(_cfg(shapes_data, tmp_path / "run"), val_samples=16, val_every=2))
    vals = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines() if "val_denoise" in x]
    assert [v["step"] for v in vals] == [2, 4] and result.last_val == {"val_denoise": vals[-1]["val_denoise"]}
    model, preprocess, tokenizer = coembed.load(tmp_path / "run")
    samples, _ = read_samples(shapes_data / "val")
    images = torch.stack([preprocess(load_image(shapes_data / "val" / s.image)) for s in samples[:16]])
    tokens = tokenizer([s.captions[0] for s in samples[:16]], context_length=model.cfg.text.context_length)
    assert vals[-1]["val_denoise"] == pytest.approx(validation_loss(model, images, tokens), rel=1e-5)
    assert validation_loss(model, images, tokens) == validation_loss(model, images, tokens)  # fixed timesteps and noise


def test_text_path_run_uses_the_dual_encoders_tokenizer_and_keeps_its_tower(shapes_data: Path, tmp_path: Path,
                                                                             tiny_checkpoint: Path) -> None:
    model = {k: v for k, v in SMALL.items() if not k.startswith("text")}
    cfg = replace(_cfg(shapes_data, tmp_path / "run"), model={**model, "text_path": str(tiny_checkpoint)}, max_steps=2)
    train(cfg)
    run, dual = coembed.load(tmp_path / "run"), coembed.load(tiny_checkpoint)
    assert run.tokenizer.encode("a big red star") == dual.tokenizer.encode("a big red star")
    state = run.model.text.state_dict()
    for name, tensor in dual.model.state_dict().items():
        if not name.startswith("visual.") and name != "logit_scale":
            torch.testing.assert_close(state[name], tensor, msg=name)  # frozen: unchanged by training


@pytest.fixture(scope="module")
def hf_dual_encoder(shapes_data: Path, tiny_bert_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LiT dual encoder (frozen Hugging Face text tower, as `tiny-minilm`) trained 2 steps."""
    out = tmp_path_factory.mktemp("hf-dual") / "run"
    model = {"vision.layers": 1, "vision.width": 64, "vision.heads": 2, "embed_dim": 32, "text.tower": "hf",
             "text.path": str(tiny_bert_folder), "text.frozen": True, "text.context_length": 48}
    train(TrainConfig(data=str(shapes_data), out=str(out), preset="tiny", model=model, batch_size=16, max_steps=2,
                      warmup_steps=1, workers=0, precision="fp32", progress=False, val_samples=0, captions_per_image=1))
    return out


def test_hf_text_path_conditions_on_the_frozen_encoder_with_its_own_tokenizer(shapes_data: Path, tmp_path: Path,
                                                                                hf_dual_encoder: Path, tiny_bert_folder: Path) -> None:
    transformers = pytest.importorskip("transformers")
    from coembed.interop.hf_tokenizer import read_hf_tokenizer

    model = {k: v for k, v in SMALL.items() if not k.startswith("text")}
    train(replace(_cfg(shapes_data, tmp_path / "run"), model={**model, "text_path": str(hf_dual_encoder)}, max_steps=2))
    run, dual = coembed.load(tmp_path / "run"), coembed.load(hf_dual_encoder)
    assert run.model.cfg.text == dual.model.cfg.text and run.model.cfg.context_width == 32
    texts = ["a big red star on the left", "a small blue ring"]
    tokens = run.tokenizer(texts, context_length=48)
    assert torch.equal(tokens, read_hf_tokenizer(tiny_bert_folder)(texts, context_length=48))
    for name, tensor in dual.model.state_dict().items():
        if name.startswith("text."):  # frozen: unchanged by training, projection included
            torch.testing.assert_close(run.model.state_dict()[name], tensor, msg=name)
    context, mask, pooled = run.model.encode_text(tokens)
    torch.testing.assert_close(pooled, dual.model.encode_text(tokens))  # the dual encoder's text embedding
    assert torch.equal(mask, tokens[:, : mask.shape[1]] != 0) and bool(mask[:, -1].any())
    reference = transformers.BertModel.from_pretrained(tiny_bert_folder).eval()  # the peer library's encoder
    with torch.no_grad():
        expected = reference(input_ids=tokens[:, : mask.shape[1]], attention_mask=mask.long()).last_hidden_state
    torch.testing.assert_close(context[mask], expected[mask], atol=1e-5, rtol=1e-5)


def test_ema_run_saves_the_average_of_its_steps_and_resumes_exactly(shapes_data: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from coembed.checkpoint import read_tensors
    from coembed.train import loop as loop_mod

    cfg = replace(_cfg(shapes_data, tmp_path / "ref"), ema_decay=0.6, val_samples=16, val_every=2)
    real, snapshots = loop_mod.fusion_train_step, []

    def recording(model, *args, **kwargs):
        result = real(model, *args, **kwargs)
        snapshots.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
        return result

    monkeypatch.setattr(loop_mod, "fusion_train_step", recording)
    train(cfg)
    monkeypatch.setattr(loop_mod, "fusion_train_step", real)
    expected = dict(snapshots[0])  # the naive EMA of the weights after each of the 4 steps
    for k, weights in enumerate(snapshots[1:], start=1):
        d = min(0.6, (1 + k) / (10 + k))
        expected = {n: d * expected[n] + (1 - d) * w for n, w in weights.items()}
    folder = tmp_path / "ref" / "checkpoint"
    saved, state = read_tensors(folder / "model.safetensors"), read_tensors(folder / "train_state.safetensors")
    for name, value in expected.items():
        torch.testing.assert_close(saved[name], value, msg=name)  # the model file holds the average...
        assert torch.equal(state[f"ema.raw.{name}"], snapshots[-1][name])  # ...the train state the last weights
    assert int(state["ema.updates"]) == 4
    model, preprocess, tokenizer = coembed.load(tmp_path / "ref")  # validation scored the average
    samples, _ = read_samples(shapes_data / "val")
    images = torch.stack([preprocess(load_image(shapes_data / "val" / s.image)) for s in samples[:16]])
    tokens = tokenizer([s.captions[0] for s in samples[:16]], context_length=model.cfg.text.context_length)
    last = [json.loads(x) for x in (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines() if "val_denoise" in x][-1]
    assert last["val_denoise"] == pytest.approx(validation_loss(model, images, tokens), rel=1e-5)

    interrupt_then_resume(replace(cfg, out=str(tmp_path / "b")), 3, monkeypatch)
    assert_same_runs(tmp_path / "ref", tmp_path / "b")
    resumed = read_tensors(tmp_path / "b" / "checkpoint" / "train_state.safetensors")
    assert all(torch.equal(resumed[k], state[k]) for k in state if k.startswith("ema."))
    with pytest.raises(Exception, match="ema_decay: 0.6 -> 0.9"):
        train(replace(cfg, out=str(tmp_path / "b"), ema_decay=0.9, max_steps=6), resume=True)


def test_compiled_diffusion_run_trains_like_the_eager_one(shapes_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # compile=true compiles the U-Net (Diffusion.forward) and the text tower's stack. Dynamo's "eager"
    # backend captures and guards as inductor does and runs the graph as is: the wiring in seconds. The
    # U-Net's first graph must have static shapes: inductor fails on symbolic image sides (compile_units),
    # and its ~4 minutes of compiling are too slow for this suite (the real run is in docs/generation.md).
    from coembed.train import loop as loop_mod

    graphs, real = [], loop_mod.compile_units

    def backend(gm, example_inputs):
        # a graph with dynamic shapes takes its symbolic sizes as extra, non-tensor inputs
        graphs.append(([tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor)],
                       all(isinstance(x, torch.Tensor) for x in example_inputs)))
        return gm.forward

    counted = []
    monkeypatch.setattr(loop_mod, "compile_units", lambda model: counted.append(real(model, backend=backend)))
    train(_cfg(shapes_data, tmp_path / "eager"))
    train(replace(_cfg(shapes_data, tmp_path / "compiled"), compile=True))
    assert counted == [2]  # the U-Net and the frozen text tower's stack
    unet = [static for shapes, static in graphs if (16, 3, 16, 16) in shapes]  # U-Net graphs: 16 noisy 16 px images
    assert unet and unet[0]
    text = [static for shapes, static in graphs if (16, 3, 16, 16) not in shapes and any(x[-1:] == (32,) for x in shapes)]
    assert text and not text[0]  # the text stack's first graph is already dynamic: text lengths vary
    want = [json.loads(x) for x in (tmp_path / "eager" / "metrics.jsonl").read_text().splitlines()]
    got = [json.loads(x) for x in (tmp_path / "compiled" / "metrics.jsonl").read_text().splitlines()]
    for a, b in zip(want, got, strict=True):
        assert a["loss_denoise"] == pytest.approx(b["loss_denoise"], rel=1e-5)
