"""The figures of benchmarks/capfilt_shapes.sh: per CapFilt output (ARM, a folder OUT/ARM/train), the
filter's ROC AUC and precision / recall against the recorded corruption of the noisy training captions (at
the run's threshold and a sweep, re-thresholding the saved scores), how its threshold was chosen, the
CapFilt counts, how often a synthetic caption is one of the image's true captions; then test R@1 of the
dual encoder trained on the uncorrupted, the noisy and each cleaned set (OUT/tiny-ARM.eval.json).

Usage: python benchmarks/capfilt_report.py OUT [ARM ...]   (OUT as given to capfilt_shapes.sh; ARM
defaults to clean-filter)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from coembed.data.capfilt import REPORT_FILE, SCORES_FILE
from coembed.data.corrupt import corruption_truth
from coembed.eval.captioning import caption_metrics, tokenize

SWEEP = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def web_scores(out: Path, arm: str) -> list[tuple[bool, float]]:
    """(corrupted, ITM score) of every web caption CapFilt scored, joined with the corruption's truth."""
    noisy = out / "noisy" / "train"
    truth = corruption_truth(noisy)
    rows = []
    for text in (out / arm / "train" / SCORES_FILE).read_text().splitlines()[1:]:
        record = json.loads(text)
        image = os.path.realpath(noisy / record["image"])
        rows += [(truth[(image, c["text"])], c["score"]) for c in record.get("captions", []) if c["origin"] == "web"]
    return rows


def precision_recall(rows: list[tuple[bool, float]], threshold: float) -> dict[str, float]:
    """Of the drop decision (score < threshold) as a detector of corrupted captions."""
    dropped = [bad for bad, score in rows if score < threshold]
    true_drops, corrupted = sum(dropped), sum(bad for bad, _ in rows)
    return {"threshold": threshold, "dropped": len(dropped), "precision": true_drops / len(dropped) if dropped else float("nan"),
            "recall": true_drops / corrupted if corrupted else float("nan"),
            "clean_kept": sum(not bad and score >= threshold for bad, score in rows) / max(1, len(rows) - corrupted)}


def true_captions(out: Path) -> dict[str, tuple[bool, list[str]]]:
    """Real image path -> (its web captions were corrupted, its true captions: `original_captions` when
    corrupted, its own captions otherwise), from the noisy training set."""
    noisy = out / "noisy" / "train"
    truth = {}
    for line in map(json.loads, (noisy / "captions.jsonl").read_text().splitlines()):
        truth[os.path.realpath(noisy / line["image"])] = (any(line["corrupted"]), line.get("original_captions", line["captions"]))
    return truth


def kept_images(out: Path, arm: str) -> dict[str, list[tuple[str, str]]]:
    """Real image path -> [(origin, caption)] of every caption CapFilt kept in OUT/ARM/train."""
    folder = out / arm / "train"
    kept = {}
    for line in map(json.loads, (folder / "captions.jsonl").read_text().splitlines()):
        kept[os.path.realpath(folder / line["image"])] = [(c["origin"], t) for c, t in zip(line["capfilt"], line["captions"])]
    return kept


def synthetic_quality(truth: dict, captions: dict[str, str]) -> dict[str, float]:
    """Of synthetic captions (image -> caption): how many equal one of the image's true captions once
    tokenised, and their BLEU-1..4 / CIDEr-D against the true captions."""
    if not captions:
        return {"captions": 0}
    exact = sum(tokenize(c) in {tokenize(t) for t in truth[i][1]} for i, c in captions.items())
    metrics = caption_metrics({i: truth[i][1] for i in captions}, captions)
    return {"captions": len(captions), "exact": exact, **metrics}


