"""The ``coembed`` command, run as a real process (``python -m coembed.cli.main`` and the installed
console script), plus quick in-process checks of user errors."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import coembed
from coembed.cli.main import main
from tests.helpers import copy_test_images

SUBCOMMANDS = [["data"], ["data", "shapes"], ["data", "vqa"], ["data", "filter"], ["data", "corrupt"], ["data", "capfilt"], ["train"],
               ["train-reader"], ["eval"], ["embed"], ["classify"], ["caption"], ["generate"], ["convert"], ["export"], ["index"],
               ["search"], ["tag"], ["serve"], ["explain"], ["demo"]]
ENTRY_POINT = Path(sys.executable).parent / "coembed"


def run(*args: str, entry: bool = False, timeout: float = 180) -> subprocess.CompletedProcess:
    cmd = [str(ENTRY_POINT)] if entry else [sys.executable, "-m", "coembed.cli.main"]
    return subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _sets(tiny_sets: list[str]) -> list[str]:
    return [x for s in tiny_sets for x in ("--set", s)]


def assert_user_error(proc: subprocess.CompletedProcess, command: str, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"coembed {command}: error: ")
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0]


# ----------------------------------------------------------------------------- help, version
def test_entry_point_is_installed() -> None:
    assert ENTRY_POINT.is_file() or shutil.which("coembed")
    proc = run("--help", entry=True)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: coembed")
    for command in {words[0] for words in SUBCOMMANDS}:
        assert command in proc.stdout


def test_every_registered_command_has_a_help_test() -> None:
    from coembed.cli.main import build_parser

    actions = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert set(actions[0].choices) == {words[0] for words in SUBCOMMANDS}


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=["-".join(w) for w in SUBCOMMANDS])
def test_subcommand_help(words: list[str]) -> None:
    proc = run(*words, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: coembed {' '.join(words)}") and proc.stderr == ""


def test_no_command_is_a_usage_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2 and "usage: coembed" in capsys.readouterr().err


# ----------------------------------------------------------------------------- data, train, eval
def test_data_shapes(tmp_path: Path) -> None:
    proc = run("data", "shapes", "--out", tmp_path / "d", "--train", 6, "--val", 2, "--test", 3, "--heldout", 2,
               "--workers", 1, "--json")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout)
    assert meta["splits"] == {"train": 6, "val": 2, "test": 3, "heldout": 2}
    assert json.loads((tmp_path / "d" / "meta.json").read_text()) == meta
    assert len((tmp_path / "d" / "test" / "captions.jsonl").read_text().splitlines()) == 3


def test_train_json(shapes_data: Path, tiny_sets: list[str], tmp_path: Path) -> None:
    proc = run("train", "--data", shapes_data, "--out", tmp_path / "run", "--batch-size", 32, "--max-steps", 3,
               "--no-progress", "--json", *_sets(tiny_sets), "--set", "precision=fp32", "--set", "log_every=1")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["steps"] == 3 and summary["samples_seen"] == 96 and summary["skipped"] == 0
    assert Path(summary["checkpoint"]) == tmp_path / "run" / "checkpoint"
    assert set(summary["last_val"]) == {"val_loss", "val_t2i_r1", "val_i2t_r1", "val_zeroshot_shape", "val_zeroshot_color"}
    model, _, _ = coembed.load(summary["checkpoint"])
    assert model.cfg.embed_dim == 32
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 4  # 3 steps + 1 validation


def test_train_resume_auto_starts_then_continues(shapes_data: Path, tiny_sets: list[str], tmp_path: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    """--resume auto: a fresh --out starts a run; a requeued job with the same command continues it."""
    base = ["train", "--data", str(shapes_data), "--out", str(tmp_path / "run"), "--batch-size", "32", "--no-progress", "--json",
            *_sets(tiny_sets), "--set", "precision=fp32", "--set", "log_every=1", "--resume", "auto"]
    assert main([*base, "--max-steps", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    lines = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert main([*base, "--max-steps", "2"]) == 0  # resumed at its end: no step to take, the log is kept
    assert json.loads(capsys.readouterr().out)["steps"] == 2
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == lines


def test_eval_json_and_file(tiny_checkpoint: Path, shapes_data: Path, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    proc = run("eval", "--checkpoint", tiny_checkpoint, "--data", shapes_data, "--out", out, "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(out.read_text())
    assert {"dataset", "model", "split", "metrics"} <= set(record)
    assert (record["dataset"], record["model"], record["split"]) == ("shapes", str(tiny_checkpoint), "test")
    printed = json.loads(proc.stdout)
    assert set(printed) == {"dataset", "model", "split", "metrics"} and printed["metrics"] == record["metrics"]
    assert record["metrics"]["retrieval"]["n_images"] == 64
    assert f"wrote {out}" in proc.stderr


# ----------------------------------------------------------------------------- embed, classify
@pytest.fixture
def image_folder(shapes_data: Path, tmp_path: Path) -> Path:
    """Five test images in two sub-folders plus one corrupt file."""
    root = copy_test_images(shapes_data, tmp_path / "images", 5, lambda i: "a" if i < 3 else "b/c")
    (root / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


def test_embed_shards_skip_and_rerun(tiny_checkpoint: Path, image_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "emb"
    proc = run("embed", "--checkpoint", tiny_checkpoint, "--images", image_folder, "--out", out, "--shard-size", 4)
    assert proc.returncode == 0, proc.stderr
    assert "skipped 1 sample" in proc.stderr and "a/broken.png" in proc.stderr and "Traceback" not in proc.stderr
    model, preprocess, _ = coembed.load(tiny_checkpoint)
    rows = 0
    for shard in (0, 1):
        emb = np.load(out / "img_emb" / f"img_emb_{shard}.npy")
        meta = [json.loads(x) for x in (out / "metadata" / f"metadata_{shard}.jsonl").read_text().splitlines()]
        assert emb.shape == (len(meta), 32) and emb.dtype == np.float32
        for row, m in zip(emb, meta):  # row i of the .npy is the image on line i of the metadata
            with torch.no_grad():
                x = preprocess(Image.open(image_folder / m["image_path"]).convert("RGB"))[None]
                want = F.normalize(model.encode_image(x), dim=-1)[0].numpy()
            np.testing.assert_allclose(row, want, atol=1e-5)
        rows += len(meta)
    assert rows == 5
    assert not (out / "img_emb" / "img_emb_2.npy").exists()

    # An interrupted run: shard 1's metadata (written last) is missing, shard 0 is complete.
    first = (out / "img_emb" / "img_emb_0.npy").stat().st_mtime_ns
    (out / "metadata" / "metadata_1.jsonl").unlink()
    proc = run("embed", "--checkpoint", tiny_checkpoint, "--images", image_folder, "--out", out, "--shard-size", 4, "--json")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["embedded_now"] == len(np.load(out / "img_emb" / "img_emb_1.npy")) and summary["shards"] == 2
    assert (out / "img_emb" / "img_emb_0.npy").stat().st_mtime_ns == first
    assert (out / "metadata" / "metadata_1.jsonl").exists()


def test_classify_text_and_json(tiny_checkpoint: Path, image_folder: Path) -> None:
    images = [p for p in sorted((image_folder / "a").glob("*.png")) if p.name != "broken.png"][:2]
    labels = {"circle", "square", "star"}
    proc = run("classify", *images, "--checkpoint", tiny_checkpoint, "--labels", "circle, square,star", entry=True)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 2
    for line, image in zip(lines, images):
        assert line.startswith(f"{image}: ") and line.split(": ", 1)[1].split()[0] in labels
    proc = run("classify", *images, "--checkpoint", tiny_checkpoint, "--labels", "circle,square,star", "--json", "--top", 2)
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout)
    assert [r["image"] for r in results] == [str(p) for p in images]
    for r in results:
        probs = [x["prob"] for x in r["labels"]]
        assert len(r["labels"]) == 2 and {x["label"] for x in r["labels"]} <= labels
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0001


# ----------------------------------------------------------------------------- user errors
def test_missing_data_folder(tmp_path: Path, tiny_sets: list[str]) -> None:
    proc = run("train", "--data", tmp_path / "nope", "--out", tmp_path / "run", *_sets(tiny_sets))
    assert_user_error(proc, "train", str(tmp_path / "nope"), "does not exist")
    assert not (tmp_path / "run").exists()


def test_bad_set(shapes_data: Path, tmp_path: Path) -> None:
    proc = run("train", "--data", shapes_data, "--out", tmp_path / "run", "--set", "lr")
    assert_user_error(proc, "train", "--set expects key=value", "'lr'")


def test_nonexistent_checkpoint(shapes_data: Path, tmp_path: Path) -> None:
    proc = run("eval", "--checkpoint", tmp_path / "nope", "--data", shapes_data)
    assert_user_error(proc, "eval", str(tmp_path / "nope"), "does not exist")


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (["train", "--out", "{tmp}/run"], ["--data is required"]),
        (["train", "--data", "{data}"], ["--out is required"]),
        (["train", "--data", "{data}", "--out", "{tmp}/run", "--set", "batch_size=1"], ["batch_size", "1"]),
        (["train", "--data", "{data}", "--out", "{tmp}/run", "--set", "loss=foo"], ["loss", "foo"]),
        (["train", "--data", "{data}", "--out", "{tmp}/run", "--set", "colour=red"], ["unknown training setting", "colour"]),
        (["train", "--data", "{data}", "--out", "{tmp}/run", "--config", "{tmp}/none.yaml"], ["none.yaml", "does not exist"]),
        (["train", "--data", "{data}", "--out", "{tmp}/run", "--resume"], ["no checkpoint"]),
        (["train", "--data", "{data}", "--out", "{tmp}/run", "--set", "loss=siglip", "--set", "model.embed_dim=8",
          "--set", "model.vision.layers=1", "--set", "model.text.layers=1"], ["siglip", "logit_bias"]),
        (["eval", "--checkpoint", "{tmp}", "--data", "{data}"], ["not a coembed checkpoint"]),
        (["embed", "--checkpoint", "{tmp}", "--images", "{tmp}/none", "--out", "{tmp}/e"], ["none", "not a folder"]),
        (["classify", "x.png", "--checkpoint", "{tmp}", "--labels", "circle"], ["at least two", "circle"]),
    ],
)
def test_user_errors_in_process(argv: list[str], needles: list[str], shapes_data: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture) -> None:
    args = [a.replace("{tmp}", str(tmp_path)).replace("{data}", str(shapes_data)) for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"coembed {argv[0]}: error: ")
    for needle in needles:
        assert needle in err[0]


def test_classify_missing_image(tiny_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["classify", str(tmp_path / "x.png"), "--checkpoint", str(tiny_checkpoint), "--labels", "a,b"]) == 2
    err = capsys.readouterr().err
    assert "x.png" in err and "file not found" in err


def test_argument_type_error(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["train", "--batch-size", "0"])
    assert info.value.code == 2 and "expected a positive integer, got 0" in capsys.readouterr().err
