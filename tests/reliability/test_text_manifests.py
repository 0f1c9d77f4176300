"""Hostile captions and manifest lines through every reader of text: JSONL and CSV manifests, the three
tokenizers, `coembed data shard` and a short training run. Each case ends in a counted skip naming
``file:line`` and the field, a clear DataError, or correct output; never a traceback or a silent loss."""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from pathlib import Path

import pytest
from PIL import Image

from coembed.data.datasets import clean_caption, read_samples
from coembed.errors import DataError

LONG = "a red circle " * 7693  # 100,009 characters
HOSTILE = {
    "emoji": "👩🏽‍💻 and 👨‍👩‍👧‍👦 under 🏳️‍🌈 👍🏿",
    "rtl": "دائرة حمراء left of עיגול אדום",
    "combining": "e\u0301\u0301\u0301 Z\u0351\u0352\u0353 circle",
    "long": LONG,
    "nul": "a red\x00circle",
    "control": "a \x1b[31mred\x7f circle\x85",
    "surrogate": "a \ud800 circle",
}
HOSTILE_KEPT = {"emoji": HOSTILE["emoji"], "rtl": HOSTILE["rtl"], "combining": HOSTILE["combining"], "long": LONG.strip(),
                "nul": "a red circle", "control": "a [31mred circle", "surrogate": "a \ufffd circle"}


def folder(tmp_path: Path, n: int = 3) -> Path:
    root = tmp_path / "ds"
    root.mkdir(exist_ok=True)
    for i in range(n):
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(root / f"{i}.png")
    return root


def write_jsonl(root: Path, lines: list[str | bytes], *, prefix: bytes = b"", end: bytes = b"\n") -> None:
    raw = [x if isinstance(x, bytes) else x.encode("utf-8", "surrogatepass") for x in lines]
    (root / "captions.jsonl").write_bytes(prefix + end.join(raw) + end)


def J(**obj) -> str:
    return json.dumps(obj)


GOOD = J(image="2.png", caption="a good caption")

# (name, first line, skip category or None for kept, text the reason must contain)
JSONL_LINES = [
    ("empty caption list", J(image="0.png", captions=[]), "empty caption", ""),
    ("empty string", J(image="0.png", caption=""), "empty caption", ""),
    ("whitespace only", J(image="0.png", caption=" \t\u3000\xa0 "), "empty caption", ""),
    ("zero-width only", J(image="0.png", caption="\u200b\u200d\ufeff"), "empty caption", ""),
    ("control only", J(image="0.png", caption="\x00\x01\x7f"), "empty caption", ""),
    ("caption is a number", J(image="0.png", caption=5), "wrong type", "'caption' must be a string, got int"),
    ("caption is a dict", J(image="0.png", caption={"a": 1}), "wrong type", "'caption' must be a string, got dict"),
    ("caption is null", J(image="0.png", caption=None), "missing field", "'captions'"),
    ("captions is a number", J(image="0.png", captions=5), "wrong type", "'captions' must be a list of strings, got int"),
    ("captions is true", J(image="0.png", captions=True), "wrong type", "got bool"),
    ("captions is a dict", J(image="0.png", captions={}), "wrong type", "got dict"),
    ("captions holds a number", J(image="0.png", captions=["ok", 3]), "wrong type", "holds int 3"),
    ("caption NaN", '{"image": "0.png", "caption": NaN}', "wrong type", "got float nan"),
    ("no caption field", J(image="0.png"), "missing field", "'caption'"),
    ("no image field", J(caption="x"), "missing field", "'image'"),
    ("image is a list", J(image=["0.png"], caption="x"), "wrong type", "'image' must be a non-empty string"),
    ("image is empty", J(image=" ", caption="x"), "wrong type", "'image'"),
    ("not an object", "[1, 2]", "wrong type", "expected a JSON object, got list"),
    ("invalid JSON", '{"image": "0.png", "caption": ', "invalid JSON", "column"),
    ("nested 100k deep", "[" * 100_000 + "]" * 100_000, "invalid JSON", "nested too deeply"),
    ("invalid UTF-8", b'{"image": "0.png", "caption": "caf\xe9"}', "invalid UTF-8", "byte 34"),
    ("image does not exist", J(image="nope.png", caption="x"), "missing file", "no such image file"),
    ("image name with NUL", J(image="0\x00.png", caption="x"), "cannot access file", ""),
] + [(f"hostile {k}", J(image="0.png", caption=v) if k != "surrogate" else '{"image": "0.png", "caption": "a \\ud800 circle"}',
      None, HOSTILE_KEPT[k]) for k, v in HOSTILE.items()]


