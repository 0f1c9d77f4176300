"""The VQA answerers: the classifier's config checks and checkpoint round trip, and both kinds (the
ALBEF-based classifier and the BLIP-decoder generator) overfitting a handful of question-answer pairs
about real shapes images and then answering them through :func:`coembed.eval.vqa_answer.answer`."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import coembed
from coembed.checkpoint import save_model_files
from coembed.data.synthetic.vqa import write_vqa
from coembed.data.vqa_pairs import answer_scores, answer_vocabulary, qa_tokens, target_answer, vqa_samples
from coembed.loading import checkpoint_config, default_preprocess
from coembed.models.blip_vqa import BlipVQA, BlipVQAConfig
from coembed.models.vqa_classifier import VQAClassifier, VQAClassifierConfig
from coembed.objectives import FusionBatch
from coembed.objectives.blip_vqa import compute_losses as generative_losses
from coembed.objectives.vqa_classifier import compute_losses as classifier_losses
from coembed.eval.vqa_answer import answer, is_vqa_model
from coembed.presets import apply_overrides, get_preset
from coembed.tokenizer import Tokenizer
from coembed.transforms import load_image

SMALL_VISION = {"vision.image_size": 32, "vision.patch_size": 8, "vision.layers": 1, "vision.width": 32, "vision.heads": 2,
                "vision.stem": "patch"}
SMALL = {
    "vqa-albef-tiny": {**SMALL_VISION, "embed_dim": 32, "text.width": 32, "text.layers": 1, "text.fusion_layers": 1},
    "vqa-blip-tiny": {**SMALL_VISION, "text.width": 32, "text.layers": 2},
}
PAIRS = 12  # question-answer pairs to overfit


@pytest.fixture(scope="module")
def qa(tmp_path_factory: pytest.TempPathFactory):
    """A few shapes images with their questions: (tokenizer, images (N, 3, 32, 32), samples)."""
    from coembed.data.synthetic.shapes import ShapesConfig, generate

    root = tmp_path_factory.mktemp("vqa") / "shapes"
    generate(ShapesConfig(train=8, val=4, test=4, heldout=0, image_size=32, workers=1), root)
    write_vqa(root, questions_per_image=3, seed=0)
    samples = vqa_samples(root / "train")[:PAIRS]
    tokenizer = Tokenizer.train([t for s in vqa_samples(root / "train") for t in (s.captions[0], *s.meta["answers"])], vocab_size=300)
    return tokenizer, root / "train", samples


def _model(preset: str, tokenizer: Tokenizer, samples, **extra):
    ids = {"text.vocab_size": tokenizer.vocab_size}
    if preset == "vqa-albef-tiny":
        extra["answers"] = list(answer_vocabulary(samples))
    torch.manual_seed(0)
    cfg = apply_overrides(get_preset(preset), {**SMALL[preset], **ids, **extra})
    return (VQAClassifier if preset == "vqa-albef-tiny" else BlipVQA)(cfg)


def _images(model, root: Path, samples) -> torch.Tensor:
    preprocess = default_preprocess(model)
    return torch.stack([preprocess(load_image(root / s.image)) for s in samples])


def test_config_checks_name_the_field() -> None:
    with pytest.raises(ValueError, match="answers must not repeat"):
        VQAClassifierConfig(answers=("yes", "yes"))
    with pytest.raises(ValueError, match="answers must be a list of non-empty strings"):
        VQAClassifierConfig(answers=("yes", ""))
    with pytest.raises(ValueError, match="head_ratio"):
        VQAClassifierConfig(answers=("yes",), head_ratio=0)
    with pytest.raises(ValueError, match="answers is empty"):
        VQAClassifier(VQAClassifierConfig())
    with pytest.raises(ValueError, match="max_answer_tokens"):
        BlipVQAConfig(max_answer_tokens=0)
    assert VQAClassifierConfig(answers=["a", "b"]).answers == ("a", "b")  # JSON lists become tuples


def test_the_classifier_round_trips_through_a_checkpoint(qa, tmp_path: Path) -> None:
    tokenizer, root, samples = qa
    model = _model("vqa-albef-tiny", tokenizer, samples).eval()
    config = checkpoint_config(model, default_preprocess(model))
    save_model_files(tmp_path, model, config, tokenizer.to_str())
    loaded, _, tok = coembed.load(tmp_path)
    assert type(loaded) is VQAClassifier and loaded.cfg.answers == model.cfg.answers and is_vqa_model(loaded)
    images, questions = _images(model, root, samples[:4]), [s.captions[0] for s in samples[:4]]
    tokens = tokenizer(questions, context_length=48)
    with torch.no_grad():
        torch.testing.assert_close(loaded.answer_logits(images, tokens), model.answer_logits(images, tokens))


def _overfit(model, batch: FusionBatch, losses, steps: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss = sum(losses(model, batch, progress=0.0, weights={}, generator=torch.Generator()).values())
        loss.backward()
        optimizer.step()
    return loss.item()


@pytest.mark.parametrize("preset", ["vqa-albef-tiny", "vqa-blip-tiny"])
def test_a_tiny_answerer_overfits_a_few_pairs_and_answers_them(qa, preset: str) -> None:
    torch.set_num_threads(1)
    tokenizer, root, samples = qa
    model = _model(preset, tokenizer, samples, **({"label_smoothing": 0.0} if preset == "vqa-blip-tiny" else {}))
    images, questions = _images(model, root, samples), [s.captions[0] for s in samples]
    truth = [target_answer(s.meta["answers"]) for s in samples]
    batch = FusionBatch(images, tokenizer(questions, context_length=48), torch.arange(len(samples)))
    if preset == "vqa-albef-tiny":
        batch.answer_scores = answer_scores([s.meta["answers"] for s in samples], model.cfg.answers)
        loss = _overfit(model, batch, classifier_losses, steps=120)
    else:
        batch.qa_tokens, batch.answer_mask = qa_tokens(tokenizer, questions, truth, context_length=48)
        loss = _overfit(model, batch, generative_losses, steps=120)
    assert loss < 0.1, loss
    assert answer(model, tokenizer, images, questions) == truth