def synthetic_report(out: Path, arm: str, baseline: str | None) -> None:
    """The synthetic captions of ARM: generated vs kept, correct (tokenised text equal to a true caption)
    and BLEU / CIDEr-D against the true captions, split by corrupted / intact images; and the images ARM
    keeps that BASELINE (a filter-only arm) dropped."""
    truth, kept = true_captions(out), kept_images(out, arm)
    noisy = out / "noisy" / "train"
    generated = {}
    for record in map(json.loads, (out / arm / "train" / SCORES_FILE).read_text().splitlines()[1:]):
        synth = [c["text"] for c in record.get("captions", []) if c["origin"] == "synthetic"]
        if synth:  # --synthetic 1: one per image
            generated[os.path.realpath(noisy / record["image"])] = synth[0]
    if not generated:
        return
    kept_synth = {i: t for i, caps in kept.items() for o, t in caps if o == "synthetic"}
    print("| synthetic captions | n | exact (tokenised) | BLEU-4 | CIDEr-D |\n|---|---|---|---|---|")
    for name, subset in (("generated", generated), ("kept", kept_synth)):
        for which, flag in (("all", None), ("corrupted images", True), ("intact images", False)):
            part = {i: c for i, c in subset.items() if flag is None or truth[i][0] == flag}
            q = synthetic_quality(truth, part)
            if q["captions"]:
                print(f"| {name}, {which} | {q['captions']} | {q['exact']} | {q['bleu4']:.3f} | {q['cider']:.3f} |")
    only_synth = [i for i, caps in kept.items() if all(o == "synthetic" for o, _ in caps)]
    print(f"images kept with only a synthetic caption: {len(only_synth)} "
          f"({sum(truth[i][0] for i in only_synth)} of them corrupted)")
    if baseline and (out / baseline / "train" / "captions.jsonl").exists():
        back = set(kept) - set(kept_images(out, baseline))
        print(f"images kept here that {baseline} dropped: {len(back)} ({sum(truth[i][0] for i in back)} corrupted); "
              f"their kept synthetic captions correct: {synthetic_quality(truth, {i: kept_synth[i] for i in back if i in kept_synth}).get('exact', 0)}")
    print()


def recall_at_1(path: Path) -> dict[str, float]:
    """The R@1 entries of a `coembed eval --out` JSON, wherever they are nested."""
    found: dict[str, float] = {}

    def walk(node, prefix=""):
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}/")
        elif prefix.rstrip("/").endswith("recall@1"):
            found[prefix.rstrip("/")] = node

    walk(json.loads(path.read_text()).get("metrics", {}))
    return found


def arm_report(out: Path, arm: str) -> None:
    """The filter's figures and the CapFilt counts of one cleaned set."""
    rows = web_scores(out, arm)
    report = json.loads((out / arm / "train" / REPORT_FILE).read_text())
    good, bad = [s for b, s in rows if not b], [s for b, s in rows if b]
    auc = sum((g > x) + 0.5 * (g == x) for g in good for x in bad) / max(1, len(good) * len(bad))
    print(f"## {arm}\nweb captions scored: {len(rows)}, corrupted: {len(bad)}; mean ITM score intact {sum(good) / len(good):.3f}, "
          f"corrupted {sum(bad) / len(bad):.3f}; ROC AUC of the score separating them {auc:.3f}")
    calibration = report.get("calibration")
    if calibration:
        print(f"threshold {calibration['threshold']:.4f} chosen on {calibration['source']}: accuracy {calibration['accuracy']:.3f}, "
              f"precision {calibration['precision']:.3f}, recall {calibration['recall']:.3f}, AUC {calibration['auc']:.3f} "
              f"({calibration['captions']} captions, {calibration['corrupted']} corrupted)")
    run = precision_recall(rows, report["threshold"])
    accuracy = sum((s < report["threshold"]) == b for b, s in rows) / len(rows)
    print(f"on the noisy training captions at threshold {report['threshold']:.4f}: accuracy {accuracy:.3f}, dropped {run['dropped']}, "
          f"precision {run['precision']:.3f}, recall {run['recall']:.3f}, intact web kept {run['clean_kept']:.3f}")
    print("\n| threshold | web dropped | precision | recall | intact web kept |\n|---|---|---|---|---|")
    for t in SWEEP:
        m = precision_recall(rows, t)
        print(f"| {t:g} | {m['dropped']} | {m['precision']:.3f} | {m['recall']:.3f} | {m['clean_kept']:.3f} |")
    print(f"\nCapFilt report: images kept {report['images_kept']} / {report['images_in']}; "
          f"captions {json.dumps(report['captions'])}\n")


def main(out: Path, arms: list[str]) -> None:
    for arm in arms:
        arm_report(out, arm)
        synthetic_report(out, arm, baseline="clean-filter" if arm != "clean-filter" else None)
    for name in ("tiny-oracle", "tiny-noisy", *(f"tiny-{arm}" for arm in arms)):
        path = out / f"{name}.eval.json"
        if path.exists():
            print(f"{name}: " + ", ".join(f"{k} {v:.4f}" for k, v in recall_at_1(path).items()))


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:] or ["clean-filter"])
