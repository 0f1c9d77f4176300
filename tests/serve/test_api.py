"""The HTTP API through FastAPI's TestClient: searches, thumbnails, limits, and bad requests (4xx JSON, never 500)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from coembed.search.searcher import open_searcher
from coembed.serve.app import ServeConfig, create_app
from tests.helpers import png_header


@pytest.fixture(scope="module")
def client(served_index: Path) -> TestClient:
    app = create_app(open_searcher(served_index), ServeConfig(max_upload_bytes=200_000, max_upload_pixels=1_000_000))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def image_file(served_index: Path, i: int) -> Path:
    return sorted((served_index.parent / "images").glob("*.png"))[i]


def assert_json_error(response, status: int, needle: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == status and needle in body["error"]


def test_text_search(client: TestClient) -> None:
    r = client.get("/api/search", params={"q": '"2:red circle" - "square"', "top": 5})
    assert r.status_code == 200
    body = r.json()
    assert body["query"] == '"2:red circle" - "square"' and len(body["results"]) == 5 and body["took_ms"] >= 0
    hit = body["results"][0]
    assert set(hit) == {"id", "path", "name", "score", "width", "height", "thumbnail"}
    assert hit["thumbnail"] == f"/api/thumbnail/{hit['id']}"


def test_upload_search_returns_the_image_first(client: TestClient, served_index: Path) -> None:
    path = image_file(served_index, 7)
    r = client.post("/api/search/image?top=3", content=path.read_bytes(), headers={"Content-Type": "image/png"})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]
    assert top["name"] == path.name and top["score"] == pytest.approx(1.0, abs=1e-4)


def test_similar_excludes_the_image_itself(client: TestClient) -> None:
    first = client.get("/api/search", params={"q": "circle", "top": 1}).json()["results"][0]
    r = client.get(f"/api/similar/{first['id']}", params={"top": 4})
    assert r.status_code == 200
    assert first["id"] not in [h["id"] for h in r.json()["results"]] and len(r.json()["results"]) == 4


def test_thumbnail_sized_and_cached(client: TestClient) -> None:
    hit = client.get("/api/search", params={"q": "circle", "top": 1}).json()["results"][0]
    r = client.get(hit["thumbnail"], params={"size": 32})
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    assert max(Image.open(io.BytesIO(r.content)).size) <= 32
    assert "max-age" in r.headers["cache-control"]
    again = client.get(hit["thumbnail"], params={"size": 32}, headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


def test_health_metrics_docs_and_page(client: TestClient) -> None:
    health = client.get("/api/health").json()
    assert health["status"] == "ok" and health["images"] == 24 and health["vectors"] == 24
    client.get("/api/search", params={"q": ""})
    routes = client.get("/api/metrics").json()["routes"]
    assert routes["/api/search"]["requests"] >= 1 and routes["/api/search"]["client_errors"] >= 1
    assert "/api/search" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="query"' in page.text
    assert client.get("/static/app.js").status_code == 200


@pytest.mark.parametrize(
    ("method", "url", "status", "needle"),
    [
        ("get", "/api/search", 422, "q"),
        ("get", "/api/search?q=", 422, "q"),
        ("get", "/api/search?q=red%20-", 400, "ends with an operator"),
        ("get", "/api/search?q=%22red", 400, "No closing quotation"),
        ("get", "/api/search?q=red&top=0", 422, "top"),
        ("get", "/api/search?q=red&top=100000", 422, "top"),
        ("get", "/api/search?q=red&top=abc", 422, "top"),
        ("get", "/api/search?q=" + "x" * 3000, 422, "q"),
        ("get", "/api/similar/999999", 404, "no indexed image"),
        ("get", "/api/similar/abc", 422, "file_id"),
        ("get", "/api/similar/-1", 404, "no indexed image"),
        ("get", "/api/thumbnail/999999", 404, "no indexed image"),
        ("get", "/api/thumbnail/1?size=100000", 422, "size"),
        ("get", "/api/thumbnail/..%2F..%2Fetc%2Fpasswd", 404, ""),
        ("get", "/api/thumbnail/%2e%2e", 422, "file_id"),
        ("get", "/api/thumbnail/1/../../etc/passwd", 404, ""),
        ("get", "/static/..%2F..%2Fapp.py", 404, ""),
        ("get", "/static/../app.py", 404, ""),
        ("get", "/api/nothing", 404, ""),
        ("post", "/api/search", 405, ""),
    ],
)
def test_bad_requests_get_4xx_json(client: TestClient, method: str, url: str, status: int, needle: str) -> None:
    assert_json_error(getattr(client, method)(url), status, needle)


def test_bad_uploads(client: TestClient, served_index: Path) -> None:
    assert_json_error(client.post("/api/search/image", content=b""), 400, "empty upload")
    assert_json_error(client.post("/api/search/image", content=b"hello, not an image"), 400, "not an image")
    assert_json_error(client.post("/api/search/image", content=b"x" * 300_000), 413, "at most 200000")
    assert_json_error(client.post("/api/search/image", content=png_header(50_000, 50_000)), 413, "too many pixels")
    good = image_file(served_index, 0).read_bytes()
    assert_json_error(client.post("/api/search/image", content=good[:100]), 400, "cannot use the upload")
    assert_json_error(client.post("/api/search/image?top=0", content=good), 422, "top")


def test_url_like_queries_are_only_text(client: TestClient) -> None:
    # The server never fetches anything: a URL is embedded as words like any other text.
    r = client.get("/api/search", params={"q": "http://127.0.0.1:1/secret", "top": 1})
    assert r.status_code == 200 and len(r.json()["results"]) == 1


def test_no_server_errors_were_recorded(client: TestClient) -> None:
    routes = client.get("/api/metrics").json()["routes"]
    assert all(r["server_errors"] == 0 for r in routes.values()), routes
