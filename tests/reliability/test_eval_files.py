"""Hostile side files of an evaluation split (``meta.json``, ``hard_negatives.jsonl``, ``winoground.jsonl``):
each is one ``coembed eval`` error naming the file, line and field, never a traceback or a silently
changed benchmark."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from coembed.cli.main import main
from coembed.errors import DataError
from coembed.io import read_jsonl

GOOD_NEG = {"image": "x.png", "positive": "a red circle", "negatives": [{"caption": "a blue circle", "type": "color"}]}

# (file name, content bytes, words the one-line error must hold)
CASES = [
    ("meta.json", b"{not json", ["meta.json", "not valid UTF-8 JSON"]),
    ("meta.json", b"\xff\xfe{}", ["meta.json", "not valid UTF-8 JSON"]),
    ("meta.json", b"[1, 2]", ["meta.json", "expected a JSON object, got list"]),
    ("hard_negatives.jsonl", b'{"image": "x.png"}\n', ["hard_negatives.jsonl:1", "'positive'"]),
    ("hard_negatives.jsonl", json.dumps({**GOOD_NEG, "positive": 3}).encode() + b"\n", ["hard_negatives.jsonl:1", "'positive'", "int"]),
    ("hard_negatives.jsonl", json.dumps({**GOOD_NEG, "negatives": [{"type": "color"}]}).encode() + b"\n",
     ["hard_negatives.jsonl:1", "'negatives'"]),
    ("hard_negatives.jsonl", json.dumps({**GOOD_NEG, "negatives": "a blue circle"}).encode() + b"\n",
     ["hard_negatives.jsonl:1", "'negatives'"]),
    ("hard_negatives.jsonl", json.dumps(GOOD_NEG).encode() + b"\n\xc3\x28 broken\n", ["hard_negatives.jsonl:2", "not valid UTF-8"]),
    ("hard_negatives.jsonl", json.dumps(GOOD_NEG).encode() + b"\n{oops\n", ["hard_negatives.jsonl:2", "invalid JSON"]),
    ("winoground.jsonl", b"\"a string\"\n", ["winoground.jsonl:1", "expected a JSON object"]),
    ("winoground.jsonl", b"{\"image_0\": \"a.png\"}\n\xff\n", ["winoground.jsonl:2", "not valid UTF-8"]),
]


@pytest.mark.parametrize(("name", "content", "words"), CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_hostile_eval_file_is_one_clear_error(name: str, content: bytes, words: list[str], shapes_data: Path,
                                              tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    data = tmp_path / "data"  # each case spoils one file of its own copy of the data set
    shutil.copytree(shapes_data, data)
    target = data / name if name == "meta.json" else data / "test" / name
    target.write_bytes(content)
    code = main(["eval", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--skip", "linear_probe"])
    lines = capsys.readouterr().err.strip().splitlines()  # progress lines come first
    assert code == 2
    assert "Traceback" not in "\n".join(lines) and lines[-1].startswith("coembed eval: error:"), lines
    err = lines[-1]
    for word in words:
        assert word in err, (word, err)


def test_read_jsonl_ignores_a_bom_and_names_a_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n{"b": 2}\n')
    assert list(read_jsonl(path)) == [(1, {"a": 1}), (3, {"b": 2})]
    path.write_bytes(b'{"a": 1}\n' + b"[" * 100_000 + b"\n")
    with pytest.raises(DataError, match=r"x.jsonl:2: invalid JSON"):
        list(read_jsonl(path))