@pytest.mark.parametrize("name, line, category, needle", JSONL_LINES, ids=[r[0] for r in JSONL_LINES])
def test_jsonl_line(tmp_path: Path, name: str, line: str, category: str | None, needle: str) -> None:
    root = folder(tmp_path)
    write_jsonl(root, [line, GOOD])
    samples, report = read_samples(root)
    images = {s.image: s for s in samples}
    assert images["2.png"].captions == ("a good caption",)
    if category is None:
        assert report.total == 0 and images["0.png"].captions == (needle,)
        return
    assert "0.png" not in images and report.by_reason == {category: 1}
    where, reason = report.examples[0]
    assert where in ("captions.jsonl:1", "0.png", "nope.png", "0\x00.png") and reason.startswith(category) and needle in reason


def test_jsonl_bom_crlf_and_blank_lines(tmp_path: Path) -> None:
    root = folder(tmp_path)
    write_jsonl(root, [J(image="0.png", caption="first"), "", "   ", J(image="1.png", caption="second")],
                prefix=b"\xef\xbb\xbf", end=b"\r\n")
    samples, report = read_samples(root)
    assert [(s.image, s.captions) for s in samples] == [("0.png", ("first",)), ("1.png", ("second",))] and report.total == 0


def test_jsonl_duplicates_are_merged_and_counted(tmp_path: Path) -> None:
    root = folder(tmp_path)
    write_jsonl(root, [J(image="0.png", caption="x", k=1), J(image="0.png", caption="x"), J(image="0.png", captions=["y", "x"], k=2)])
    samples, report = read_samples(root)
    assert [(s.image, s.captions, s.meta) for s in samples] == [("0.png", ("x", "y"), {"k": 1})]
    assert report.total == 0 and report.merged == 2 and report.duplicate_captions == 2


def test_empty_and_useless_manifests_are_errors(tmp_path: Path) -> None:
    root = folder(tmp_path)
    (root / "captions.jsonl").write_bytes(b"")
    with pytest.raises(DataError, match="captions.jsonl is empty"):
        read_samples(root)
    write_jsonl(root, [J(image="0.png", caption=5)])
    with pytest.raises(DataError, match=r"no usable samples in .*captions.jsonl: skipped 1 sample \(wrong type 1\): captions.jsonl:1"):
        read_samples(root)


# (name, CSV bytes after the header, expected samples, expected skips by reason)
CSV_CASES = [
    ("crlf and quoted newline", b'0.png,hello\r\n1.png,"multi\r\nline"\r\n', {"0.png": ("hello",), "1.png": ("multi line",)}, {}),
    ("empty caption", b"0.png,hello\n1.png,\n2.png,  \n", {"0.png": ("hello",)}, {"empty caption": 2}),
    ("invalid UTF-8 row", b"0.png,caf\xe9\n1.png,ok\n", {"1.png": ("ok",)}, {"invalid UTF-8": 1}),
    ("NUL in caption", b"0.png,a\x00b\n", {"0.png": ("a b",)}, {}),
    ("200k caption", b"0.png," + b"a" * 200_000 + b"\n", {"0.png": ("a" * 200_000,)}, {}),
    ("duplicate rows", b"0.png,a\n0.png,a\n0.png,b\n", {"0.png": ("a", "b")}, {}),
    ("missing image", b",a\n1.png,b\n", {"1.png": ("b",)}, {"missing field": 1}),
    ("emoji and RTL", "0.png,👩🏽‍💻 עיגול\n".encode(), {"0.png": ("👩🏽‍💻 עיגול",)}, {}),
]


@pytest.mark.parametrize("name, body, want, skips", CSV_CASES, ids=[c[0] for c in CSV_CASES])
def test_csv_rows(tmp_path: Path, name: str, body: bytes, want: dict, skips: dict) -> None:
    root = folder(tmp_path)
    (root / "captions.csv").write_bytes(b"\xef\xbb\xbffilepath,title\n" + body)
    samples, report = read_samples(root)
    assert {s.image: s.captions for s in samples} == want and report.by_reason == skips
    if skips:
        assert all(where.startswith("captions.csv:") or where.endswith(".png") for where, _ in report.examples)


@pytest.mark.parametrize("body, needle", [
    (b"", "captions.csv is empty"),
    (b"path,caption\n0.png,a\n", "missing column(s) filepath, title"),
    (b'filepath,title\n0.png,"unclosed\n1.png,b\n', "captions.csv:2: malformed CSV"),
])
def test_csv_file_errors(tmp_path: Path, body: bytes, needle: str) -> None:
    root = folder(tmp_path)
    (root / "captions.csv").write_bytes(body)
    with pytest.raises(DataError) as e:
        read_samples(root)
    assert needle in str(e.value)


