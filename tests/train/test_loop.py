"""The training loop on a small `shapes` set with a tiny model: resume, divergence, bad data, outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

import coembed
from coembed.checkpoint import read_tensors
from coembed.data.datasets import ImageTextBatch, SkippedSample
from coembed.errors import CheckpointError, ConfigError, DataError, TrainingDiverged
from coembed.train import loop as loop_mod
from coembed.train import step as step_mod
from coembed.train.config import TrainConfig
from coembed.train.loop import TIMING_KEYS, EpochBatchSampler, MetricsLog, train
from coembed.train.optim import cosine_lr

CHECKPOINT_FILES = {"model.safetensors", "config.json", "tokenizer.json", "train_state.safetensors", "train_state.json"}
TRAIN_KEYS = {"step", "epoch", "time", "loss", "lr", "logit_scale", "grad_norm", "samples_per_s"}
VAL_KEYS = {"step", "time", "val_s", "val_loss", "val_t2i_r1", "val_i2t_r1", "val_zeroshot_shape", "val_zeroshot_color"}
RESUME_KW = {"max_steps": 12, "log_every": 1, "val_every": 6, "warmup_steps": 3, "lr": 2e-3}


def _cfg(data: Path, out: Path, settings: dict[str, Any], **kw: Any) -> TrainConfig:
    return TrainConfig(data=str(data), out=str(out), **{**settings, **kw})


def _lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _saved_step(run: Path) -> int:
    return json.loads((run / "checkpoint" / "train_state.json").read_text())["progress"]["step"]


# ----------------------------------------------------------------------------- sampler, metrics log
def test_epoch_batch_sampler_is_a_seeded_permutation() -> None:
    batches = list(EpochBatchSampler(10, 3, seed=1, epoch=0))
    assert len(batches) == 3 and all(len(b) == 3 for b in batches)  # drop-last
    assert len({i for b in batches for i in b}) == 9
    assert batches == list(EpochBatchSampler(10, 3, seed=1, epoch=0))
    assert batches != list(EpochBatchSampler(10, 3, seed=1, epoch=1))
    assert batches != list(EpochBatchSampler(10, 3, seed=2, epoch=0))


def test_epoch_batch_sampler_start_continues_the_same_order() -> None:
    full = list(EpochBatchSampler(20, 4, seed=0, epoch=3))
    tail = EpochBatchSampler(20, 4, seed=0, epoch=3, start=2)
    assert len(tail) == 3 and list(tail) == full[2:]


def test_metrics_log_resume_drops_later_and_broken_lines(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 3}\n{"step": 2, "val_loss": 1}\n{"step": 3, "loss": 2}\n{"step": 4, "lo')
    log = MetricsLog(path, resume_step=2)
    log.write({"step": 3, "loss": 9})
    assert [json.loads(x) for x in path.read_text().splitlines()] == [
        {"step": 1, "loss": 3}, {"step": 2, "val_loss": 1}, {"step": 3, "loss": 9}]
    MetricsLog(path, resume_step=None)
    assert path.read_text() == ""


# ----------------------------------------------------------------------------- outputs of a run
@pytest.fixture(scope="module")
def short_run(shapes_data: Path, tiny_settings: dict, tmp_path_factory: pytest.TempPathFactory):
    cfg = _cfg(shapes_data, tmp_path_factory.mktemp("short") / "run", tiny_settings, max_steps=4, log_every=1,
               val_every=2, save_every=3, warmup_steps=2)
    return cfg, train(cfg)


def test_run_writes_metrics_and_checkpoint(short_run) -> None:
    cfg, result = short_run
    out = Path(cfg.out)
    assert result.steps == 4 and result.samples_seen == 4 * 32 and result.checkpoint == out / "checkpoint"
    assert {p.name for p in result.checkpoint.iterdir()} == CHECKPOINT_FILES
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint", "metrics.jsonl", "train_config.json"]
    lines = _lines(out)
    train_lines = [x for x in lines if "loss" in x]
    val_lines = [x for x in lines if "val_loss" in x]
    assert [x["step"] for x in train_lines] == [1, 2, 3, 4] and all(set(x) == TRAIN_KEYS for x in train_lines)
    assert [x["step"] for x in val_lines] == [2, 4] and all(set(x) == VAL_KEYS for x in val_lines)
    for x in train_lines:
        assert x["lr"] == pytest.approx(cosine_lr(x["step"] - 1, base_lr=cfg.lr, warmup_steps=2, total_steps=4))
        assert x["epoch"] == 0 and x["loss"] > 0 and x["grad_norm"] > 0
    assert all(0 <= x[k] <= 1 for x in val_lines for k in ("val_t2i_r1", "val_i2t_r1"))
    assert result.last_loss == train_lines[-1]["loss"] and result.last_val == {k: val_lines[-1][k] for k in VAL_KEYS - {"step"} - TIMING_KEYS}
    assert _saved_step(out) == 4  # the final step is saved even though save_every=3
    assert json.loads((out / "train_config.json").read_text()) == json.loads(json.dumps(cfg.to_dict()))


def test_checkpoint_loads_with_the_trained_weights(short_run) -> None:
    cfg, result = short_run
    model, preprocess, tokenizer = coembed.load(result.checkpoint)
    assert model.cfg.embed_dim == 32 and model.cfg.vision.layers == 1 and preprocess.image_size == 64
    saved = read_tensors(result.checkpoint / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items())
    assert tokenizer(["a red circle"]).shape[0] == 1


def test_resume_refuses_changed_settings(short_run, tmp_path: Path) -> None:
    cfg, _ = short_run
    out = tmp_path / "copy"
    shutil.copytree(cfg.out, out)
    before = (out / "metrics.jsonl").read_text()
    changed = TrainConfig(**{**cfg.to_dict(), "out": str(out), "lr": cfg.lr * 2})
    with pytest.raises(ConfigError, match=r"cannot resume with changed settings.*lr"):
        train(changed, resume=True)
    assert (out / "metrics.jsonl").read_text() == before  # nothing was touched


def test_resume_may_change_logging_settings(short_run, tmp_path: Path) -> None:
    cfg, _ = short_run
    out = tmp_path / "copy"
    shutil.copytree(cfg.out, out)
    result = train(TrainConfig(**{**cfg.to_dict(), "out": str(out), "log_every": 7}), resume=True)
    assert result.steps == 4 and result.samples_seen == 4 * 32  # already finished: nothing to do


def test_resume_without_checkpoint(tmp_path: Path, shapes_data: Path, tiny_settings: dict) -> None:
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(_cfg(shapes_data, tmp_path / "empty", tiny_settings, max_steps=2), resume=True)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint"):
        train(_cfg(shapes_data, tmp_path / "empty", tiny_settings, max_steps=2), resume=True)


# ----------------------------------------------------------------------------- resume equivalence
@pytest.fixture(scope="module")
def reference_runs(shapes_data: Path, tiny_settings: dict, tmp_path_factory: pytest.TempPathFactory):
    """Uninterrupted runs, one per precision, trained on first use."""
    runs: dict[str, Path] = {}

    def get(precision: str) -> Path:
        if precision not in runs:
            out = tmp_path_factory.mktemp(f"ref-{precision}") / "run"
            train(_cfg(shapes_data, out, tiny_settings, precision=precision, save_every=4, **RESUME_KW))
            runs[precision] = out
        return runs[precision]

    return get


@pytest.mark.parametrize(
    ("precision", "save_every", "interrupt_at"),
    [("fp32", 4, 10), ("fp32", 3, 7), ("bf16", 4, 10)],
    ids=["fp32-epoch-boundary", "fp32-mid-epoch", "bf16"],
)
def test_resume_reproduces_the_uninterrupted_run(precision: str, save_every: int, interrupt_at: int, reference_runs,
                                                 shapes_data: Path, tiny_settings: dict, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    ref = reference_runs(precision)
    cfg = _cfg(shapes_data, tmp_path / "b", tiny_settings, precision=precision, save_every=save_every, **RESUME_KW)
    real_step = loop_mod.train_step

    def interrupted(*args, step: int, **kwargs):
        if step == interrupt_at:
            raise KeyboardInterrupt
        return real_step(*args, step=step, **kwargs)

    monkeypatch.setattr(loop_mod, "train_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    saved = interrupt_at - 1 - (interrupt_at - 1) % save_every
    assert _saved_step(Path(cfg.out)) == saved
    assert max(x["step"] for x in _lines(Path(cfg.out))) == interrupt_at - 1  # logged past the checkpoint

    monkeypatch.setattr(loop_mod, "train_step", real_step)
    result = train(cfg, resume=True)
    assert result.steps == 12 and result.samples_seen == 12 * 32
    assert _lines(Path(cfg.out)) != [] and _strip_speed(_lines(Path(cfg.out))) == _strip_speed(_lines(ref))
    want = read_tensors(ref / "checkpoint" / "model.safetensors")
    got = read_tensors(Path(cfg.out) / "checkpoint" / "model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    want_state = read_tensors(ref / "checkpoint" / "train_state.safetensors")
    got_state = read_tensors(Path(cfg.out) / "checkpoint" / "train_state.safetensors")
    assert want_state.keys() == got_state.keys()
    assert [k for k in want_state if not torch.equal(want_state[k], got_state[k])] == []  # incl. the RNG state


def _strip_speed(lines: list[dict]) -> list[dict]:
    # Throughput and clock times depend on the machine; everything else must match exactly (float ==).
    return [{k: v for k, v in x.items() if k not in TIMING_KEYS} for x in lines]


# ----------------------------------------------------------------------------- divergence
def test_nan_loss_keeps_the_last_checkpoint(shapes_data: Path, tiny_settings: dict, tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    real_loss, calls = step_mod.contrastive_loss, []

    def nan_at_six(name, out, *args, **kwargs):
        calls.append(1)
        loss = real_loss(name, out)
        return loss * float("nan") if len(calls) == 6 else loss

    monkeypatch.setattr(step_mod, "contrastive_loss", nan_at_six)
    cfg = _cfg(shapes_data, tmp_path / "run", tiny_settings, max_steps=10, save_every=4, log_every=1)
    with pytest.raises(TrainingDiverged) as info:
        train(cfg)
    message = str(info.value)
    assert "at step 6" in message and "nan" in message.lower()
    assert str(tmp_path / "run" / "checkpoint") in message and "(step 4)" in message
    assert _saved_step(tmp_path / "run") == 4
    assert max(x["step"] for x in _lines(tmp_path / "run")) == 5
    model, _, _ = coembed.load(tmp_path / "run")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nan_before_any_checkpoint(shapes_data: Path, tiny_settings: dict, tmp_path: Path,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(step_mod, "contrastive_loss", lambda name, out, *args, **kwargs: out.image_emb.sum() * float("inf"))
    with pytest.raises(TrainingDiverged, match="at step 1.*no checkpoint had been written"):
        train(_cfg(shapes_data, tmp_path / "run", tiny_settings, max_steps=3))
    assert not (tmp_path / "run" / "checkpoint").exists()


# ----------------------------------------------------------------------------- bad data
def _copy_samples(src: Path, dst: Path, n: int) -> list[dict]:
    lines = [json.loads(x) for x in (src / "captions.jsonl").read_text().splitlines()[:n]]
    for line in lines:
        (dst / line["image"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / line["image"], dst / line["image"])
    return lines


def _write_jsonl(path: Path, lines: list[dict]) -> None:
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))


def test_bad_samples_are_skipped_and_reported(shapes_data: Path, tiny_settings: dict, tmp_path: Path) -> None:
    data = tmp_path / "data"
    lines = _copy_samples(shapes_data / "train", data, 63)
    (data / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00garbage" * 20)
    lines += [{"image": "corrupt.png", "captions": ["a red circle"]},
              {"image": "gone1.png", "captions": ["a blue star"]},
              {"image": "gone2.png", "captions": ["a green square"]},
              {"image": lines[0]["image"].replace("000000", "000100"), "captions": ["   "]}]
    shutil.copy(data / lines[0]["image"], data / lines[-1]["image"])
    _write_jsonl(data / "captions.jsonl", lines)
    # 64 loadable-looking samples = 2 batches per epoch, so every epoch meets the corrupt image;
    # 3 epochs: it must still be counted once.
    result = train(_cfg(data, tmp_path / "run", tiny_settings, max_steps=6))
    assert result.steps == 6 and result.samples_seen == 6 * 32 - 3
    names = {name for name, _ in result.skipped.examples}
    assert names == {"corrupt.png", "gone1.png", "gone2.png", lines[-1]["image"]}
    assert result.skipped.total == 4
    assert result.skipped.by_reason["missing file"] == 2 and result.skipped.by_reason["empty caption"] == 1
    assert "corrupt.png" in result.skipped.summary(max_examples=4)


def test_dataset_without_usable_sample_fails_at_once(tmp_path: Path, tiny_settings: dict) -> None:
    data = tmp_path / "data"
    data.mkdir()
    Image.new("RGB", (64, 64)).save(data / "a.png")
    _write_jsonl(data / "captions.jsonl", [{"image": "a.png", "captions": [" "]}, {"image": "b.png", "caption": "x"}])
    with pytest.raises(DataError, match="no usable samples.*empty caption"):
        train(_cfg(data, tmp_path / "run", tiny_settings, max_steps=2))
    assert not (tmp_path / "run").exists()


def test_dataset_of_unreadable_images_fails(tmp_path: Path, tiny_settings: dict) -> None:
    data = tmp_path / "data"
    data.mkdir()
    for i in range(64):
        (data / f"{i}.png").write_bytes(b"not a png at all")
    _write_jsonl(data / "captions.jsonl", [{"image": f"{i}.png", "captions": [f"a red circle {i}"]} for i in range(64)])
    with pytest.raises(DataError, match="no usable training sample.*fewer than two loadable images"):
        train(_cfg(data, tmp_path / "run", tiny_settings, max_steps=50))
    assert not (tmp_path / "run" / "checkpoint").exists()


def test_an_all_skipped_final_batch_still_ends_and_saves(shapes_data: Path, tiny_settings: dict, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    real_collate, calls = loop_mod.collate_image_text, []

    def second_batch_lost(batch):
        calls.append(1)
        if len(calls) == 2:
            return ImageTextBatch(None, [], torch.zeros(0, dtype=torch.long), [SkippedSample(f"x{i}", "unreadable image: test") for i in range(32)])
        return real_collate(batch)

    monkeypatch.setattr(loop_mod, "collate_image_text", second_batch_lost)
    result = train(_cfg(shapes_data, tmp_path / "run", tiny_settings, max_steps=2, save_every=100))
    assert result.steps == 2 and result.samples_seen == 32
    assert _saved_step(tmp_path / "run") == 2
    assert result.skipped.total == 32


def test_batch_larger_than_dataset(shapes_data: Path, tiny_settings: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="batch_size 512 is larger than the 256 usable training samples"):
        train(_cfg(shapes_data, tmp_path / "run", tiny_settings, batch_size=512))


def test_missing_data_folder(tmp_path: Path, tiny_settings: dict) -> None:
    with pytest.raises(DataError, match="does not exist"):
        train(_cfg(tmp_path / "nope", tmp_path / "run", tiny_settings))
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- other objectives
@pytest.mark.parametrize(("preset", "loss"), [("tiny-siglip", "siglip"), ("tiny", "triplet")])
def test_other_losses_train(preset: str, loss: str, shapes_data: Path, tiny_settings: dict, tmp_path: Path) -> None:
    result = train(_cfg(shapes_data, tmp_path / "run", tiny_settings, preset=preset, loss=loss, max_steps=3, log_every=1))
    losses = [x["loss"] for x in _lines(tmp_path / "run") if "loss" in x]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    model, _, _ = coembed.load(result.checkpoint)
    assert (model.logit_bias is not None) == (preset == "tiny-siglip")


def test_siglip_needs_a_bias(shapes_data: Path, tiny_settings: dict, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="siglip.*logit_bias.*tiny-siglip"):
        train(_cfg(shapes_data, tmp_path / "run", tiny_settings, preset="tiny", loss="siglip", max_steps=2))


def test_cached_images_train_exactly_like_decoding(shapes_data: Path, tiny_settings: dict, tmp_path: Path) -> None:
    kw = {"max_steps": 3, "log_every": 1, "val_every": 100}
    train(_cfg(shapes_data, tmp_path / "plain", tiny_settings, **kw))
    train(_cfg(shapes_data, tmp_path / "cached", tiny_settings, cache_images=True, **kw))
    assert _strip_speed(_lines(tmp_path / "plain")) == _strip_speed(_lines(tmp_path / "cached"))
    want = read_tensors(tmp_path / "plain" / "checkpoint" / "model.safetensors")
    got = read_tensors(tmp_path / "cached" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(want[k], got[k]) for k in want)


def test_compiled_run_trains_like_the_eager_one(shapes_data: Path, tiny_settings: dict, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    # Dynamo's "eager" backend traces and guards as inductor does but runs the captured graph as is:
    # the wiring is tested here in seconds; inductor's own speed and numerics are measured in
    # benchmarks/trainer_vs_openclip.py.
    compiled, real = [], loop_mod.compile_units
    monkeypatch.setattr(loop_mod, "compile_units", lambda model: compiled.append(real(model, backend="eager")))
    kw = {"max_steps": 3, "log_every": 1, "val_every": 3}
    train(_cfg(shapes_data, tmp_path / "eager", tiny_settings, **kw))
    train(_cfg(shapes_data, tmp_path / "compiled", tiny_settings, compile=True, **kw))
    assert compiled == [2]  # the image and the text stack
    want, got = _strip_speed(_lines(tmp_path / "eager")), _strip_speed(_lines(tmp_path / "compiled"))
    assert [x.keys() for x in want] == [x.keys() for x in got]
    for a, b in zip(want, got):
        assert all(abs(a[k] - b[k]) <= 1e-5 * max(1.0, abs(a[k])) for k in a), (a, b)
    weights = read_tensors(tmp_path / "compiled" / "checkpoint" / "model.safetensors")
    assert weights.keys() == read_tensors(tmp_path / "eager" / "checkpoint" / "model.safetensors").keys()


def test_compile_covers_both_towers_paths() -> None:
    # A class-token ViT enters its stack through forward_first, the text tower through forward:
    # dynamo must capture a graph for each (a counting backend sees them).
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    model = coembed.create_model("tiny-patch").eval()
    assert loop_mod.compile_units(model, backend=backend) == 2
    with torch.no_grad():
        model.encode_image(torch.randn(2, 3, 64, 64))
        assert len(graphs) >= 1
        before = len(graphs)
        model.encode_text(torch.tensor([[1, 5, 6, 2]]))
    assert len(graphs) > before


def test_hard_negatives_train_and_need_negatives(shapes_data: Path, tiny_settings: dict, tmp_path: Path) -> None:
    result = train(_cfg(shapes_data, tmp_path / "neg", tiny_settings, hard_negatives=True, max_steps=2, log_every=1))
    assert result.steps == 2 and all(torch.isfinite(torch.tensor([x["loss"] for x in _lines(tmp_path / "neg") if "loss" in x])))
    plain = tmp_path / "plain"
    plain.mkdir()
    lines = _copy_samples(shapes_data / "train", plain, 40)
    _write_jsonl(plain / "captions.jsonl", [{k: v for k, v in x.items() if k != "negatives"} for x in lines])
    with pytest.raises(ConfigError, match="hard_negatives is on but no training sample.*'negatives'"):
        train(_cfg(plain, tmp_path / "run", tiny_settings, hard_negatives=True, max_steps=2))
    with pytest.raises(ValueError, match="hard_negatives needs loss 'clip'"):
        _cfg(shapes_data, tmp_path / "run2", tiny_settings, hard_negatives=True, loss="triplet", max_steps=2)


def test_validation_zeroshot_equals_the_eval_suite(short_run, shapes_data: Path) -> None:
    from coembed.eval.suite import evaluate

    cfg, result = short_run
    metrics = evaluate(coembed.load(result.checkpoint), shapes_data, "val").metrics
    for attribute in ("shape", "color"):
        assert result.last_val[f"val_zeroshot_{attribute}"] == pytest.approx(metrics[f"zeroshot_{attribute}"]["acc1"], abs=1e-12)


def test_accumulated_run_trains_like_the_whole_batch(shapes_data: Path, tiny_settings: dict, tmp_path: Path) -> None:
    """accum_steps splits each batch in the step only: same losses and (to float rounding) weights.
    The patch stem: the conv stem's BatchNorm normalises each micro-batch by its own statistics."""
    tiny_settings = {**tiny_settings, "model": {**tiny_settings["model"], "vision.stem": "patch"}}
    kw = {"max_steps": 3, "log_every": 1, "val_every": 100, "precision": "fp32"}
    train(_cfg(shapes_data, tmp_path / "whole", tiny_settings, **kw))
    train(_cfg(shapes_data, tmp_path / "accum", tiny_settings, accum_steps=2, **kw))
    for a, b in zip(_strip_speed(_lines(tmp_path / "whole")), _strip_speed(_lines(tmp_path / "accum")), strict=True):
        assert a["step"] == b["step"]
        for key in ("loss", "val_t2i_r1"):
            if key in a:
                assert a[key] == pytest.approx(b[key], abs=1e-4), (key, a["step"])
    want = read_tensors(tmp_path / "whole" / "checkpoint" / "model.safetensors")
    got = read_tensors(tmp_path / "accum" / "checkpoint" / "model.safetensors")
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-3, atol=1e-4, msg=k)
