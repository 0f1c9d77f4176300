"""`coembed eval --task vqa`: the per-type table and JSON record of both answerer kinds equal the
library's VQA accuracy on the split, and a checkpoint that is not a VQA model or a split without
vqa.jsonl is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import coembed
from coembed.cli.main import main
from coembed.data.vqa_pairs import vqa_samples
from coembed.eval.vqa_answer import vqa_split_accuracy
from coembed.train.config import TrainConfig
from coembed.train.loop import train
from tests.helpers import VQA_SMALL, copy_with_vqa

SMALL = VQA_SMALL


@pytest.fixture(scope="module")
def vqa_data(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_with_vqa(shapes_data, tmp_path_factory.mktemp("vqa") / "shapes", questions_per_image=2)


@pytest.fixture(scope="module")
def runs(vqa_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Both presets trained 4 steps on ``vqa_data``."""
    out = {}
    for preset in SMALL:
        folder = tmp_path_factory.mktemp("runs") / preset
        train(TrainConfig(data=str(vqa_data), out=str(folder), preset=preset, model=dict(SMALL[preset]), task="vqa", batch_size=16,
                          max_steps=4, val_samples=0, workers=0, precision="fp32", progress=False, warmup_steps=1, vocab_size=300))
        out[preset] = folder
    return out


@pytest.mark.parametrize("preset", list(SMALL))
def test_table_and_json_are_the_library_accuracy(runs: dict[str, Path], vqa_data: Path, tmp_path: Path, preset: str, capsys) -> None:
    model, _, tokenizer = coembed.load(runs[preset])
    want, _ = vqa_split_accuracy(model, tokenizer, vqa_data / "test", vqa_samples(vqa_data / "test"))
    assert main(["eval", "--task", "vqa", "--checkpoint", str(runs[preset]), "--data", str(vqa_data)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["type", "n", "accuracy"] and table[-1].split()[0] == "overall"
    assert float(table[-1].split()[-1]) == pytest.approx(100 * want.overall, abs=0.006)
    assert {row.split()[0] for row in table[1:-1]} == set(want.per_type)
    out = tmp_path / "vqa.json"
    assert main(["eval", "--task", "vqa", "--checkpoint", str(runs[preset]), "--data", str(vqa_data), "--json", "--out", str(out)]) == 0
    printed, written = json.loads(capsys.readouterr().out), json.loads(out.read_text())
    assert written["task"] == "vqa" and written["split"] == "test" and written["metrics"] == printed["metrics"]
    assert printed["metrics"]["vqa_accuracy"] == pytest.approx(want.overall)
    assert printed["metrics"]["questions_per_type"] == want.counts


def test_a_model_that_is_not_a_vqa_model_is_a_one_line_error(tiny_checkpoint: Path, vqa_data: Path, capsys) -> None:
    assert main(["eval", "--task", "vqa", "--checkpoint", str(tiny_checkpoint), "--data", str(vqa_data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is a dual_encoder model, not a VQA model" in err[0] and "vqa-albef-tiny" in err[0]


def test_a_split_without_questions_is_a_one_line_error(runs: dict[str, Path], shapes_data: Path, capsys) -> None:
    assert main(["eval", "--task", "vqa", "--checkpoint", str(runs["vqa-blip-tiny"]), "--data", str(shapes_data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "test/vqa.jsonl does not exist" in err[0] and "coembed data vqa" in err[0]