def test_clean_caption_keeps_emoji_sequences_and_bidi() -> None:
    assert clean_caption("👨‍👩‍👧 \u200fשלום\u200e x") == "👨‍👩‍👧 \u200fשלום\u200e x"  # ZWJ and RLM/LRM kept inside text
    assert clean_caption("\u200f\u200e") == ""


# ----------------------------------------------------------------------------- tokenizers
CAPTIONS = ["", " \t\n ", *HOSTILE.values(), "\ufeffhello", "<eot> <end_of_text> [SEP] <|endoftext|>"]


def tokenizers(minilm_folder: Path) -> dict:
    from coembed.interop.hf_tokenizer import read_hf_tokenizer
    from coembed.tokenizer import Tokenizer
    from coembed.tokenizer_clip import ClipTokenizer

    bpe = Tokenizer.train(["a red circle", "a blue square"] * 20 + [HOSTILE["emoji"], HOSTILE["rtl"]], vocab_size=300)
    return {"bpe": bpe, "clip": ClipTokenizer.default(), "hf": read_hf_tokenizer(minilm_folder)}


def test_tokenizers_encode_every_hostile_caption(minilm_folder: Path) -> None:
    for name, tok in tokenizers(minilm_folder).items():
        out = tok(CAPTIONS, context_length=24)
        assert out.shape[0] == len(CAPTIONS) and out.shape[1] <= 24, name
        if name != "bpe":
            assert out.shape[1] == 24, name  # CLIP and HF pad to the context length
        start = time.perf_counter()
        long_row = tok([LONG], context_length=77)
        assert time.perf_counter() - start < 1.0, f"{name}: a 100k-character caption took too long"
        assert long_row.shape == (1, 77), name


def test_bpe_tokenizer_rows_end_with_eot() -> None:
    from coembed.tokenizer import EOT_ID, SOT_ID, Tokenizer

    tok = Tokenizer.train(["a red circle"] * 10, vocab_size=270)
    out = tok(CAPTIONS, context_length=16)
    lengths = (out != 0).sum(1)
    assert (out[:, 0] == SOT_ID).all() and all(out[i, lengths[i] - 1] == EOT_ID for i in range(len(CAPTIONS)))
    assert EOT_ID not in out[-1, 1:-1].tolist() or out[-1].tolist().count(EOT_ID) == 1  # "<eot>" text injects no special id


# ----------------------------------------------------------------------------- shard writer and training
def hostile_dataset(shapes_data: Path, root: Path) -> Path:
    """32 `shapes` test images whose manifest holds every hostile caption and bad line."""
    src = shapes_data / "test"
    lines = [json.loads(x) for x in (src / "captions.jsonl").read_text().splitlines()]
    (root / "images").mkdir(parents=True)
    out = []
    for i, obj in enumerate(lines[:32]):
        shutil.copy(src / obj["image"], root / obj["image"])
        text = list(HOSTILE.values())[i % len(HOSTILE)]
        out.append(json.dumps({"image": obj["image"], "captions": [text, obj["captions"][0]], "note": "x \ud800"}).encode())
    out += [b'{"image": "images/nope.png", "caption": "x"}', b'{"image": 5}', b"\xff\xfe", b'{"image": "images/a.png", "caption": ""}']
    (root / "captions.jsonl").write_bytes(b"\n".join(out) + b"\n")
    return root


def test_shard_writer_keeps_hostile_captions(shapes_data: Path, tmp_path: Path) -> None:
    from coembed.data.shards import write_shards

    src = hostile_dataset(shapes_data, tmp_path / "hostile")
    stats = write_shards(src, tmp_path / "shards", 16)
    assert stats.skipped.by_reason == {"missing file": 1, "wrong type": 1, "invalid UTF-8": 1, "empty caption": 1}
    with tarfile.open(sorted((tmp_path / "shards").glob("*.tar"))[0]) as tar:
        metas = [json.loads(tar.extractfile(m).read()) for m in tar.getmembers() if m.name.endswith(".json")]
    assert metas[0]["note"] == "x \ud800" and metas[0]["captions"][0] == HOSTILE_KEPT["emoji"]


def test_training_on_hostile_captions_finishes_and_reports_skips(shapes_data: Path, tmp_path: Path, tiny_settings: dict) -> None:
    from coembed.train.config import TrainConfig
    from coembed.train.loop import train

    src = hostile_dataset(shapes_data, tmp_path / "hostile")
    cfg = TrainConfig(data=str(src), out=str(tmp_path / "run"), **{**tiny_settings, "batch_size": 8, "max_steps": 2,
                                                                   "val_samples": 0, "warmup_steps": 0})
    result = train(cfg)
    assert result.steps == 2 and result.checkpoint.is_dir()
    assert result.skipped.by_reason == {"missing file": 1, "wrong type": 1, "invalid UTF-8": 1, "empty caption": 1}
