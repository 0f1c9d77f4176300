"""End to end: generate `shapes` and train the real ``tiny`` preset for about a minute through the
``coembed`` command, then require test retrieval far above chance.

Measured on the 2-core development machine (seed 0, bf16, 150 steps of 64, the hybrid-stem `tiny`):
test R@1 text->image 0.241 and image->text 0.275 (chance 1/200 = 0.005); generation ~6 s, training
~50 s, whole test ~70 s. The thresholds are about half the measured values, i.e. 20x chance. Retrieval is computed in-process:
``coembed eval`` runs the whole suite, whose linear probe alone takes ~30 s on this data.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import coembed
from coembed.data.datasets import read_samples
from coembed.eval.features import embed_split
from coembed.eval.retrieval import retrieval_metrics

MIN_R1 = 0.10
N_TEST = 200


def cli(*args: object) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "coembed.cli.main", *map(str, args)], capture_output=True, text=True,
                          timeout=900)  # a hang guard; ~1 min on a quiet machine, 5+ min when the cores are shared
    assert proc.returncode == 0, proc.stderr
    return proc


def test_tiny_preset_learns_shapes(tmp_path: Path) -> None:
    data, run = tmp_path / "shapes", tmp_path / "run"
    cli("data", "shapes", "--out", data, "--train", 3000, "--val", N_TEST, "--test", N_TEST, "--heldout", 0,
            "--workers", 2)
    summary = json.loads(cli("train", "--data", data, "--out", run, "--preset", "tiny", "--batch-size", 64,
                                 "--max-steps", 150, "--set", "lr=1e-3", "--set", "warmup_steps=15",
                                 "--set", "precision=auto", "--set", "val_every=1000", "--set", "save_every=1000",
                                 "--no-progress", "--json").stdout)
    assert summary["steps"] == 150 and summary["skipped"] == 0

    losses = [x["loss"] for x in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in x]
    assert len(losses) == 15 and sum(losses[-3:]) / 3 < 0.6 * losses[0]  # log(64) = 4.16 at the start

    loaded = coembed.load(run)
    samples, _ = read_samples(data / "test")
    feats = embed_split(loaded.model, loaded.tokenizer, data / "test", samples, loaded.preprocess)
    assert len(feats.samples) == N_TEST
    retrieval = retrieval_metrics(feats.image_emb, feats.text_emb, feats.text_to_image)
    chance = 1 / N_TEST
    assert retrieval["image_retrieval_recall@1"] >= MIN_R1 >= 10 * chance  # text -> image
    assert retrieval["text_retrieval_recall@1"] >= MIN_R1  # image -> text
    assert retrieval["image_retrieval_recall@10"] > retrieval["image_retrieval_recall@1"]
    assert summary["last_val"]["val_t2i_r1"] >= MIN_R1
