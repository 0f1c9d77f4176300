"""Scores of generated images: prompts, CLIP score, R@1 among distractors, reference rows, report, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from coembed.data.synthetic.shapes import COLORS
from coembed.eval import generation as gen
from coembed.eval.attribute_reader import LAYOUTS


class _ColourTokenizer:
    """Texts -> (B, 8) counts of the colour words: the 'tokens' of the colour model below."""

    def __call__(self, texts: list[str], context_length: int = 8) -> torch.Tensor:
        return torch.tensor([[text.split().count(c) for c in COLORS] for text in texts], dtype=torch.float32)


class _ColourModel(nn.Module):
    """A dual encoder (and ITM model) that sees only colours: the image embedding is the fraction of
    pixels closest to each palette colour, the text embedding the colours the caption names. It
    ranks a real image's own caption above most others, and a mismatched image's not."""

    def __init__(self) -> None:
        super().__init__()
        self.palette = nn.Parameter(torch.tensor(list(COLORS.values()), dtype=torch.float32) / 255, requires_grad=False)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        pixels = images.permute(0, 2, 3, 1).reshape(images.shape[0], -1, 3)  # (B, P, 3)
        dist = torch.cdist(pixels, self.palette.expand(images.shape[0], -1, -1))  # (B, P, 8)
        close = (dist < 0.15).float() * F.one_hot(dist.argmin(-1), 8)
        emb = (close.mean(1) > 0.003).float() + 1e-3  # (B, 8)
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        emb = tokens.float().clamp(max=1) + 1e-3
        return F.normalize(emb, dim=-1) if normalize else emb

    def itm_logits(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        cos = (self.encode_image(images, True) * self.encode_text(tokens, True)).sum(-1)
        return torch.stack([-cos, cos], dim=-1) * 5


class _Signed(_ColourModel):
    """Random linear embeddings: cosines of both signs (CLIP score clips the negative ones to 0)."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w_img, self.w_txt = torch.randn(3 * 16 * 16, 4, generator=g), torch.randn(8, 4, generator=g)

    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        emb = (images.flatten(1) - 0.5) @ self.w_img
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        emb = tokens.float() @ self.w_txt
        return F.normalize(emb, dim=-1) if normalize else emb


def _preprocess(img) -> torch.Tensor:
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255).permute(2, 0, 1)


def _scorer() -> gen.Scorer:
    return gen.Scorer(_ColourModel(), _preprocess, _ColourTokenizer(), 8)


def test_select_prompts_is_a_seeded_subset_per_layout(shapes32: Path) -> None:
    prompts = gen.select_prompts(shapes32 / "test", per_layout=5, seed=3)
    assert [p.target.layout for p in prompts] == [lay for lay in LAYOUTS for _ in range(5)]
    assert prompts == gen.select_prompts(shapes32 / "test", per_layout=5, seed=3)
    assert prompts != gen.select_prompts(shapes32 / "test", per_layout=5, seed=4)
    lines = {json.loads(s)["image"]: json.loads(s) for s in (shapes32 / "test" / "captions.jsonl").read_text().splitlines()}
    for p in prompts:
        line = lines[str(p.image.relative_to(shapes32 / "test"))]
        assert p.text == line["captions"][0]
        assert p.target.objects == tuple((o["shape"], o["color"], o["size"]) for o in line["objects"])
    with pytest.raises(ValueError, match="layouts"):
        gen.select_prompts(shapes32 / "test", per_layout=5, layouts=["diagonal"])


def test_recall_at_1_and_clip_score_match_naive_loops() -> None:
    scores = torch.tensor([[0.9, 0.1, 0.2], [0.3, 0.3, 0.1], [0.1, 0.5, 0.0], [0.7, 0.6, 0.69]])
    naive = sum(all(row[0] > v for v in row[1:]) for row in scores.tolist()) / len(scores)
    assert gen.recall_at_1(scores) == pytest.approx(naive) == 0.5  # the tie in row 2 is a miss
    scorer = gen.Scorer(_Signed(), _preprocess, _ColourTokenizer(), 8)
    images = torch.rand(5, 3, 16, 16)
    texts = ["a red circle", "a blue star and a red ring", "green red", "a cyan cross", "pink pink"]
    got = gen.clip_score(scorer, images, texts)
    x = scorer.images(images)
    assert (got == 0).any() and (got > 0).any()  # both sides of the clip are exercised
    for i in range(5):
        cos = F.cosine_similarity(scorer.model.encode_image(x[i : i + 1]), scorer.model.encode_text(scorer.tokens([texts[i]])))
        assert got[i] == pytest.approx(100 * max(float(cos), 0.0), abs=1e-4)


