"""Run state on disk: optimizer, RNG and progress survive a save/load exactly, without pickles."""

from __future__ import annotations

import copy
import json
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from coembed.errors import CheckpointError
from coembed.loading import checkpoint_config, default_preprocess
from coembed.losses.contrastive import clip_loss
from coembed.presets import create_model
from coembed.train.optim import build_optimizer
from coembed.train.state import Progress, load_run_state, optimizer_tensors, restore_optimizer, save_run_checkpoint

TINY = {"vision__layers": 1, "text__layers": 1, "vision__width": 64, "vision__heads": 2, "text__width": 64,
        "text__heads": 2, "embed_dim": 32, "text__vocab_size": 64}
CHECKPOINT_FILES = {"model.safetensors", "config.json", "tokenizer.json", "train_state.safetensors", "train_state.json"}


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(6, 3, 64, 64, generator=g)
    tokens = torch.randint(5, 64, (6, 9), generator=g)
    tokens[:, 0], tokens[:, -1] = 1, 2
    return images, tokens


def _step(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    out = model(*_batch(seed))
    loss = clip_loss(out.image_emb, out.text_emb, out.logit_scale)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _trained(steps: int = 3):
    torch.manual_seed(0)
    model = create_model("tiny-siglip", **TINY)  # siglip: the bias gets optimizer state too
    opt = build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    for s in range(steps):
        _step(model, opt, s)
    return model, opt


def _save(out: Path, model, opt, progress: Progress | None = None) -> Path:
    config = checkpoint_config(model, default_preprocess(model), preset="tiny-siglip")
    return save_run_checkpoint(out, model, config, '{"tokenizer": true}', opt, progress or Progress(step=3),
                               {"lr": 1e-3, "data": "d"})


def test_optimizer_round_trip_gives_identical_next_step(tmp_path: Path) -> None:
    model, opt = _trained()
    folder = _save(tmp_path, model, opt)
    # The restored side: same weights, a fresh optimizer filled from disk only.
    restored_model = copy.deepcopy(model)
    restored_opt = build_optimizer(restored_model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    load_run_state(folder, restored_opt)
    for s in (10, 11):  # two more steps: bias correction uses the restored step count
        _step(model, opt, s)
        _step(restored_model, restored_opt, s)
    for (name, a), (_, b) in zip(model.named_parameters(), restored_model.named_parameters()):
        assert torch.equal(a, b), name


def test_fresh_optimizer_would_differ(tmp_path: Path) -> None:
    # Guards the test above: without the restored moments the next step is different.
    model, opt = _trained()
    other = copy.deepcopy(model)
    other_opt = build_optimizer(other, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6)
    _step(model, opt, 10)
    _step(other, other_opt, 10)
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), other.parameters()))


def test_optimizer_tensors_cover_every_state_entry() -> None:
    model, opt = _trained(1)
    tensors, meta = optimizer_tensors(opt)
    n_params = sum(1 for p in model.parameters() if p.grad is not None)  # clip_loss leaves logit_bias unused
    assert len(tensors) == 3 * n_params  # step, exp_avg, exp_avg_sq per parameter with a gradient
    assert {k.split(".", 2)[2] for k in tensors} == {"step", "exp_avg", "exp_avg_sq"}
    json.dumps(meta)  # the rest is plain JSON
    assert [len(g["params"]) for g in meta["param_groups"]] == [len(g["params"]) for g in opt.param_groups]


def test_rng_state_is_restored(tmp_path: Path) -> None:
    model, opt = _trained(1)
    torch.manual_seed(1234)
    folder = _save(tmp_path, model, opt)
    expected = torch.rand(8)
    torch.manual_seed(999)
    load_run_state(folder, build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6))
    assert torch.equal(torch.rand(8), expected)


def test_progress_and_train_config_round_trip(tmp_path: Path) -> None:
    model, opt = _trained(1)
    progress = Progress(step=7, samples_seen=224, skipped={"missing file": 2}, skipped_examples=["a.png (missing file)"],
                        last_val={"val_loss": 1.5})
    folder = _save(tmp_path, model, opt, progress)
    got, train_config = load_run_state(folder, build_optimizer(model, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6))
    assert got == progress
    assert train_config == {"lr": 1e-3, "data": "d"}
    record = json.loads((folder / "train_state.json").read_text())
    assert record["progress"] == asdict(progress)


def test_checkpoint_holds_no_pickles(tmp_path: Path) -> None:
    model, opt = _trained(1)
    folder = _save(tmp_path, model, opt)
    files = {p.name for p in folder.iterdir()}
    assert files == CHECKPOINT_FILES
    assert all(p.suffix in (".safetensors", ".json") for p in folder.rglob("*"))
    for path in folder.glob("*.safetensors"):
        assert path.read_bytes()[:2] != b"\x80\x04" and not path.read_bytes().startswith(b"PK")  # pickle, torch zip
        with safe_open(str(path), framework="pt") as f:
            assert list(f.keys())
    for path in folder.glob("*.json"):
        json.loads(path.read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]  # no staging folder left behind


def test_saving_twice_replaces_the_checkpoint(tmp_path: Path) -> None:
    model, opt = _trained(1)
    _save(tmp_path, model, opt, Progress(step=1))
    folder = _save(tmp_path, model, opt, Progress(step=2))
    assert json.loads((folder / "train_state.json").read_text())["progress"]["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_optimizer_of_another_model_is_refused(tmp_path: Path) -> None:
    model, opt = _trained(1)
    folder = _save(tmp_path, model, opt)
    other = create_model("tiny", **TINY)  # no logit_bias: one parameter fewer
    with pytest.raises(CheckpointError, match="optimizer state does not match"):
        load_run_state(folder, build_optimizer(other, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), eps=1e-6))


def test_restore_optimizer_without_param_groups() -> None:
    model, opt = _trained(1)
    tensors, _ = optimizer_tensors(opt)
    with pytest.raises(CheckpointError):
        restore_optimizer(opt, tensors, {})


def test_malformed_progress_is_a_checkpoint_error(tmp_path: Path) -> None:
    model, opt = _trained(1)
    folder = _save(tmp_path, model, opt)
    record = json.loads((folder / "train_state.json").read_text())
    record["progress"]["unexpected"] = 1
    (folder / "train_state.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match="train_state.json.*progress"):
        load_run_state(folder, opt)


def test_missing_state_tensors(tmp_path: Path) -> None:
    model, opt = _trained(1)
    folder = _save(tmp_path, model, opt)
    (folder / "train_state.safetensors").unlink()
    with pytest.raises(CheckpointError, match="train_state.safetensors"):
        load_run_state(folder, opt)
