"""The trainer's path for fusion families, driven by a toy family this module registers.

The toy family (a one-layer ViT plus a bag of token embeddings, ITM and MLM heads) is not a model
anyone would train; it exercises the contract every fusion family meets: a config class, a model
with ``itm_logits``, and an objective module with ``compute_losses``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pytest
import torch
from torch import nn

import coembed
from coembed import presets
from coembed.errors import ConfigError
from coembed.losses.matching import itm_loss, mask_tokens, mlm_loss, sample_itm_negatives
from coembed.models.families import FAMILIES, OBJECTIVES
from coembed.objectives import FusionBatch
from coembed.towers.vit import VisionConfig, VisionTransformer
from coembed.train.config import TrainConfig
from coembed.train.fusion_step import step_generator, weighted_total
from coembed.train.loop import TIMING_KEYS, train
from tests.helpers import VQA_SMALL, assert_same_runs, interrupt_then_resume


# ----------------------------------------------------------------------------- the toy family
@dataclass(kw_only=True)
class ToyText:
    vocab_size: int = 64
    pad_id: int = 0
    eot_id: int = 2
    mask_id: int = 4
    context_length: int = 32


@dataclass(kw_only=True)
class ToyConfig:
    width: int = 32
    vision: VisionConfig = field(default_factory=lambda: VisionConfig(image_size=64, patch_size=16, width=32, layers=1, heads=2))
    text: ToyText = field(default_factory=ToyText)

    def __post_init__(self) -> None:
        self.vision = VisionConfig(**self.vision) if isinstance(self.vision, dict) else self.vision
        self.text = ToyText(**self.text) if isinstance(self.text, dict) else self.text

    def to_dict(self) -> dict:
        return {"family": "toy", **asdict(self)}


class ToyFusion(nn.Module):
    config_class = ToyConfig

    def __init__(self, cfg: ToyConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTransformer(cfg.vision, cfg.width)
        self.token_embedding = nn.Embedding(cfg.text.vocab_size, cfg.width)
        self.itm_head = nn.Linear(cfg.width, 2)
        self.mlm_head = nn.Linear(cfg.width, cfg.text.vocab_size)

    def _text(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, T, W)
        return self.token_embedding(tokens) * (tokens != self.cfg.text.pad_id).unsqueeze(-1)

    def itm_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.itm_head(self.visual(images) * self._text(tokens).mean(dim=1))

    def mlm_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlm_head(self._text(tokens) + self.visual(images).unsqueeze(1))


def compute_losses(model: ToyFusion, batch: FusionBatch, *, progress: float, weights: dict, generator: torch.Generator) -> dict:
    img, txt = model.visual(batch.images), model._text(batch.tokens).mean(dim=1)
    sim = img @ txt.T
    neg_image, neg_text = sample_itm_negatives(sim, sim.T, batch.image_ids, generator=generator)
    images = torch.cat([batch.images, batch.images[neg_image], batch.images])
    tokens = torch.cat([batch.tokens, batch.tokens, batch.tokens[neg_text]])
    labels = torch.cat([torch.ones(len(batch.tokens)), torch.zeros(2 * len(batch.tokens))]).long()
    inputs, mlm_labels = mask_tokens(batch.tokens, mask_id=4, vocab_size=model.cfg.text.vocab_size, special_ids=range(5),
                                     generator=generator)
    return {"itm": itm_loss(model.itm_logits(images, tokens), labels),
            "mlm": mlm_loss(model.mlm_logits(batch.images, inputs), mlm_labels)}


@pytest.fixture
def toy_family(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(FAMILIES, "toy", f"{__name__}:ToyFusion")
    monkeypatch.setitem(OBJECTIVES, "toy", __name__)
    monkeypatch.setitem(presets._PRESETS, "toy", ToyConfig)
    return "toy"


def _cfg(data: Path, out: Path, **kw) -> TrainConfig:
    settings = {"preset": "toy", "batch_size": 32, "max_steps": 8, "log_every": 1, "val_every": 4, "save_every": 4, "workers": 0,
                "precision": "fp32", "progress": False, "lr": 2e-3, "warmup_steps": 2, "loss_weights": {"mlm": 0.5}}
    return TrainConfig(data=str(data), out=str(out), **{**settings, **kw})


def _lines(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k not in TIMING_KEYS} for x in (run / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------- tests
def test_weighted_total_weights_each_term_and_names_unknown_weights() -> None:
    terms = {"itm": torch.tensor(2.0), "mlm": torch.tensor(3.0)}
    assert weighted_total(terms, {"mlm": 0.5}).item() == 3.5
    with pytest.raises(ConfigError, match="loss_weights name.*'?itc"):
        weighted_total(terms, {"itc": 1.0})
    # a term switched off by a zero weight may be left out by the objective (ALBEF skips MLM at weight 0)
    assert weighted_total(terms, {"itc": 0.0}).item() == 5.0


def test_albef_trains_with_mlm_switched_off(shapes_data: Path, tmp_path: Path, tiny_settings: dict) -> None:
    out = tmp_path / "run"
    train(TrainConfig(data=str(shapes_data), out=str(out), **{**tiny_settings, "preset": "albef-tiny", "model": dict(VQA_SMALL["vqa-albef-tiny"])},
                      loss_weights={"mlm": 0.0}, max_steps=2, log_every=1, val_samples=0, warmup_steps=1))
    steps = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert len(steps) == 2 and all("loss_mlm" not in x and "loss_itm" in x for x in steps)


def test_step_generator_depends_on_seed_and_step_only() -> None:
    draw = lambda seed, step: torch.rand(3, generator=step_generator(seed, step))  # noqa: E731
    assert torch.equal(draw(0, 5), draw(0, 5))
    assert not torch.equal(draw(0, 5), draw(0, 6)) and not torch.equal(draw(0, 5), draw(1, 5))


def test_fusion_family_trains_logs_terms_validates_and_loads(toy_family: str, shapes_data: Path, tmp_path: Path) -> None:
    result = train(_cfg(shapes_data, tmp_path / "run"))
    lines = _lines(tmp_path / "run")
    steps = [x for x in lines if "loss" in x]
    assert len(steps) == 8 and all({"loss_itm", "loss_mlm"} <= x.keys() and "logit_scale" not in x for x in steps)
    for x in steps:  # the logged loss is the weighted sum of the logged terms
        assert x["loss"] == pytest.approx(x["loss_itm"] + 0.5 * x["loss_mlm"], rel=1e-6)
    vals = [x for x in lines if "val_itm_pair_acc" in x]
    assert [x["step"] for x in vals] == [4, 8] and all(0.0 <= x["val_itm_pair_acc"] <= 1.0 for x in vals)
    model, preprocess, tokenizer = coembed.load(result.checkpoint)
    assert isinstance(model, ToyFusion) and model.cfg.text.vocab_size == tokenizer.vocab_size  # the tokenizer's ids reached the config
    images = torch.zeros(2, 3, preprocess.image_size, preprocess.image_size)
    assert model.itm_logits(images, tokenizer(["a red circle", "a blue star"], context_length=32)).shape == (2, 2)


def test_fusion_resume_reproduces_the_uninterrupted_run(toy_family: str, shapes_data: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    train(_cfg(shapes_data, tmp_path / "ref"))
    interrupt_then_resume(_cfg(shapes_data, tmp_path / "b"), 7, monkeypatch)
    assert_same_runs(tmp_path / "ref", tmp_path / "b")


def test_a_weight_for_a_term_the_objective_lacks_is_a_config_error(toy_family: str, shapes_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="loss_weights name.*itc.*computes itm, mlm"):
        train(_cfg(shapes_data, tmp_path / "run", loss_weights={"itc": 1.0}))
