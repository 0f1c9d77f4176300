"""The hostile-image corpus through `coembed embed`, `coembed index` (and --from-embeddings), the
single-image commands (search --image, tag, classify, explain) and the HTTP server.

Folder commands must finish, keep the good images (the non-UTF-8 name included), count and report
every bad one with its reason, and rerun incrementally; single-image commands must exit 2 with a
one-line ``error:`` naming the file; the server answers 4xx JSON for bad uploads and files, never 500.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coembed.cli.main import main
from coembed.search.searcher import open_searcher
from coembed.serve.app import ServeConfig, create_app
from tests.reliability.hostile_images import (NON_UTF8, OK, REJECT, UNREADABLE, Case, deny_reading, expected_skips,
                                              write_corpus)

GOOD = 6
CLI_COMMANDS = ("search", "tag", "classify", "explain")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory, shapes_data: Path) -> tuple[Path, dict[str, Case]]:
    """The corpus plus GOOD shapes images, in one folder."""
    root = tmp_path_factory.mktemp("hostile-photos")
    cases = write_corpus(root)
    for src in sorted((shapes_data / "test" / "images").glob("*.png"))[:GOOD]:
        shutil.copy(src, root / src.name)
    return root, cases


@pytest.fixture
def denied(monkeypatch) -> None:
    deny_reading(monkeypatch, {UNREADABLE})


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def listed_ok(cases: dict[str, Case]) -> set[str]:
    return {n for n, c in cases.items() if c.outcome == OK and c.listed}


def skipped_by_file(files: list[dict]) -> dict[str, str]:
    return {os.path.basename(f["path"]): f["reason"].split(":", 1)[0] for f in files}


@pytest.mark.usefixtures("denied")
def test_coembed_index_hostile_folder(photos, tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    root, cases = photos
    db = tmp_path / "index.db"
    code, out, err = cli(capsys, "index", root, "--checkpoint", tiny_checkpoint, "--db", db, "--no-progress", "--json")
    assert code == 0, err
    first = json.loads(out)
    bad = expected_skips(cases, listed_only=True)
    assert first["found"] == len(cases) - 1 + GOOD  # folder.jpg is a folder: not listed
    assert first["skipped"] == len(bad) and skipped_by_file(first["skipped_files"]) == bad
    assert first["skipped_by_reason"] == dict(Counter(bad.values()))
    assert first["embedded"] + first["reused"] == len(listed_ok(cases)) + GOOD
    assert first["reused"] >= 2  # control.png, the long and the non-UTF-8 name hold the same bytes
    assert err.startswith(f"skipped {len(bad)} samples (")
    # The rerun reads nothing and lists the same bad files, from the store.
    code, out, err = cli(capsys, "index", root, "--checkpoint", tiny_checkpoint, "--db", db, "--no-progress", "--json")
    again = json.loads(out)
    assert code == 0 and again["embedded"] == again["reused"] == 0
    assert skipped_by_file(again["skipped_files"]) == bad and again["unchanged"] == first["found"] - _unrecorded(bad)
    # Every good file is searchable; the non-UTF-8 name is shown, escaped, in JSON and in the table.
    code, out, _ = cli(capsys, "search", "red", "--db", db, "--top", 100, "--json")
    paths = {os.path.basename(h["path"]) for h in json.loads(out)["results"]}
    assert code == 0 and paths == listed_ok(cases) | {p.name for p in root.glob("[0-9]*.png")}
    code, out, _ = cli(capsys, "search", "red", "--db", db, "--top", 100)
    assert code == 0 and "caf\\udce9.png" in out


def _unrecorded(bad: dict[str, str]) -> int:
    """Bad files the store cannot keep a row for (it keys rows by size and mtime): the unreadable
    file whose hash could not be read, broken links and loops that cannot be stat'ed."""
    return sum(1 for r in bad.values() if r in ("permission denied", "broken symlink", "cannot access file"))


