"""``coembed caption``: table and JSON output equal to the library's captions, decoding options, bad
images named and skipped, and one-line errors for a checkpoint without a captioning head."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import coembed
from coembed.cli.main import main
from coembed.generation import caption
from coembed.transforms import load_image
from tests.helpers import train_small_captioner



@pytest.fixture(scope="module")
def blip_run(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_captioner(shapes_data, tmp_path_factory.mktemp("runs") / "blip", "blip-tiny", 3)


@pytest.fixture()
def images(shapes_data: Path) -> list[str]:
    return [str(p) for p in sorted((shapes_data / "test").rglob("*.png"))[:3]]


def _library(run: Path, paths: list[str], method: str = "greedy", **kw) -> list[str]:
    model, preprocess, tokenizer = coembed.load(run)
    batch = torch.stack([preprocess(load_image(p)) for p in paths])
    return caption(model, batch, tokenizer, method, max_length=32, **kw)


def test_table_lists_each_image_with_the_library_caption(blip_run: Path, images: list[str], capsys) -> None:
    assert main(["caption", "--checkpoint", str(blip_run), *images]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["image", "caption"]
    want = _library(blip_run, images)
    assert [ln.split(None, 1)[0] for ln in lines[1:]] == images
    assert [ln[len(lines[0]) - len("caption"):].strip() for ln in lines[1:]] == want


@pytest.mark.parametrize(("argv", "method", "kw"), [
    (["--method", "beam", "--num-beams", "2"], "beam", {"num_beams": 2}),
    (["--method", "nucleus", "--top-p", "0.5", "--seed", "3", "--temperature", "0.7"], "nucleus",
     {"top_p": 0.5, "seed": 3, "temperature": 0.7}),
])
def test_json_follows_the_decoding_options(blip_run: Path, images: list[str], capsys, argv, method, kw) -> None:
    assert main(["caption", "--checkpoint", str(blip_run), *images, "--json", *argv]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["method"] == method and out["skipped"] == []
    assert [c["caption"] for c in out["captions"]] == _library(blip_run, images, method, **kw)


def test_bad_images_are_named_and_skipped(blip_run: Path, images: list[str], tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.png"
    broken.write_text("not a png")
    assert main(["caption", "--checkpoint", str(blip_run), images[0], str(broken), str(tmp_path / "gone.png"), "--json"]) == 0
    captured = capsys.readouterr()
    out = json.loads(captured.out)
    assert [c["image"] for c in out["captions"]] == [images[0]]
    assert [s["image"] for s in out["skipped"]] == [str(broken), str(tmp_path / "gone.png")]
    assert "skipped" in captured.err and "broken.png" in captured.err and "gone.png" in captured.err


def test_no_readable_image_is_a_one_line_error(blip_run: Path, tmp_path: Path, capsys) -> None:
    assert main(["caption", "--checkpoint", str(blip_run), str(tmp_path / "gone.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("coembed caption: error: ") and "gone.png" in err[0]


def test_a_checkpoint_without_a_captioning_head_is_a_one_line_error(tiny_checkpoint: Path, images: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "coembed.cli.main", "caption", "--checkpoint", str(tiny_checkpoint), *images],
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "dual_encoder model, which has no captioning head" in lines[0] and "Traceback" not in proc.stderr


@pytest.mark.parametrize(("argv", "needle"), [(["--max-length", "99"], "--max-length must be in [2, 48]"),
                                              (["--top-p", "0"], "expected a number in (0, 1]"),
                                              (["--temperature", "nan"], "expected a number > 0")])
def test_bad_options_are_named(blip_run: Path, images: list[str], capsys, argv, needle) -> None:
    try:
        code = main(["caption", "--checkpoint", str(blip_run), images[0], *argv])
    except SystemExit as e:  # argparse's own refusal
        code = e.code
    assert code == 2 and needle in capsys.readouterr().err


def test_help_lists_the_decoding_options(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["caption", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0 and out.startswith("usage: coembed caption")
    for option in ("--method", "--num-beams", "--top-p", "--temperature", "--max-length", "--seed", "--json"):
        assert option in out
