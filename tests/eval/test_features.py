"""Embedding a split: batched embeddings against one-at-a-time ones, skips and caption ownership."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from coembed.data.datasets import Sample, read_samples
from coembed.eval.features import embed_images, embed_split, embed_texts
from coembed.loading import default_preprocess
from coembed.presets import create_model
from coembed.tokenizer import Tokenizer

TINY = {"vision__layers": 1, "text__layers": 1, "vision__width": 64, "vision__heads": 2, "text__width": 64,
        "text__heads": 2, "embed_dim": 32}


@pytest.fixture(scope="module")
def model_and_tokenizer(shapes_data: Path):
    samples, _ = read_samples(shapes_data / "train")
    tokenizer = Tokenizer.train((c for s in samples for c in s.captions), vocab_size=512)
    torch.manual_seed(0)
    model = create_model("tiny", **TINY, text__vocab_size=tokenizer.vocab_size).eval()
    return model, tokenizer


@pytest.fixture
def folder(shapes_data: Path, tmp_path: Path) -> tuple[Path, list[Sample]]:
    """Seven test images, the fourth replaced by a corrupt file."""
    samples, _ = read_samples(shapes_data / "test")
    samples = samples[:7]
    for s in samples:
        (tmp_path / s.image).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shapes_data / "test" / s.image, tmp_path / s.image)
    (tmp_path / samples[3].image).write_bytes(b"broken")
    return tmp_path, samples


@torch.no_grad()
def naive_image(model, path: Path) -> torch.Tensor:
    x = default_preprocess(model)(Image.open(path).convert("RGB")).unsqueeze(0)
    return F.normalize(model.encode_image(x), dim=-1)[0]


@torch.no_grad()
def naive_text(model, tokenizer, text: str) -> torch.Tensor:
    return F.normalize(model.encode_text(tokenizer([text])), dim=-1)[0]


def test_embed_texts_matches_one_at_a_time(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    texts = ["a red circle", "two blue squares left of a star", "x", "a small green triangle above a big circle", "a"]
    got = embed_texts(model, tokenizer, texts, batch_size=2)  # padding lengths differ between chunks
    assert got.shape == (5, 32) and got.dtype == torch.float32
    want = torch.stack([naive_text(model, tokenizer, t) for t in texts])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(5))


def test_embed_texts_of_nothing(model_and_tokenizer) -> None:
    model, tokenizer = model_and_tokenizer
    assert embed_texts(model, tokenizer, []).shape == (0, 32)


def test_embed_images_skips_and_matches_one_at_a_time(model_and_tokenizer, folder) -> None:
    model, _ = model_and_tokenizer
    root, samples = folder
    seen = []
    emb, kept, report = embed_images(model, root, [s.image for s in samples], default_preprocess(model), batch_size=3,
                                     on_batch=seen.append)
    assert kept == [0, 1, 2, 4, 5, 6]
    assert report.total == 1 and report.examples[0][0] == samples[3].image
    assert sum(seen) == 7  # progress counts skipped images too
    want = torch.stack([naive_image(model, root / samples[i].image) for i in kept])
    torch.testing.assert_close(emb, want, atol=1e-5, rtol=1e-5)


def test_embed_images_all_bad(model_and_tokenizer, tmp_path: Path) -> None:
    model, _ = model_and_tokenizer
    (tmp_path / "a.png").write_bytes(b"")
    emb, kept, report = embed_images(model, tmp_path, ["a.png", "missing.png"], default_preprocess(model))
    assert emb.shape == (0, 32) and kept == [] and report.total == 2


def test_embed_split_owners_follow_the_loaded_samples(model_and_tokenizer, folder) -> None:
    model, tokenizer = model_and_tokenizer
    root, samples = folder
    feats = embed_split(model, tokenizer, root, samples, default_preprocess(model), batch_size=4)
    loaded = [s for i, s in enumerate(samples) if i != 3]
    assert feats.samples == loaded and feats.skipped.total == 1
    texts = [(row, c) for row, s in enumerate(loaded) for c in s.captions]
    assert feats.text_to_image.tolist() == [row for row, _ in texts]
    assert feats.text_emb.shape == (len(texts), 32) and feats.image_emb.shape == (6, 32)
    for j in (0, len(texts) // 2, len(texts) - 1):
        torch.testing.assert_close(feats.text_emb[j], naive_text(model, tokenizer, texts[j][1]), atol=1e-5, rtol=1e-5)
    for row, s in enumerate(loaded):
        torch.testing.assert_close(feats.image_emb[row], naive_image(model, root / s.image), atol=1e-5, rtol=1e-5)


def test_embed_split_keeps_multiple_captions(model_and_tokenizer, folder) -> None:
    model, tokenizer = model_and_tokenizer
    root, samples = folder
    two = [Sample(samples[0].image, ("a", "b", "c")), Sample(samples[1].image, ("d",))]
    feats = embed_split(model, tokenizer, root, two, default_preprocess(model))
    assert feats.text_to_image.tolist() == [0, 0, 0, 1]