def test_distractors_and_shuffled_pairing(shapes32: Path) -> None:
    prompts = gen.select_prompts(shapes32 / "test", per_layout=4)
    pool = gen.canonical_captions(shapes32 / "test")
    sets = gen.distractor_sets(prompts, pool, 20, seed=0)
    for p, row in zip(prompts, sets):
        assert row[0] == p.text and len(set(row)) == 21 and p.text not in row[1:]
    pairing = gen.shuffled_pairing(prompts)
    assert all(j != i and prompts[j].target.layout == prompts[i].target.layout for i, j in enumerate(pairing))
    with pytest.raises(ValueError, match="distractors"):
        gen.distractor_sets(prompts, pool, len(pool), seed=0)


def test_real_images_score_above_mismatched_and_noise(shapes32: Path, trained_reader) -> None:
    prompts = gen.select_prompts(shapes32 / "test", per_layout=25)
    evaluation = gen.GenerationEval(prompts, gen.canonical_captions(shapes32 / "test"), trained_reader, _scorer(),
                                    fusion=_scorer(), distractors=20)
    real_images = gen.load_images([p.image for p in prompts])
    results, generated = evaluation.run(lambda texts, seed: real_images.clone())  # a generator that draws perfectly
    assert torch.equal(generated, real_images)
    real, shuffled, noise = results["real"], results["shuffled"], results["noise"]
    assert results["generated"] == real
    for floor in (shuffled, noise):
        assert real["clip_score"] > floor["clip_score"] + 10
        assert real["r1_dual"] > floor["r1_dual"] + 0.2
        assert real["r1_itm"] > floor["r1_itm"] + 0.2
        # The test reader (300 steps) reads positions and sizes; shape and colour need its full training.
        assert real["attributes"]["single"]["position"] > floor["attributes"]["single"]["position"] + 0.4
        assert real["attributes"]["overall"]["size"] > floor["attributes"]["overall"]["size"] + 0.15
    assert real["single_shape_color"] == real["attributes"]["single"]["shape_color"]
    table = gen.summary_table(results)
    assert "single_shape_color" in table and "shuffled" in table
    with pytest.raises(ValueError, match="generator must return"):
        evaluation.run(lambda texts, seed: real_images[:3])


def test_grid_png(shapes32: Path, trained_reader, tmp_path: Path) -> None:
    from PIL import Image

    prompts = gen.select_prompts(shapes32 / "test", per_layout=2)
    images = gen.load_images([p.image for p in prompts])
    out = gen.plot_generation_grid(prompts, images, trained_reader, tmp_path / "grid.png", columns=4)
    with Image.open(out) as img:
        assert img.size[0] > 400 and img.size[1] > 300


def test_cli_eval_generation(shapes32: Path, trained_reader, tiny_checkpoint: Path, tmp_path: Path,
                             monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from coembed.cli import eval_generation
    from coembed.cli.main import main
    from coembed.eval.attribute_reader import save_reader

    reader = save_reader(trained_reader, tmp_path / "reader")
    seen = {}

    def fake_generator(loaded, args):
        seen["steps"], seen["guidance"] = args.steps, args.guidance
        return lambda texts, seed: torch.rand(len(texts), 3, 32, 32, generator=torch.Generator().manual_seed(seed))

    monkeypatch.setattr(eval_generation, "make_generator", fake_generator)
    argv = ["eval", "--task", "generation", "--checkpoint", str(tiny_checkpoint), "--data", str(shapes32),
            "--scorer", str(tiny_checkpoint), "--fusion", str(tiny_checkpoint), "--reader", str(reader)]
    assert main(argv) == 2  # the tiny dual encoder has no ITM head
    assert "--fusion" in capsys.readouterr().err
    assert main(argv[:-4] + ["--reader", str(reader), "--prompts-per-layout", "3", "--distractors", "10", "--steps", "7",
                             "--out", str(tmp_path / "r.json"), "--grid", str(tmp_path / "g.png")]) == 0
    assert seen == {"steps": 7, "guidance": 3.0}
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["task"] == "generation" and set(record["metrics"]) == {"generated", "real", "shuffled", "noise"}
    assert len(record["settings"]["prompts"]) == 12 and (tmp_path / "g.png").is_file()
    assert "generated" in capsys.readouterr().out
    assert main(argv[:-6]) == 2  # no --scorer
    assert "--scorer" in capsys.readouterr().err
