"""`coembed data capfilt` and `coembed data corrupt`: the filter rule against a naive loop over injected
scores, the report per origin, resuming and atomic output, the corruption's recorded truth, bad
checkpoints as one clear error, and the whole pipeline end to end with tiny trained models."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

import coembed
from coembed.cli.main import main
from coembed.data import capfilt as capfilt_module
from coembed.data.capfilt import SCORES_FILE, CapFiltConfig, capfilt, capfilt_samples, itm_scorer
from coembed.data.corrupt import corrupt_dataset, corruption_truth
from coembed.data.datasets import read_samples
from coembed.errors import CheckpointError, DataError
from coembed.train.config import TrainConfig
from coembed.train.loop import train
from coembed.transforms import load_image

SMALL = {
    "albef-tiny": {"vision.layers": 1, "vision.width": 32, "vision.heads": 2, "vision.stem": "patch", "embed_dim": 32,
                   "text.width": 32, "text.layers": 1, "text.fusion_layers": 1, "queue_size": 64},
    "blip-tiny": {"vision.layers": 1, "vision.width": 32, "vision.heads": 2, "vision.stem": "patch", "text.width": 32,
                  "text.layers": 1},
}


def _run(data: Path, out: Path, preset: str) -> Path:
    cfg = TrainConfig(data=str(data), out=str(out), preset=preset, model=dict(SMALL[preset]), batch_size=16, max_steps=8,
                      val_samples=0, workers=0, precision="fp32", progress=False, warmup_steps=2, lr=3e-3, vocab_size=300)
    train(cfg)
    return out


@pytest.fixture(scope="module")
def runs(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("capfilt_runs")
    return {"filter": _run(shapes_data, root / "albef", "albef-tiny"), "captioner": _run(shapes_data, root / "blip", "blip-tiny")}


def _dataset(tmp_path: Path, n: int = 6, captions: int = 2) -> Path:
    """n small images (image i is the colour (i, 0, 0)) with `captions` distinct captions each."""
    from PIL import Image

    src = tmp_path / "src"
    (src / "images").mkdir(parents=True)
    lines = []
    for i in range(n):
        Image.new("RGB", (16, 16), (i, 0, 0)).save(src / "images" / f"{i}.png")
        lines.append({"image": f"images/{i}.png", "captions": [f"image {i} caption {j}" for j in range(captions)], "id": i})
    (src / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return src


def _synthetic(index: int, seed: int) -> list[str]:
    # A sampled text, an empty one (never scored) and a copy of the image's first web caption (a duplicate).
    return [f"synthetic {seed} {index}", "", f"image {index} caption 0"]


def _fake_models(seed_log: list | None = None):
    """A captioner writing :func:`_synthetic` for each image and a scorer giving each text a fixed
    pseudo-random score (:func:`_score`), so the test knows every score without a model."""

    def captioner(images, seed):
        if seed_log is not None:
            seed_log.append(seed)
        return [_synthetic(im.getpixel((0, 0))[0], seed) for im in images]

    def scorer(images, texts):
        return [[_score(t) for t in ts] for ts in texts]

    return captioner, scorer


def _score(text: str) -> float:
    return random.Random(text).random()


def _naive(candidates: list[tuple[str, str]], threshold: float) -> list[tuple[str, str]]:
    """The kept (text, origin) of one image by a plain loop: non-empty, score >= threshold, not yet kept."""
    kept: list[tuple[str, str]] = []
    for text, origin in candidates:
        if text and _score(text) >= threshold and text not in [t for t, _ in kept]:
            kept.append((text, origin))
    return kept


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_kept_captions_match_a_naive_loop_over_the_scores(tmp_path: Path, threshold: float) -> None:
    src = _dataset(tmp_path, n=7)
    captioner, scorer = _fake_models()
    cfg = CapFiltConfig(synthetic=3, threshold=threshold, batch_size=3)
    report = capfilt_samples(src, tmp_path / "out", captioner, scorer, cfg)
    want, web_kept = {}, 0
    for i in range(7):
        synthetic = _synthetic(i, capfilt_module.batch_seed(0, i // 3 * 3))
        kept = _naive([(f"image {i} caption {j}", "web") for j in range(2)] + [(t, "synthetic") for t in synthetic], threshold)
        web_kept += sum(o == "web" for _, o in kept)
        if kept:
            want[f"{i}.png"] = {"captions": [t for t, _ in kept], "id": i,
                                "capfilt": [{"origin": o, "score": round(_score(t), 6)} for t, o in kept]}
    lines = [json.loads(x) for x in (tmp_path / "out" / "captions.jsonl").read_text().splitlines()]
    assert {Path(x.pop("image")).name: x for x in lines} == want
    assert report.captions["web"]["in"] == 14 and report.captions["synthetic"]["in"] == 21
    assert report.captions["web"]["kept"] == web_kept and report.images_kept == len(want)
    assert report.captions["synthetic"]["empty"] == 7  # one empty synthetic caption per image, never scored
    assert report.dropped_images.get("no caption left", 0) == 7 - len(want)


def test_a_score_equal_to_the_threshold_is_kept(tmp_path: Path) -> None:
    src = _dataset(tmp_path, n=1, captions=3)

    def scorer(images, texts):
        return [[0.5, 0.5 - 1e-9, 0.5 + 1e-9]]

    report = capfilt_samples(src, tmp_path / "out", None, scorer, CapFiltConfig(synthetic=0, threshold=0.5))
    line = json.loads((tmp_path / "out" / "captions.jsonl").read_text())
    assert line["captions"] == ["image 0 caption 0", "image 0 caption 2"]
    assert report.captions["web"] == {"in": 3, "kept": 2, "below threshold": 1}


def test_bad_images_are_counted_and_skipped(tmp_path: Path) -> None:
    src = _dataset(tmp_path, n=4)
    (src / "images" / "2.png").write_bytes(b"not a png")
    captioner, scorer = _fake_models()
    report = capfilt_samples(src, tmp_path / "out", captioner, scorer, CapFiltConfig(threshold=0.0, batch_size=2))
    assert report.dropped_images == {"unreadable image": 1} and report.images_kept == 3
    scores = [json.loads(x) for x in (tmp_path / "out" / SCORES_FILE).read_text().splitlines()[1:]]
    assert [("skipped" in r) for r in scores] == [False, False, True, False]


def test_an_interrupted_run_resumes_with_the_same_draws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _dataset(tmp_path, n=7)
    cfg = CapFiltConfig(synthetic=1, threshold=0.4, batch_size=2)
    captioner, scorer = _fake_models()
    capfilt_samples(src, tmp_path / "ref", captioner, scorer, cfg)
    calls = []

    def dies_on_third(images, texts):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return scorer(images, texts)

    with pytest.raises(KeyboardInterrupt):
        capfilt_samples(src, tmp_path / "b", captioner, dies_on_third, cfg)
    assert not (tmp_path / "b" / "captions.jsonl").exists()  # nothing half-written
    partial = tmp_path / "b" / (SCORES_FILE + ".partial")
    # A torn batch: its first record whole, the second cut; the whole batch is redone.
    record = (tmp_path / "ref" / SCORES_FILE).read_text().splitlines()[5]
    partial.write_text(partial.read_text() + record + '\n{"image": "images/5.png", "capt')
    seeds: list[int] = []
    report = capfilt_samples(src, tmp_path / "b", _fake_models(seeds)[0], scorer, cfg)
    assert report.resumed_images == 4 and seeds == [capfilt_module.batch_seed(0, 4), capfilt_module.batch_seed(0, 6)]
    for name in ("captions.jsonl", SCORES_FILE):
        assert (tmp_path / "b" / name).read_text() == (tmp_path / "ref" / name).read_text()
    def no_model(*args):
        raise AssertionError("a finished run's scores are reused")

    again = capfilt_samples(src, tmp_path / "b", no_model, no_model, CapFiltConfig(synthetic=1, threshold=0.9, batch_size=2))
    assert again.resumed_images == 7 and again.images_kept < report.images_kept
    assert (tmp_path / "b" / SCORES_FILE).read_text() == (tmp_path / "ref" / SCORES_FILE).read_text()
    with pytest.raises(DataError, match="other settings"):
        (tmp_path / "c").mkdir()
        (tmp_path / "c" / (SCORES_FILE + ".partial")).write_text(json.dumps({"capfilt": {"seed": 9}}) + "\n")
        capfilt_samples(src, tmp_path / "c", captioner, scorer, cfg)


def test_a_failed_write_leaves_the_previous_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = _dataset(tmp_path, n=3)
    captioner, scorer = _fake_models()
    capfilt_samples(src, tmp_path / "out", captioner, scorer, CapFiltConfig(threshold=0.0))
    before = (tmp_path / "out" / "captions.jsonl").read_text()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)  # the atomic writer's last step
    with pytest.raises(OSError):
        capfilt_samples(src, tmp_path / "out", captioner, scorer, CapFiltConfig(threshold=0.9))
    assert (tmp_path / "out" / "captions.jsonl").read_text() == before


@pytest.mark.parametrize(("kwargs", "field"), [({"threshold": 1.5}, "threshold"), ({"top_p": 0.0}, "top_p"),
                                                ({"synthetic": -1}, "synthetic"), ({"batch_size": 0}, "batch_size"),
                                                ({"max_length": 1}, "max_length"), ({"threshold": float("nan")}, "threshold")])
def test_bad_settings_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        CapFiltConfig(**kwargs)


def test_corruption_replaces_the_asked_share_with_other_images_captions(shapes_data: Path, tmp_path: Path) -> None:
    report = corrupt_dataset(shapes_data / "train", tmp_path / "noisy", 0.5, seed=3)
    samples, _ = read_samples(shapes_data / "train")
    lines = [json.loads(x) for x in (tmp_path / "noisy" / "captions.jsonl").read_text().splitlines()]
    flagged = [line["corrupted"][0] for line in lines]
    assert sum(flagged) == report.corrupted_images == round(0.5 * len(samples))
    own = {os.path.realpath(shapes_data / "train" / s.image): set(s.captions) for s in samples}
    everyone = set().union(*own.values())
    for line in lines:
        image = os.path.realpath(tmp_path / "noisy" / line["image"])
        assert all(len(set(f)) == 1 for f in [line["corrupted"]])
        if line["corrupted"][0]:
            assert set(line["original_captions"]) == own[image] and set(line["captions"]) <= everyone
            assert not set(line["captions"]) <= own[image]  # drawn from other images (these captions differ)
        else:
            assert set(line["captions"]) == own[image]
    truth = corruption_truth(tmp_path / "noisy")
    assert sum(truth.values()) >= report.corrupted_captions - 10  # repeats within an image merge keys
    with pytest.raises(ValueError, match="fraction"):
        corrupt_dataset(shapes_data / "train", tmp_path / "x", 1.5)


def test_itm_scores_are_the_models_softmax_match_probability(runs: dict[str, Path], shapes_data: Path) -> None:
    loaded = coembed.load(runs["filter"])
    samples, _ = read_samples(shapes_data / "val")
    images = [load_image(shapes_data / "val" / s.image) for s in samples[:3]]
    texts = [list(samples[0].captions[:2]), [], [samples[1].captions[0], samples[2].captions[0], "a red circle"]]
    got = itm_scorer(loaded, max_pairs=2)(images, texts)
    for image, ts, scores in zip(images, texts, got):  # one pair at a time, the model called directly
        for text, score in zip(ts, scores):
            with torch.no_grad():
                logits = loaded.model.itm_logits(loaded.preprocess(image)[None], loaded.tokenizer([text], context_length=48))
            assert score == pytest.approx(torch.softmax(logits, -1)[0, 1].item(), abs=1e-5)
    assert [len(s) for s in got] == [2, 0, 3]


def test_checkpoints_without_the_needed_head_are_one_clear_error(runs: dict[str, Path], shapes_data: Path,
                                                                 tmp_path: Path, tiny_checkpoint: Path) -> None:
    cfg = CapFiltConfig()
    with pytest.raises(CheckpointError, match="--filter .* no ITM head"):
        capfilt(shapes_data / "val", tmp_path / "a", runs["captioner"], runs["captioner"], cfg)
    with pytest.raises(CheckpointError, match="--captioner .* no captioning head"):
        capfilt(shapes_data / "val", tmp_path / "b", runs["filter"], runs["filter"], cfg)
    with pytest.raises(CheckpointError, match="--filter .* no ITM head"):
        capfilt(shapes_data / "val", tmp_path / "c", runs["captioner"], tiny_checkpoint, cfg)


def test_the_command_runs_end_to_end_with_trained_models(runs: dict[str, Path], shapes_data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "clean"
    code = main(["data", "capfilt", str(shapes_data / "val"), str(out), "--captioner", str(runs["captioner"]),
                 "--filter", str(runs["filter"]), "--synthetic", "2", "--threshold", "0.5", "--batch-size", "16",
                 "--max-length", "16", "--no-progress", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["captions"]["web"]["in"] == 5 * 64 and report["captions"]["synthetic"]["in"] == 2 * 64
    records = [json.loads(x) for x in (out / SCORES_FILE).read_text().splitlines()[1:]]
    scores = [c["score"] for r in records for c in r["captions"] if c["score"] is not None]
    assert all(0.0 <= p <= 1.0 for p in scores) and len(set(scores)) > 10
    kept = sum(p >= 0.5 for p in scores)
    assert report["captions"]["web"]["kept"] + report["captions"]["synthetic"]["kept"] <= kept
    if report["images_kept"]:
        samples, _ = read_samples(out)  # the output is a dataset the trainer reads
        assert len(samples) == report["images_kept"]
    code = main(["data", "capfilt", str(shapes_data / "val"), str(tmp_path / "x"), "--filter", str(runs["filter"])])
    assert code != 0 and "--captioner" in capsys.readouterr().err


def test_threshold_auto_is_chosen_on_a_corrupted_val_split(runs: dict[str, Path], shapes_data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    corrupt_dataset(shapes_data / "val", tmp_path / "calib", 0.5, seed=1)
    out = tmp_path / "clean"
    code = main(["data", "capfilt", str(shapes_data / "test"), str(out), "--filter", str(runs["filter"]), "--synthetic", "0",
                 "--threshold", "auto", "--calibrate", str(tmp_path / "calib"), "--no-progress", "--json"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    calibration = report["calibration"]
    assert report["threshold"] == calibration["threshold"] and calibration["source"] == str(tmp_path / "calib")
    # the stored figures are the model's: recompute them from the filter's own scores of the calibration set
    truth = corruption_truth(tmp_path / "calib")
    samples, _ = read_samples(tmp_path / "calib")
    scorer = itm_scorer(coembed.load(runs["filter"]))
    images = [load_image(tmp_path / "calib" / s.image) for s in samples]
    scores = [p for ps in scorer(images, [s.captions for s in samples]) for p in ps]
    flags = [truth[(os.path.realpath(tmp_path / "calib" / s.image), c)] for s in samples for c in s.captions]
    right = sum((p < calibration["threshold"]) == bad for p, bad in zip(scores, flags))
    assert calibration["accuracy"] == pytest.approx(right / len(flags), abs=1e-9)
    kept = sum(c["score"] >= calibration["threshold"] for r in map(json.loads, (out / SCORES_FILE).read_text().splitlines()[1:])
               for c in r["captions"])
    assert report["captions"]["web"]["kept"] <= kept
