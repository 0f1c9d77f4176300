"""``coembed generate``: one PNG or a folder with a grid, reproducible for a seed, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coembed.cli.main import main
from coembed.train.config import TrainConfig
from coembed.train.loop import train

SMALL = {"image_size": 16, "patch_size": 1, "channels": [8, 16], "groups": 4, "heads": 2, "text.layers": 1, "text.width": 32,
         "text.heads": 2, "text_embed_dim": 16, "timesteps": 100}


@pytest.fixture(scope="module")
def diffusion_run(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "diffusion"
    train(TrainConfig(data=str(shapes_data), out=str(out), preset="diffusion-tiny", model=dict(SMALL), batch_size=16, max_steps=2,
                      val_samples=0, workers=0, precision="fp32", progress=False, warmup_steps=1))
    return out


def test_one_prompt_writes_one_png_reproducibly(diffusion_run: Path, tmp_path: Path, capsys) -> None:
    args = ["generate", "--checkpoint", str(diffusion_run), "a large red circle in the middle", "--steps", "4", "--no-progress"]
    assert main([*args, "--out", str(tmp_path / "a.png")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.png")]) == 0
    a, b = (np.asarray(Image.open(tmp_path / n)) for n in ("a.png", "b.png"))
    assert a.shape == (16, 16, 3) and np.array_equal(a, b)
    assert main([*args, "--out", str(tmp_path / "c.png"), "--seed", "1"]) == 0
    assert not np.array_equal(a, np.asarray(Image.open(tmp_path / "c.png")))
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def test_several_images_write_a_folder_with_a_grid(diffusion_run: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "imgs"
    code = main(["generate", "--checkpoint", str(diffusion_run), "a red star", "a small blue heart on the left", "--n", "3",
                 "--steps", "3", "--out", str(out), "--json", "--batch-size", "4"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert len(report["files"]) == 7 and sorted(p.name for p in out.glob("*-*.png")) == [f"{p}-{k}.png" for p in range(2) for k in range(3)]
    lines = [json.loads(x) for x in (out / "images.jsonl").read_text().splitlines()]
    assert lines[4] == {"file": "1-1.png", "prompt": "a small blue heart on the left", "sample": 1, "seed": 0}
    grid = np.asarray(Image.open(out / "grid.png"))
    assert grid.shape == (2 * 128, 3 * 128, 3)  # a row per prompt, a column per sample, 16 px cells upscaled x8
    cell = np.asarray(Image.open(out / "1-2.png")).repeat(8, 0).repeat(8, 1)
    assert np.array_equal(grid[128:, 256:], cell)


@pytest.mark.parametrize("extra,match", [(["", "--out", "x.png"], "prompt 1 is empty"),
                                         (["a", "b", "--out", "x.png"], "need a folder"),
                                         (["a", "--steps", "101", "--out", "x.png"], "--steps must be in"),
                                         (["a", "--eta", "2", "--out", "x.png"], "--eta")])
def test_bad_input_is_a_clear_error(diffusion_run: Path, tmp_path: Path, capsys, extra: list[str], match: str) -> None:
    extra = [str(tmp_path / e) if e.endswith(".png") else e for e in extra]
    assert main(["generate", "--checkpoint", str(diffusion_run), *extra, "--no-progress"]) == 2
    assert match in capsys.readouterr().err


def test_bad_steps_flag_and_non_diffusion_checkpoint(diffusion_run: Path, tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["generate", "--checkpoint", str(diffusion_run), "a", "--steps", "0", "--out", str(tmp_path / "x.png")])
    assert "--steps" in capsys.readouterr().err
    assert main(["generate", "--checkpoint", str(tiny_checkpoint), "a red star", "--out", str(tmp_path / "x.png")]) == 2
    assert "dual_encoder model, which does not generate images" in capsys.readouterr().err


def test_help_names_the_options(capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["generate", "--help"])
    out = capsys.readouterr().out
    assert e.value.code == 0 and all(flag in out for flag in ("--steps", "--guidance", "--eta", "--seed", "--n", "--out"))
