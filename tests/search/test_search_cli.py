"""``coembed index / search / tag`` through the real command, and the quality check of issue 4 item 7:
on the `shapes` test split, `coembed search` finds each caption's image in its top 5 at exactly the
rate the evaluation's text->image R@5 reports (two code paths: coembed.eval and the search store)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.cli.test_cli import assert_user_error, run


@pytest.fixture
def indexed(tiny_checkpoint: Path, photo_dir: Path, tmp_path: Path) -> Path:
    db = tmp_path / "photos.db"
    proc = run("index", photo_dir, "--checkpoint", tiny_checkpoint, "--db", db, "--json", "--no-progress")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["embedded"] == 12
    return db


def test_index_progress_and_summary(tiny_checkpoint: Path, photo_dir: Path, tmp_path: Path) -> None:
    (photo_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    proc = run("index", photo_dir, "--checkpoint", tiny_checkpoint, "--db", tmp_path / "p.db", entry=True)
    assert proc.returncode == 0, proc.stderr
    assert "img/s" in proc.stderr  # the progress bar's rate
    assert "13 images found, 12 embedded" in proc.stderr and "broken.png" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("index", photo_dir, "--checkpoint", tiny_checkpoint, "--db", tmp_path / "p.db", "--json", "--no-progress")
    summary = json.loads(proc.stdout)
    assert (summary["unchanged"], summary["embedded"], summary["skipped"]) == (13, 0, 1)
    assert summary["skipped_files"][0]["path"].endswith("broken.png")


def test_search_table_and_json(indexed: Path, photo_dir: Path) -> None:
    proc = run("search", "a red circle", "--db", indexed, "--top", 3, entry=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].split() == ["rank", "score", "size", "path"] and len(lines) == 4
    assert lines[1].split()[0] == "1" and lines[1].split()[2] == "64x64"
    proc = run("search", "2:red circle", "-", "square", "--db", indexed, "--top", 5, "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["query"] == "2:red circle - square" and len(out["results"]) == 5
    scores = [r["score"] for r in out["results"]]
    assert scores == sorted(scores, reverse=True)
    assert set(out["results"][0]) == {"id", "path", "score", "width", "height"}


def test_search_by_image_finds_itself_first(indexed: Path, photo_dir: Path) -> None:
    image = sorted(photo_dir.rglob("*.png"))[4]
    proc = run("search", "--image", image, "--db", indexed, "--json", "--top", 2)
    assert proc.returncode == 0, proc.stderr
    top = json.loads(proc.stdout)["results"][0]
    assert top["path"] == str(image.resolve()) and top["score"] == pytest.approx(1.0, abs=1e-4)


def test_tag_uses_the_indexed_checkpoint(indexed: Path, photo_dir: Path) -> None:
    image = sorted(photo_dir.rglob("*.png"))[0]
    proc = run("tag", image, "--labels", "circle,square,star", "--db", indexed, "--json", "--top", 2)
    assert proc.returncode == 0, proc.stderr
    (result,) = json.loads(proc.stdout)
    assert result["image"] == str(image) and len(result["labels"]) == 2
    assert {x["label"] for x in result["labels"]} <= {"circle", "square", "star"}


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["search", "red -", "--db", "{db}"], ["ends with an operator"]),
        (["search", '"red', "--db", "{db}"], ["No closing quotation"]),
        (["search", "red", "--db", "{tmp}/none.db"], ["no search index", "none.db"]),
        (["search", "--db", "{db}"], ["give a QUERY"]),
        (["search", "red", "--db", "{db}", "--image", "{tmp}/none.png"], ["none.png", "file not found"]),
        (["index", "{tmp}/nowhere", "--checkpoint", "{ckpt}", "--db", "{tmp}/x.db"], ["nowhere", "does not exist"]),
        (["tag", "x.png", "--labels", "a,b"], ["--checkpoint", "--db"]),
    ],
)
def test_user_errors(argv: list[str], needles: list[str], indexed: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    args = [a.replace("{db}", str(indexed)).replace("{tmp}", str(tmp_path)).replace("{ckpt}", str(tiny_checkpoint)) for a in argv]
    assert_user_error(run(*args), argv[0], *needles)


def test_a_moved_checkpoint_is_named(tiny_checkpoint: Path, photo_dir: Path, tmp_path: Path) -> None:
    moved = tmp_path / "ckpt"
    shutil.copytree(tiny_checkpoint, moved)
    db = tmp_path / "m.db"
    assert run("index", photo_dir, "--checkpoint", moved, "--db", db, "--no-progress").returncode == 0
    shutil.move(moved, tmp_path / "elsewhere")
    assert_user_error(run("search", "red", "--db", db), "search", "pass --checkpoint if it moved")
    proc = run("search", "red", "--db", db, "--checkpoint", tmp_path / "elsewhere", "--json")
    assert proc.returncode == 0 and len(json.loads(proc.stdout)["results"]) == 10  # same weights: accepted


def test_search_refuses_another_checkpoint(indexed: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:
    import coembed
    from coembed.tokenizer import Tokenizer

    model, _, tokenizer = coembed.load(tiny_checkpoint)
    with __import__("torch").no_grad():
        next(model.parameters()).add_(1.0)
    coembed.save(tmp_path / "other", model, Tokenizer.from_str(tokenizer.to_str()))
    assert_user_error(run("search", "red", "--db", indexed, "--checkpoint", tmp_path / "other"), "search", "not comparable")


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, shapes_data: Path, tiny_settings: dict) -> Path:
    """The tiny test model trained long enough (100 steps) that R@5 is well above chance (5/64)."""
    from coembed.train.config import TrainConfig
    from coembed.train.loop import train

    out = tmp_path_factory.mktemp("runs") / "search-quality"
    cfg = TrainConfig(data=str(shapes_data), out=str(out), **{**tiny_settings, "max_steps": 100, "lr": 3e-3,
                                                                  "warmup_steps": 10, "cache_images": True})
    return train(cfg).checkpoint


@pytest.mark.slow
def test_search_recall_matches_evaluation(trained_checkpoint: Path, shapes_data: Path, tmp_path: Path) -> None:
    tiny_checkpoint = trained_checkpoint
    import coembed
    from coembed.data.datasets import read_samples
    from coembed.eval.features import embed_split
    from coembed.eval.retrieval import retrieval_metrics

    split = shapes_data / "test"
    samples, _ = read_samples(split)
    model, preprocess, tokenizer = coembed.load(tiny_checkpoint)
    feats = embed_split(model, tokenizer, split, samples, preprocess)
    r5 = retrieval_metrics(feats.image_emb, feats.text_emb, feats.text_to_image, ks=(5,))["image_retrieval_recall@5"]

    images = tmp_path / "images"
    shutil.copytree(split / "images", images)
    db = tmp_path / "shapes.db"
    assert run("index", images, "--checkpoint", tiny_checkpoint, "--db", db, "--no-progress").returncode == 0
    pairs = [(c, Path(s.image).name) for s in samples for c in s.captions]
    (tmp_path / "captions.txt").write_text("".join(f'"{c}"\n' for c, _ in pairs))
    proc = run("search", "--queries", tmp_path / "captions.txt", "--db", db, "--top", 5, "--json")
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == len(pairs)
    hits = sum(name in {Path(r["path"]).name for r in res["results"]} for (_, name), res in zip(pairs, results))
    print(f"search top-5 hit rate {hits / len(pairs):.4f} vs evaluation R@5 {r5:.4f} over {len(pairs)} captions")
    assert r5 > 1.5 * 5 / len(samples)  # a model that ranks, so the comparison means something
    assert hits / len(pairs) == pytest.approx(r5, abs=1e-9)
