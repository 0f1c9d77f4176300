"""Captioning a split and scoring it (``coembed eval --task captioning``): each image gets the caption the
decoder gives it alone, the scores equal pycocoevalcap's on the written captions, ``exact`` and
``distinct`` count what they say, unreadable images are named and not scored, and a checkpoint without a
captioning head is a one-line error."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import coembed
from coembed.cli.main import main
from coembed.data.datasets import Sample, read_samples
from coembed.eval.caption_split import evaluate_captioning, score_captions
from coembed.eval.captioning import tokenize
from coembed.generation import caption
from coembed.transforms import load_image
from tests.helpers import train_small_captioner

pycoco_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
pycoco_cider = pytest.importorskip("pycocoevalcap.cider.cider")

IMAGES = 12


@pytest.fixture(scope="module")
def coca_run(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_captioner(shapes_data, tmp_path_factory.mktemp("runs") / "coca", "coca-tiny", 4)


def _pycoco(predictions: list[dict]) -> tuple[list[float], float]:
    refs = {i: [tokenize(r) for r in p["references"]] for i, p in enumerate(predictions)}
    cands = {i: [tokenize(p["caption"])] for i, p in enumerate(predictions)}
    bleus, _ = pycoco_bleu.Bleu(4).compute_score(refs, cands, verbose=0)
    cider, _ = pycoco_cider.Cider().compute_score(refs, cands)
    return [float(b) for b in bleus], float(cider)


def test_each_image_gets_its_own_caption_and_pycocoevalcap_scores(coca_run: Path, shapes_data: Path) -> None:
    model, preprocess, tokenizer = coembed.load(coca_run)
    root = shapes_data / "test"
    samples = read_samples(root)[0][:IMAGES]
    result = evaluate_captioning(model, tokenizer, root, samples, batch_size=5, max_length=20)  # 3 batches
    assert [p["image"] for p in result.predictions] == [s.image for s in samples]
    for k in (0, 7, 11):  # decoded alone, the image gets the same caption as in its batch
        alone = caption(model, preprocess(load_image(root / samples[k].image))[None], tokenizer, max_length=20)
        assert result.predictions[k]["caption"] == alone[0]
        assert result.predictions[k]["references"] == list(samples[k].captions)
    bleus, cider = _pycoco(result.predictions)
    assert [result.metrics[f"bleu{n}"] for n in (1, 2, 3, 4)] == pytest.approx(bleus, abs=1e-9)
    assert result.metrics["cider"] == pytest.approx(cider, abs=1e-9)
    assert result.metrics["images"] == IMAGES and result.skipped == []


def test_exact_and_distinct_count_repeats() -> None:
    samples = [Sample(f"{i}.png", (f"a red circle number {i}", f"a circle {i}"), {}) for i in range(4)]
    captions = {0: "A red circle, number 0.", 1: "a circle 0", 2: "a circle 0", 3: "a circle 3"}
    metrics, records = score_captions(samples, captions)
    assert metrics["exact"] == pytest.approx(2 / 4)  # images 0 (after tokenisation) and 3
    assert metrics["distinct"] == pytest.approx(3 / 4)  # "a circle 0" twice
    assert [r["image"] for r in records] == ["0.png", "1.png", "2.png", "3.png"]
    with pytest.raises(ValueError, match="no caption to score"):
        score_captions(samples, {})


def test_cli_json_out_and_predictions_follow_the_library(coca_run: Path, shapes_data: Path, tmp_path: Path, capsys) -> None:
    out, preds = tmp_path / "eval.json", tmp_path / "preds.jsonl"
    argv = ["eval", "--task", "captioning", "--checkpoint", str(coca_run), "--data", str(shapes_data), "--max-images", "6",
            "--method", "beam", "--num-beams", "2", "--max-length", "16", "--json", "--out", str(out), "--predictions", str(preds)]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    model, _, tokenizer = coembed.load(coca_run)
    root = shapes_data / "test"
    want = evaluate_captioning(model, tokenizer, root, read_samples(root)[0][:6], method="beam", num_beams=2, max_length=16)
    assert printed["metrics"] == pytest.approx(want.metrics)
    assert printed["decoding"] == {"method": "beam", "num_beams": 2, "max_length": 16}
    record = json.loads(out.read_text())
    assert record["task"] == "captioning" and record["metrics"] == pytest.approx(want.metrics)
    lines = [json.loads(line) for line in preds.read_text().splitlines()]
    assert lines == want.predictions


def test_unreadable_images_are_named_and_not_scored(coca_run: Path, shapes_data: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"
    shutil.copytree(shapes_data / "test", data / "test")
    samples = read_samples(data / "test")[0][:4]
    (data / "test" / samples[1].image).write_bytes(b"not a png")
    argv = ["eval", "--task", "captioning", "--checkpoint", str(coca_run), "--data", str(data), "--max-images", "4", "--json"]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["metrics"]["images"] == 3
    assert samples[1].image in captured.err and "skipped" in captured.err


def test_a_model_without_a_captioning_head_is_a_one_line_error(tiny_checkpoint: Path, shapes_data: Path, capsys) -> None:
    argv = ["eval", "--task", "captioning", "--checkpoint", str(tiny_checkpoint), "--data", str(shapes_data)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no captioning head" in err[0] and str(tiny_checkpoint) in err[0]


def test_a_max_length_beyond_the_model_is_a_one_line_error(coca_run: Path, shapes_data: Path, capsys) -> None:
    argv = ["eval", "--task", "captioning", "--checkpoint", str(coca_run), "--data", str(shapes_data), "--max-length", "999"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "max_length" in err[0]



def test_a_bridge_to_a_gpt2_lm_needs_and_takes_a_prompt(shapes_data: Path, tmp_path: Path, capsys) -> None:
    from coembed.interop.hf_tokenizer import read_hf_tokenizer
    from coembed.loading import save
    from coembed.models.causal_lm import LMConfig
    from coembed.models.llava import Llava, LlavaConfig
    from tests.models.bridge_helpers import TINY_VISION, add_word_tokenizer, gpt2_folder

    folder = gpt2_folder(tmp_path, positions=40)
    add_word_tokenizer(folder)
    torch.manual_seed(0)
    save(tmp_path / "llava", Llava(LlavaConfig(lm=LMConfig(path=str(folder)), vision=TINY_VISION, context_length=12)),
         read_hf_tokenizer(folder))
    capsys.readouterr()  # transformers' save progress
    argv = ["eval", "--task", "captioning", "--checkpoint", str(tmp_path / "llava"), "--data", str(shapes_data), "--max-images", "3",
            "--max-length", "8", "--json"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prompt is required" in err[0]
    assert main([*argv, "--prompt", "a big"]) == 0
    printed = json.loads(capsys.readouterr().out)
    model, _, tokenizer = coembed.load(tmp_path / "llava")
    root = shapes_data / "test"
    want = evaluate_captioning(model, tokenizer, root, read_samples(root)[0][:3], max_length=8, prompt="a big")
    assert printed["decoding"]["prompt"] == "a big" and printed["metrics"] == pytest.approx(want.metrics)
    assert all(p["caption"].startswith("a big") for p in want.predictions)
