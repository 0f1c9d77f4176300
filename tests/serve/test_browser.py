"""End to end in a real browser: `coembed serve` on loopback, driven by headless Debian Chromium via Playwright.

Types a `shapes` test caption and checks its image is among the top results, in the order the API gives;
uploads an indexed image and checks it comes back first. Screenshots go to the test's ``artefacts`` folder.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as r:  # only ever 127.0.0.1
        return json.loads(r.read())


@pytest.fixture
def server(served_index: Path, tmp_path: Path):
    port = free_port()
    log = open(tmp_path / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "coembed.cli.main", "serve", "--db", str(served_index),
                             "--host", "127.0.0.1", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(240):
            if proc.poll() is not None:
                pytest.fail(f"server exited: {(tmp_path / 'server.log').read_text()}")
            try:
                get_json(base + "/api/health")
                break
            except OSError:
                time.sleep(0.25)
        else:
            pytest.fail("server did not answer /api/health within 60 s")
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        log.close()


def a_caption_the_model_finds(served_index: Path, shapes_data: Path, base: str) -> tuple[str, str]:
    """A test caption of an indexed image that the API ranks in its top 5 (the model is tiny)."""
    from coembed.io import read_jsonl

    indexed = {p.name for p in (served_index.parent / "images").glob("*.png")}
    for _, line in read_jsonl(shapes_data / "test" / "captions.jsonl"):
        name = Path(line["image"]).name
        for caption in line["captions"] if name in indexed else []:
            top = get_json(base + "/api/search?top=5&q=" + urllib.request.quote(caption))["results"]
            if name in [h["name"] for h in top]:
                return caption, name
    pytest.fail("the tiny checkpoint ranks no test caption's image in its top 5")


def test_search_and_upload_in_chromium(server: str, served_index: Path, shapes_data: Path, tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        message = "Debian chromium is not installed: apt-get install chromium (.ci/run does)"
        pytest.fail(message) if os.environ.get("COEMBED_REQUIRE_BROWSER") == "1" else pytest.skip(message)
    sync_api = pytest.importorskip("playwright.sync_api")
    caption, name = a_caption_the_model_finds(served_index, shapes_data, server)
    artefacts = tmp_path / "artefacts"
    artefacts.mkdir()
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        page.goto(server + "/")
        page.fill("#query", caption)
        page.press("#query", "Enter")
        page.wait_for_selector("#status:has-text('results for')")
        shown = page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.name)")
        api = [h["name"] for h in get_json(server + "/api/search?top=24&q=" + urllib.request.quote(caption))["results"]]
        assert shown == api and name in shown[:5]
        page.wait_for_function("[...document.images].every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(artefacts / "text-search.png"), full_page=True)

        upload = served_index.parent / "images" / name
        page.set_input_files("#upload", str(upload))
        page.wait_for_selector(f"#status:has-text('results for image {name}')")
        first = page.eval_on_selector(".card", "c => [c.dataset.name, c.querySelector('.score').textContent]")
        assert first[0] == name and float(first[1]) == pytest.approx(1.0, abs=1e-3)
        page.screenshot(path=str(artefacts / "upload-search.png"), full_page=True)

        second = page.eval_on_selector(".card:nth-child(2)", "c => c.dataset.name")
        page.click(".card:nth-child(2)")  # click-to-find-similar
        page.wait_for_selector(f"#status:has-text('results for images like {second}')")
        assert second not in page.eval_on_selector_all(".card", "cards => cards.map(c => c.dataset.name)")
        browser.close()
    assert (artefacts / "text-search.png").stat().st_size > 1000
