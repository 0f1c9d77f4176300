"""The full evaluation of a tiny trained checkpoint on `shapes`, checked against naive recomputation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import coembed
from coembed.data.datasets import Sample
from coembed.errors import DataError
from coembed.eval.retrieval import retrieval_metrics
from coembed.eval.suite import evaluate, single_object_labels

RECALL_KEYS = {f"{kind}_retrieval_recall@{k}" for kind in ("image", "text") for k in (1, 5, 10)}


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module")
def loaded(tiny_checkpoint: Path):
    return coembed.load(tiny_checkpoint)


@pytest.fixture(scope="module")
def result(loaded, shapes_data: Path):
    return evaluate(loaded, shapes_data, "test")


@pytest.fixture(scope="module")
def naive(loaded, shapes_data: Path):
    """Every test image and caption embedded one at a time, straight from the files."""
    model, preprocess, tokenizer = loaded
    lines = _lines(shapes_data / "test" / "captions.jsonl")
    with torch.no_grad():
        images = torch.cat([model.encode_image(preprocess(Image.open(shapes_data / "test" / x["image"]).convert("RGB"))[None])
                            for x in lines])
        texts = [c for x in lines for c in x["captions"]]
        text_emb = torch.cat([model.encode_text(tokenizer([t])) for t in texts])
    owner = torch.tensor([i for i, x in enumerate(lines) for _ in x["captions"]])
    return lines, F.normalize(images, dim=-1), F.normalize(text_emb, dim=-1), owner


def _encode_texts(loaded, texts: list[str]) -> torch.Tensor:
    model, _, tokenizer = loaded
    with torch.no_grad():
        return F.normalize(torch.cat([model.encode_text(tokenizer([t])) for t in texts]), dim=-1)


def test_task_keys(result) -> None:
    m = result.metrics
    assert set(m) == {"retrieval", "zeroshot_shape", "zeroshot_color", "linear_probe", "compositional"}
    assert {k for k in m["retrieval"] if "recall" in k} == RECALL_KEYS  # CLIP_benchmark's names
    assert set(m["retrieval"]) - RECALL_KEYS == {"n_images", "n_texts"}
    assert set(m["compositional"]) == {"hard_negatives", "winoground", "heldout"}  # cosine-scored for a dual encoder
    assert set(m["linear_probe"]) == {"shape", "color"}
    assert result.notes == [] and result.seconds > 0


def test_retrieval_equals_naive_recomputation(result, naive) -> None:
    lines, image_emb, text_emb, owner = naive
    torch.testing.assert_close(result.features.image_emb, image_emb, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(result.features.text_emb, text_emb, atol=1e-5, rtol=1e-5)
    want = retrieval_metrics(image_emb, text_emb, owner)
    got = result.metrics["retrieval"]
    assert {k: got[k] for k in RECALL_KEYS} == pytest.approx(want, abs=1e-12)
    assert got["n_images"] == len(lines) == 64 and got["n_texts"] == len(owner)


def test_retrieval_is_not_trivial(result) -> None:
    # Guards the comparison above: the metric values are not all 0 or all 1.
    values = [result.metrics["retrieval"][k] for k in RECALL_KEYS]
    assert 0 < min(values) and min(values) < 1


@pytest.mark.parametrize("attribute", ["shape", "color"])
def test_zeroshot_against_naive(attribute: str, result, naive, loaded, shapes_data: Path) -> None:
    lines, image_emb, _, _ = naive
    meta = json.loads((shapes_data / "meta.json").read_text())
    classnames, templates = meta[f"{attribute}s"], meta["zeroshot_templates"][attribute]
    rows = [i for i, x in enumerate(lines) if len(x["objects"]) == 1]
    labels = torch.tensor([classnames.index(lines[i]["objects"][0][attribute]) for i in rows])
    classes = torch.stack([F.normalize(_encode_texts(loaded, [t.replace("{}", c) for t in templates]).mean(0), dim=0)
                           for c in classnames])
    pred = (image_emb[rows] @ classes.T).argmax(1)
    task = result.metrics[f"zeroshot_{attribute}"]
    assert task["n"] == len(rows) > 0
    assert task["acc1"] == pytest.approx((pred == labels).sum().item() / len(rows), abs=1e-12)
    recalls = [(pred[labels == c] == c).sum().item() / (labels == c).sum().item() for c in labels.unique()]
    assert task["mean_per_class_recall"] == pytest.approx(sum(recalls) / len(recalls), abs=1e-9)
    assert task["acc1"] <= task["acc5"] <= 1


def test_linear_probe(result) -> None:
    for attribute in ("shape", "color"):
        probe = result.metrics["linear_probe"][attribute]
        assert 0 <= probe["acc1"] <= 1 and 0 <= probe["mean_per_class_recall"] <= 1 and probe["C"] > 0


def test_hard_negatives_against_naive(result, naive, loaded, shapes_data: Path) -> None:
    lines, image_emb, _, _ = naive
    row_of = {x["image"]: i for i, x in enumerate(lines)}
    items = _lines(shapes_data / "test" / "hard_negatives.jsonl")
    wins, image_wins = [], []
    for item in items:
        img = image_emb[row_of[item["image"]]]
        pos = img @ _encode_texts(loaded, [item["positive"]])[0]
        won = [(pos > img @ neg).item() for neg in _encode_texts(loaded, [n["caption"] for n in item["negatives"]])]
        wins += won
        image_wins.append(all(won))
    hard = result.metrics["compositional"]["hard_negatives"]
    assert hard["n_images"] == len(items) and hard["n_negatives"] == len(wins)
    assert hard["pair_accuracy"] == pytest.approx(sum(wins) / len(wins), abs=1e-9)
    assert hard["image_accuracy"] == pytest.approx(sum(image_wins) / len(image_wins), abs=1e-9)
    assert set(hard["by_type"]) == {n["type"] for item in items for n in item["negatives"]}


def test_heldout_split(result, shapes_data: Path) -> None:
    heldout = result.metrics["compositional"]["heldout"]
    assert heldout["n_images"] == 32
    assert RECALL_KEYS <= set(heldout) and all(0 <= heldout[k] <= 1 for k in RECALL_KEYS)
    assert "hard_negatives" not in heldout  # the heldout split has none


def test_metrics_are_json(result) -> None:
    text = json.dumps(result.metrics, allow_nan=False)
    assert json.loads(text) == result.metrics


def test_val_split_has_no_compositional_tasks(loaded, shapes_data: Path) -> None:
    m = evaluate(loaded, shapes_data, "val").metrics
    assert "compositional" not in m and m["retrieval"]["n_images"] == 64
    assert m["zeroshot_shape"]["n"] == sum(len(x["objects"]) == 1 for x in _lines(shapes_data / "val" / "captions.jsonl"))


def test_plain_folder_gets_retrieval_only(loaded, shapes_data: Path, tmp_path: Path) -> None:
    lines = _lines(shapes_data / "test" / "captions.jsonl")[:10]
    for x in lines:
        (tmp_path / x["image"]).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / x["image"]).write_bytes((shapes_data / "test" / x["image"]).read_bytes())
    (tmp_path / "captions.jsonl").write_text("".join(json.dumps({"image": x["image"], "captions": x["captions"][:2]}) + "\n"
                                                     for x in lines))
    (tmp_path / "broken.png").write_bytes(b"nope")
    with (tmp_path / "captions.jsonl").open("a") as f:
        f.write(json.dumps({"image": "broken.png", "caption": "a thing"}) + "\n")
    logs: list[str] = []
    res = evaluate(loaded, tmp_path, "train", log=logs.append)
    assert set(res.metrics) == {"retrieval"}
    assert res.metrics["retrieval"]["n_images"] == 10 and res.metrics["retrieval"]["n_texts"] == 20
    assert len(res.notes) == 1 and "broken.png" in res.notes[0] and logs


def test_missing_split(loaded, tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no 'test' split"):
        evaluate(loaded, tmp_path, "test")


def test_single_object_labels() -> None:
    samples = [
        Sample("a.png", ("x",), {"objects": [{"shape": "star", "color": "red"}]}),
        Sample("b.png", ("x",), {"objects": [{"shape": "star"}, {"shape": "ring"}]}),
        Sample("c.png", ("x",), {}),
        Sample("d.png", ("x",), {"objects": [{"shape": "ring", "color": "blue"}]}),
        Sample("e.png", ("x",), {"objects": [{"shape": "blob", "color": "blue"}]}),
    ]
    assert single_object_labels(samples, "shape", ["ring", "star"]) == ([0, 3], [1, 0])
    assert single_object_labels(samples, "color", ["blue"]) == ([3, 4], [0, 0])
