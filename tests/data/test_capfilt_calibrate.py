"""CapFilt's ``--threshold auto``: the chosen threshold against a brute-force search, its figures against
scikit-learn, calibration on a corrupted set with an injected scorer, and the errors for a missing or
wrong calibration set."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from sklearn.metrics import precision_score, recall_score, roc_auc_score

from coembed.cli.main import main
from coembed.data.capfilt import CapFiltConfig, calibrate, capfilt_samples, choose_threshold, measure_threshold
from coembed.data.corrupt import corrupt_dataset
from coembed.data.datasets import read_samples
from coembed.errors import DataError


def _accuracy(scores: list[float], bad: list[bool], threshold: float) -> float:
    return sum((s < threshold) == b for s, b in zip(scores, bad)) / len(scores)


@pytest.mark.parametrize("seed", range(6))
def test_the_chosen_threshold_is_as_accurate_as_the_best_of_a_brute_force_search(seed: int) -> None:
    rng = random.Random(seed)
    n = rng.randrange(1, 60)
    bad = [rng.random() < 0.5 for _ in range(n)]
    # scores rounded to 0.05: many ties, which no threshold can split; corrupted ones lower on average
    scores = [round(min(1.0, max(0.0, rng.gauss(0.35 if b else 0.6, 0.2))) * 20) / 20 for b in bad]
    chosen = choose_threshold(scores, bad)
    candidates = sorted(set(scores)) + [1.01]  # "keep >= t" for every distinct score, and drop everything
    best = max(_accuracy(scores, bad, t) for t in candidates)
    assert 0.0 <= chosen <= 1.0
    assert _accuracy(scores, bad, chosen) == pytest.approx(best)


def test_a_perfectly_separable_set_is_cut_between_the_groups() -> None:
    assert choose_threshold([0.1, 0.2, 0.8, 0.9], [True, True, False, False]) == pytest.approx(0.5)
    assert choose_threshold([0.7, 0.9], [False, False]) == 0.0  # nothing corrupted: keep everything
    with pytest.raises(ValueError, match="one corrupted flag per score"):
        choose_threshold([0.5], [True, False])


def test_the_figures_match_scikit_learn() -> None:
    rng = random.Random(0)
    bad = [rng.random() < 0.4 for _ in range(200)]
    scores = [round(rng.random() * (0.6 if b else 1.0), 2) for b in bad]
    got = measure_threshold("x", scores, bad, 0.3)
    dropped = [s < 0.3 for s in scores]
    assert got.precision == pytest.approx(precision_score(bad, dropped))
    assert got.recall == pytest.approx(recall_score(bad, dropped))
    assert got.auc == pytest.approx(roc_auc_score([not b for b in bad], scores))
    assert got.accuracy == pytest.approx(_accuracy(scores, bad, 0.3)) and got.corrupted == sum(bad)


def _dataset(root: Path, n: int = 12) -> Path:
    """n images, image i coloured (i, 0, 0), with captions naming i."""
    from PIL import Image

    (root / "images").mkdir(parents=True)
    lines = []
    for i in range(n):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(root / "images" / f"{i}.png")
        lines.append({"image": f"images/{i}.png", "captions": [f"image {i} caption {j}" for j in range(3)]})
    (root / "captions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return root


def _scorer(calls: list | None = None):
    """0.8 for a caption naming the image (its red channel), 0.3 for another image's caption."""
    def run(images, texts):
        if calls is not None:
            calls.append(len(images))
        return [[0.8 if t.startswith(f"image {im.getpixel((0, 0))[0]} ") else 0.3 for t in ts] for im, ts in zip(images, texts)]

    return run


def test_calibration_on_a_corrupted_set_chooses_the_threshold_capfilt_applies(tmp_path: Path) -> None:
    clean = _dataset(tmp_path / "clean")
    corrupt_dataset(clean, tmp_path / "val", 0.5, seed=1)
    calls: list[int] = []
    calibration = calibrate(tmp_path / "val", _scorer(calls), batch_size=5)
    assert calls == [5, 5, 2]  # batch by batch
    assert 0.3 < calibration.threshold <= 0.8 and calibration.accuracy == 1.0 and calibration.auc == 1.0
    samples, _ = read_samples(tmp_path / "val")  # a corrupted image may draw one donor caption twice: merged
    assert calibration.captions == sum(len(s.captions) for s in samples) and calibration.corrupted == calibration.captions - 18
    report = capfilt_samples(tmp_path / "val", tmp_path / "out", None, _scorer(), CapFiltConfig(synthetic=0, threshold="auto"),
                             calibration=calibration)
    assert report.threshold == calibration.threshold and report.calibration["accuracy"] == 1.0
    assert report.images_kept == 6 and report.captions["web"]["kept"] == 18


def test_auto_needs_a_calibration_set_that_records_its_corruption(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    clean = _dataset(tmp_path / "clean")
    with pytest.raises(ValueError, match="needs a calibration"):
        capfilt_samples(clean, tmp_path / "out", None, _scorer(), CapFiltConfig(synthetic=0, threshold="auto"))
    with pytest.raises(ValueError, match="threshold"):
        CapFiltConfig(threshold="sometimes")
    with pytest.raises(DataError, match="calibration set .*coembed data corrupt"):
        calibrate(clean, _scorer())  # no 'corrupted' flags
    corrupt_dataset(clean, tmp_path / "none", 0.0)
    with pytest.raises(DataError, match="both intact and corrupted"):
        calibrate(tmp_path / "none", _scorer())
    code = main(["data", "capfilt", str(clean), str(tmp_path / "o"), "--filter", str(tmp_path), "--synthetic", "0",
                 "--threshold", "auto"])
    assert code != 0 and "--calibrate" in capsys.readouterr().err