@pytest.mark.usefixtures("denied")
def test_coembed_embed_then_index_from_embeddings(photos, tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    root, cases = photos
    out_dir = tmp_path / "emb"
    argv = ("embed", "--checkpoint", tiny_checkpoint, "--images", root, "--out", out_dir, "--no-progress", "--json",
            "--shard-size", 8)
    code, out, err = cli(capsys, *argv)
    assert code == 0, err
    report = json.loads(out)
    bad = expected_skips(cases, listed_only=True)
    assert report["skipped"] == len(bad) and report["skipped_by_reason"] == dict(Counter(bad.values()))
    rows = [json.loads(line) for p in sorted((out_dir / "metadata").glob("*.jsonl")) for line in p.read_text(encoding="utf-8").splitlines()]
    assert {os.path.basename(r["image_path"]) for r in rows} == listed_ok(cases) | {p.name for p in root.glob("[0-9]*.png")}
    assert any(r["image_path"] == NON_UTF8 for r in rows)  # the JSON escape reads back as the same str
    code, out, err = cli(capsys, *argv)  # rerun: every partition is already done
    again = json.loads(out)
    assert code == 0 and again["embedded_now"] == 0 and again["skipped"] == 0 and again["skipped_earlier"] == len(bad)
    db = tmp_path / "merged.db"
    code, out, err = cli(capsys, "index", "--from-embeddings", out_dir, "--db", db, "--json")
    assert code == 0, err
    assert json.loads(out)["rows"] == len(rows)
    code, out, _ = cli(capsys, "search", "red", "--db", db, "--top", 100, "--json")
    assert code == 0 and {os.path.basename(h["path"]) for h in json.loads(out)["results"]} == {
        os.path.basename(r["image_path"]) for r in rows}


@pytest.fixture(scope="module")
def served(photos, tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An index of the corpus folder (built as root: the unreadable file is indexed too)."""
    from coembed.search.indexer import IndexerConfig, index_folder

    db = tmp_path_factory.mktemp("served") / "index.db"
    index_folder(db, photos[0], tiny_checkpoint, IndexerConfig(progress=False))
    return db


def _single_image_argv(command: str, image: Path, checkpoint: Path, db: Path, tmp_path: Path) -> list:
    if command == "search":
        return ["search", "--image", image, "--db", db, "--json"]
    if command == "explain":
        return ["explain", image, "a red circle", "--checkpoint", checkpoint, "--out", tmp_path / "x.png", "--json",
                "--method", "occlusion"]
    return [command, image, "--labels", "circle,square", "--checkpoint", checkpoint, "--json"]


@pytest.mark.usefixtures("denied")
@pytest.mark.parametrize("command", CLI_COMMANDS)
def test_single_image_commands(command: str, photos, served: Path, tiny_checkpoint: Path, tmp_path: Path, capsys) -> None:
    """Every reject case: exit 2, one line ``coembed CMD: error: cannot load image PATH: reason``.
    The ok cases (search and tag only, to stay fast; one for explain and classify) exit 0."""
    _, cases = photos
    for name, case in cases.items():
        if case.outcome == OK and (command in ("explain", "classify") and name != "exif_rot6.jpg"):
            continue
        code, out, err = cli(capsys, *_single_image_argv(command, case.path, tiny_checkpoint, served, tmp_path))
        if case.outcome == OK:
            assert code == 0 and out.strip(), (name, err)
            continue
        assert code == 2, (name, out, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in err, (name, err)
        shown = str(case.path).encode("utf-8", "backslashreplace").decode("utf-8")
        assert lines[0].startswith(f"coembed {command}: error: cannot load image {shown}: {case.reason}"), (name, lines[0])


# ----------------------------------------------------------------------------- the server
@pytest.fixture(scope="module")
def client(served: Path):
    app = create_app(open_searcher(served), ServeConfig(max_upload_bytes=200_000, max_upload_pixels=1_000_000))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def test_upload_every_case(client: TestClient, photos) -> None:
    _, cases = photos
    for name, case in cases.items():
        if not case.path.is_file() or name == UNREADABLE:
            continue  # no bytes to send (links, loops, the folder); root reads the unreadable file's good bytes
        r = client.post("/api/search/image?top=3", content=case.path.read_bytes(), headers={"Content-Type": "image/png"})
        if case.outcome == OK:
            assert r.status_code == 200 and len(r.json()["results"]) == 3, (name, r.text)
            continue
        want = {"too many pixels": 413, "empty file": 400}.get(case.reason, 400)
        assert r.status_code == want and r.json() == {"error": r.json()["error"], "status": want}, (name, r.text)
        assert r.json()["error"].startswith("cannot use the upload: " if case.reason != "empty file" else "empty upload")


def test_results_with_a_non_utf8_name(client: TestClient) -> None:
    r = client.get("/api/search", params={"q": "red", "top": 100})
    assert r.status_code == 200, r.text
    names = {h["name"] for h in r.json()["results"]}
    assert "caf\\udce9.png" in names  # shown escaped; its thumbnail is fetched by id
    hit = next(h for h in r.json()["results"] if h["name"] == "caf\\udce9.png")
    assert client.get(hit["thumbnail"]).status_code == 200


def test_thumbnails_of_files_that_turned_hostile(client: TestClient, served: Path, photos, monkeypatch) -> None:
    """Indexed files later truncated, replaced by text, removed, made unreadable or a symlink loop:
    404 with a JSON error naming the reason, never 500."""
    from coembed.search.store import Store

    root, cases = photos
    with Store.open(served) as store:
        ids = {os.path.basename(p): store.lookup(p).id for p in store.live_paths_under(str(root.resolve()))}
    spoil = {"wide_10000x1.png": lambda p: p.write_bytes(p.read_bytes()[:-30]),  # into the pixel data
             "cmyk.jpg": lambda p: p.write_text("not a jpeg"),
             "gray16.png": lambda p: p.unlink(),
             "one_pixel.png": lambda p: (p.unlink(), os.symlink(p.name, p)),
             "animated.gif": lambda p: None}  # made unreadable below
    reasons = {"wide_10000x1.png": "truncated or corrupt", "cmyk.jpg": "not an image", "gray16.png": "file not found",
               "one_pixel.png": "cannot access file", "animated.gif": "permission denied"}
    saved = {n: (root / n).read_bytes() for n in spoil}
    try:
        with monkeypatch.context() as m:
            deny_reading(m, {"animated.gif"})
            for name, act in spoil.items():
                act(root / name)
                r = client.get(f"/api/thumbnail/{ids[name]}", params={"size": 64})
                assert r.status_code == 404 and reasons[name] in r.json()["error"], (name, r.text)
                assert r.json()["error"].startswith(f"image {ids[name]} is no longer readable: ")
    finally:
        for name, data in saved.items():
            (root / name).unlink(missing_ok=True)
            (root / name).write_bytes(data)
    # Files that were bad when indexed have no vector: 404 too.
    with Store.open(served) as store:
        bad_id = store.lookup(str((root / "truncated.png").resolve())).id
    assert client.get(f"/api/thumbnail/{bad_id}").status_code == 404


@pytest.mark.parametrize("path", [
    "/api/thumbnail/../../etc/passwd", "/api/thumbnail/..%2F..%2Fetc%2Fpasswd", "/api/thumbnail/%2e%2e/%2e%2e/etc/passwd",
    "/static/../../../../etc/passwd", "/static/..%2F..%2F..%2F..%2Fetc%2Fpasswd", "/static/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/static/..%5c..%5cetc%5cpasswd", "/api/thumbnail/-1", "/api/thumbnail/99999999", "/api/similar/..%2Fetc",
])
def test_path_traversal(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code in (400, 404, 422), (path, r.status_code)
    assert "root:" not in r.text and r.headers["content-type"].startswith("application/json")
