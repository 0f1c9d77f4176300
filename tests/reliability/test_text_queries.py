"""Hostile text queries through `coembed search` and the server's /api/search: results, or a 4xx JSON error; never 500."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coembed.cli.main import main

QUERIES = {
    "emoji": "👩🏽‍💻 👨‍👩‍👧‍👦 🏳️‍🌈",
    "rtl": "دائرة حمراء עיגול red circle",
    "nul": "red\x00circle",
    "control": "red \x1b[31m circle\x7f",
    "combining": "e\u0301\u0301 circle",
    "zero-width": "\u200bcircle\u200d",
    "surrogate": "red \udcff circle",  # a non-UTF-8 argv byte, as surrogateescape gives it
}


@pytest.fixture(scope="module")
def text_index(tiny_checkpoint: Path, shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from coembed.search.indexer import IndexerConfig, index_folder

    root = tmp_path_factory.mktemp("text-index")
    (root / "images").mkdir()
    for src in sorted((shapes_data / "test" / "images").glob("*.png"))[:8]:
        shutil.copy(src, root / "images" / src.name)
    index_folder(root / "index.db", root / "images", tiny_checkpoint, IndexerConfig(progress=False))
    return root / "index.db"


@pytest.fixture(scope="module")
def client(text_index: Path):
    from coembed.search.searcher import open_searcher
    from coembed.serve.app import ServeConfig, create_app

    app = create_app(open_searcher(text_index), ServeConfig(max_query_chars=500))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


@pytest.mark.parametrize("name", list(QUERIES))
def test_server_hostile_text_gives_results(client: TestClient, name: str) -> None:
    r = client.get("/api/search", params={"q": QUERIES[name].encode("utf-8", "replace").decode(), "top": 3})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 3


@pytest.mark.parametrize("q, status, needle", [
    ("", 422, "q:"),
    ("   ", 400, "nothing to search for"),
    ("a" * 501, 422, "q:"),
    ("+ -", 400, "two operators in a row"),
    ('"unbalanced', 400, "No closing quotation"),
    ("circle - circle", 400, "cancel out"),
    ("0:circle", 400, "must be a positive number"),
    (" + ".join(["circle"] * 17), 400, "too many terms"),
])
def test_server_bad_text_is_a_json_4xx(client: TestClient, q: str, status: int, needle: str) -> None:
    r = client.get("/api/search", params={"q": q})
    assert r.status_code == status, r.text
    body = r.json()
    assert body["status"] == status and needle in body["error"]


def test_server_raw_invalid_percent_encoding(client: TestClient) -> None:
    r = client.get("/api/search?q=%ff%fe%00circle")  # not UTF-8 once decoded
    assert r.status_code in (200, 400, 422) and r.headers["content-type"].startswith("application/json")
    assert client.get("/api/metrics").json()  # the server is still up


@pytest.mark.parametrize("name", ["emoji", "rtl", "nul", "surrogate"])
def test_cli_search_hostile_text(name: str, text_index: Path, capsys) -> None:
    assert main(["search", "--db", str(text_index), QUERIES[name], "--top", "2", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"results"' in out and out.count('"path"') == 2


def test_cli_queries_file_with_hostile_lines(text_index: Path, tmp_path: Path, capsys) -> None:
    path = tmp_path / "queries.txt"
    path.write_bytes("\ufeffred circle\r\n\r\n👍🏿 star\r\nעיגול\n".encode())
    assert main(["search", "--db", str(text_index), "--queries", str(path), "--top", "1", "--json"]) == 0
    assert capsys.readouterr().out.count('"query"') == 3
    path.write_bytes(b"red \xff circle\n")
    assert main(["search", "--db", str(text_index), "--queries", str(path)]) == 2
    assert "is not UTF-8 text (byte 4)" in capsys.readouterr().err
