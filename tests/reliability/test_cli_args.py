"""Every subcommand with bad arguments: exit code 2 and one line ``coembed CMD: error: ...`` naming the
argument, no traceback (in-process with capsys, and once through a real subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coembed.cli.main import main

# Placeholders: CK a checkpoint folder, IMG an image, DATA a dataset, DIR an empty temp folder, FILE a file.
ROWS = [
    ("train --data /nope --out DIR/o --max-steps 1", "dataset folder /nope does not exist"),
    ("train --data DATA --out DIR/o --batch-size 0", "argument --batch-size: expected a positive integer, got 0"),
    ("train --data DATA --out DIR/o --batch-size x", "argument --batch-size: expected a positive integer, got 'x'"),
    ("train --data DATA --out DIR/o --config /nope.yaml", "config file /nope.yaml does not exist"),
    ("train --data DATA --out DIR/o --config DIR", "is a folder, not a YAML file"),
    ("train --data DATA --out DIR/o --set lr", "--set expects key=value"),
    ("train --data DATA --out DIR/o --set lr=inf", "lr must be a finite number"),
    ("train --data DATA --out DIR/o --set model.vision.layers=abc", "vision.layers must be an integer"),
    ("train --data DATA --out FILE", "--out FILE is a file"),
    ("train --data FILE --out DIR/o", "is not a folder"),
    ("train --data DATA --out DIR/o --resume", "--resume: no checkpoint"),
    ("train --data DATA --out DIR/o --max-steps 1 --set tokenizer_from=/nope", "tokenizer_from: checkpoint /nope does not exist"),
    ("eval --checkpoint /nope --data DATA", "checkpoint /nope does not exist"),
    ("eval --checkpoint CK --data /nope", "dataset folder /nope does not exist"),
    ("eval --checkpoint CK --data DATA --split nope", "has no 'nope' split"),
    ("eval --checkpoint CK --data DATA --rerank-k 0", "argument --rerank-k"),
    ("eval --checkpoint CK --data DATA --skip nope", "argument --skip: invalid choice"),
    ("embed --checkpoint CK --images /nope --out DIR/e", "--images /nope is not a folder"),
    ("embed --checkpoint CK --images DIR --out DIR/e --shard 3 --num-shards 2", "--shard must be in 0..1"),
    ("embed --checkpoint CK --images DIR --out DIR/e --batch-size 0", "argument --batch-size"),
    ("embed --checkpoint CK --images DIR --out DIR/e --workers -1", "argument --workers: expected a non-negative integer"),
    ("embed --checkpoint CK --images DIR --out DIR/e --device nope", "--device 'nope' is not a device name"),
    ("classify --checkpoint CK IMG --labels a", "--labels needs at least two"),
    ("classify --checkpoint CK IMG --labels a,b --template 'no slot'", "--template 'no slot' has no slot"),
    ("classify --checkpoint CK IMG --labels a,b --template ''", "--template '' has no slot"),
    ("classify --checkpoint CK IMG --labels a,b --top 0", "argument --top"),
    ("classify --checkpoint CK /nope.png --labels a,b", "cannot load image /nope.png"),
    ("tag IMG --labels a,b", "give --checkpoint CKPT or --db PATH"),
    ("tag IMG --labels a,b --db /nope.db", "no search index at /nope.db"),
    ("index /nope --checkpoint CK --db DIR/i.db", "folder /nope does not exist"),
    ("index DIR --db DIR/i.db", "needs --checkpoint"),
    ("index --db DIR/i.db", "or --from-embeddings OUT"),
    ("index DIR --checkpoint CK --from-embeddings DIR", "not both"),
    ("index DIR --checkpoint CK --db DIR/i.db --batch-size 0", "argument --batch-size"),
    ("index --db DIR/i.db DIR --allow-partial --checkpoint CK", "--allow-partial only applies"),
    ("search --db /nope.db circle", "no search index at /nope.db"),
    ("search --db DIR/i.db circle --top 0", "argument --top"),
    ("search --db DIR/i.db circle --queries FILE", "not both"),
    ("search --db DIR/i.db --queries /nope", "--queries /nope is not a file"),
    ("search --db DIR/i.db ''", "empty query"),
    ("search --db DIR/i.db '\"unbalanced'", "No closing quotation"),
    ("search --db DIR/i.db + -", "two operators in a row"),
    ("search --db DIR/i.db 0:circle", "weight '0' must be a positive number"),
    ("serve --db /nope.db", "no search index at /nope.db"),
    ("serve --port 0", "argument --port"),
    ("serve --port 99999999", "expected a port number in 1..65535"),
    ("serve --max-upload-mb 0", "argument --max-upload-mb"),
    ("convert /nope DIR/c --to hf", "checkpoint /nope does not exist"),
    ("convert CK DIR/c --to nope", "argument --to: invalid choice"),
    ("export onnx --checkpoint /nope --out DIR/x", "checkpoint /nope does not exist"),
    ("explain --checkpoint CK IMG ''", "TEXT is empty"),
    ("explain --checkpoint CK IMG circle --window 0", "argument --window"),
    ("data shapes --out DIR/s --image-size 0", "argument --image-size"),
    ("data shapes --out DIR/s --image-size 7", "image_size must be at least 32"),
    ("data shapes --out DIR/s --train -1", "argument --train"),
    ("data shapes --out FILE", "--out FILE is a file"),
    ("data shard /nope DIR/sh", "dataset folder /nope does not exist"),
    ("data shard DATA DIR/sh --samples-per-shard 0", "argument --samples-per-shard"),
    ("data vqa /nope", "shapes folder /nope does not exist"),
    ("data vqa DIR", "has no split folder with a captions.jsonl"),
    ("data vqa DATA --per-image 0", "argument --per-image"),
    ("data filter /nope DIR/f", "dataset folder /nope does not exist"),
    ("data filter DATA/test FILE", "output folder FILE is a file"),
    ("data filter DATA/test DIR/f --max-aspect 0.5", "--max-aspect must be a number >= 1"),
    ("data filter DATA/test DIR/f --junk-pattern '(['", "--junk-pattern: '([' is not a valid regular expression"),
    ("data filter DATA/test DIR/f --min-words -1", "argument --min-words"),
    ("data capfilt /nope DIR/c --filter CK --captioner CK", "dataset folder /nope does not exist"),
    ("data capfilt DATA/test DIR/c --filter CK", "--captioner is required unless --synthetic 0"),
    ("data capfilt DATA/test DIR/c --filter CK --captioner CK --threshold 2", "argument --threshold"),
    ("data capfilt DATA/test DIR/c --filter CK --captioner CK --top-p 0", "argument --top-p"),
    ("data capfilt DATA/test DIR/c --filter /nope --captioner /nope", "checkpoint /nope does not exist"),
    ("data capfilt DATA/test DIR/c --filter CK --synthetic 0 --threshold auto", "--threshold auto needs --calibrate"),
    ("data capfilt DATA/test DIR/c --filter CK --synthetic 0 --threshold auto --calibrate /nope", "calibration set /nope"),
    ("data corrupt /nope DIR/x", "dataset folder /nope does not exist"),
    ("data corrupt DATA/test DIR/x --fraction 1.5", "--fraction must be in [0, 1]"),
    ("nope", "invalid choice: 'nope'"),
]


@pytest.fixture(scope="module")
def places(tmp_path_factory: pytest.TempPathFactory, shapes_data: Path) -> dict[str, str]:
    root = tmp_path_factory.mktemp("cli")
    (root / "file.txt").write_text("not a folder\n")
    (root / "empty").mkdir()
    return {"CK": str(root / "no-checkpoint-needed"), "IMG": str(sorted((shapes_data / "test" / "images").glob("*.png"))[0]),
            "DATA": str(shapes_data), "DIR": str(root / "empty"), "FILE": str(root / "file.txt")}


def argv(row: str, places: dict[str, str]) -> list[str]:
    import shlex

    for key in ("DATA", "FILE", "DIR", "IMG", "CK"):
        row = row.replace(key, places[key]) if key != "CK" else row.replace(" CK", " " + places[key])
    return shlex.split(row)


@pytest.mark.parametrize("row, needle", ROWS, ids=[r[0] for r in ROWS])
def test_bad_arguments_exit_2_with_one_line(row: str, needle: str, places: dict[str, str], capsys, tiny_checkpoint: Path) -> None:
    places = {**places, "CK": str(tiny_checkpoint)}
    try:
        code = main(argv(row, places))
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    for key in ("FILE", "DIR"):
        needle = needle.replace(key, places[key])
    assert code == 2 and last.startswith("coembed") and "error:" in last and needle in last, err
    assert "Traceback" not in err


def test_no_traceback_reaches_stderr_of_a_real_process(places: dict[str, str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "coembed", "train", "--data", places["DATA"], "--out", places["FILE"], "--set", "lr=nan"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == ["coembed train: error: invalid training setting: lr must be a finite number, got 'nan'"]
