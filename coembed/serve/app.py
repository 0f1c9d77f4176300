"""The HTTP API and web page over a :class:`~coembed.search.searcher.Searcher` (FastAPI, no globals).

Security rules, each enforced here: files are only ever read for indexed ids (no path parameter
anywhere, so no traversal); uploads have a byte limit (checked before and while reading) and a
pixel limit (checked from the image header, before decoding); the server never fetches URLs; every
malformed request gets a 4xx JSON body. The CLI binds 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import io
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from threading import Lock

from fastapi import FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from coembed.errors import CoembedError, DataError
from coembed.search.batching import TextBatcher
from coembed.search.query import encode_texts
from coembed.search.searcher import Hit, Searcher
from coembed.serve.metrics import Metrics
from coembed.transforms import ImageLoadError, decode_image_bytes, load_image

log = logging.getLogger(__name__)
STATIC = Path(str(resources.files("coembed.serve") / "static"))


@dataclass(kw_only=True)
class ServeConfig:
    """Limits of the HTTP API.

    Attributes:
        max_upload_bytes: largest accepted upload body.
        max_upload_pixels: largest ``width * height`` of an uploaded image.
        max_top: most results per request.
        max_query_chars: longest text query.
        thumb_cache_items: thumbnails kept in memory.
    """

    max_upload_bytes: int = 10 * 1024 * 1024
    max_upload_pixels: int = 25_000_000
    max_top: int = 100
    max_query_chars: int = 2000
    thumb_cache_items: int = 1024


# ----------------------------------------------------------------------------- response schemas
class HitOut(BaseModel):
    id: int
    path: str
    name: str
    score: float
    width: int | None
    height: int | None
    thumbnail: str


class SearchOut(BaseModel):
    query: str
    took_ms: float
    results: list[HitOut]


class HealthOut(BaseModel):
    status: str
    images: int
    vectors: int
    checkpoint: str


class ErrorOut(BaseModel):
    """Body of every 4xx / 5xx answer (see ``_error``)."""

    error: str
    status: int


# Declared on every operation so the OpenAPI schema describes the error answers the handlers give
# (FastAPI's default 422 model is its own validation body, which this app never sends).
ERROR_RESPONSES = {code: {"model": ErrorOut, "description": text} for code, text in (
    (400, "Bad request (an unparsable query or upload)"), (404, "No such indexed image"),
    (413, "Upload over the byte or pixel limit"), (422, "Invalid parameter"), (500, "Internal error"))}


def _hits(hits: list[Hit]) -> list[HitOut]:
    return [HitOut(id=h.id, path=_shown(h.path), name=_shown(Path(h.path).name), score=h.score, width=h.width,
                   height=h.height, thumbnail=f"/api/thumbnail/{h.id}") for h in hits]


def _shown(path: str) -> str:
    """A path as JSON can carry it: a non-UTF-8 name's lone surrogates (which cannot be encoded, so
    the response would fail with a 500) are shown as \\udcXX; the file itself is fetched by id."""
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


# ----------------------------------------------------------------------------- thumbnails
class ThumbnailCache:
    """Small LRU of encoded JPEG thumbnails keyed by (file id, size)."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self._items, self._lock = capacity, OrderedDict(), Lock()

    def get(self, key: tuple[int, int]) -> bytes | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        return None

    def put(self, key: tuple[int, int], data: bytes) -> None:
        with self._lock:
            self._items[key] = data
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)


def _thumbnail_bytes(path: str, size: int) -> bytes:
    image = load_image(path)
    image.thumbnail((size, size))
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


# ----------------------------------------------------------------------------- the app
def create_app(searcher: Searcher, cfg: ServeConfig | None = None) -> FastAPI:
    """Build the app; all state (searcher, limits, caches, metrics) lives on ``app.state``."""
    cfg = cfg or ServeConfig()
    _single_threaded_kernels()
    if searcher.encode_text is None:
        searcher.encode_text = TextBatcher(lambda texts: encode_texts(searcher.loaded, texts)).encode
    app = FastAPI(title="coembed search", version="1", summary="Search indexed images by text or by image.",
                  responses=ERROR_RESPONSES)
    app.state.searcher, app.state.cfg = searcher, cfg
    app.state.thumbs, app.state.metrics = ThumbnailCache(cfg.thumb_cache_items), Metrics()
    _install_error_handlers(app)
    _install_metrics(app)
    _add_search_routes(app, searcher, cfg)
    _add_file_routes(app, searcher, cfg)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def _single_threaded_kernels() -> None:
    """One thread per torch / FAISS call: a server gets its parallelism from concurrent requests, and
    multi-threaded kernels from several requests at once oversubscribe the cores (measured: a tiny
    text encoding took 7 ms on one thread and 176 ms with two on a busy 2-core machine)."""
    import faiss
    import torch

    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)


# SQLite ids are signed 64-bit: a larger path id overflowed inside the store (a 500, found by schemathesis).
FILE_ID = PathParam(ge=-(2**63), le=2**63 - 1, description="id of an indexed image")


def _top(cfg: ServeConfig):
    return Query(10, ge=1, le=cfg.max_top, description="number of results")


def _add_search_routes(app: FastAPI, searcher: Searcher, cfg: ServeConfig) -> None:
    @app.get("/api/search", response_model=SearchOut, summary="Search by a text query expression")
    def search_text(q: str = Query(..., min_length=1, max_length=cfg.max_query_chars,
                                   description='text, or "2:red circle" - "square"'), top: int = _top(cfg)) -> SearchOut:
        start = time.perf_counter()
        hits = searcher.text(q, top)
        return SearchOut(query=q, took_ms=_ms(start), results=_hits(hits))

    @app.post("/api/search/image", response_model=SearchOut, summary="Search by an uploaded image (raw bytes in the body)",
              openapi_extra={"requestBody": {"required": True, "content": {"image/*": {"schema": {"type": "string", "format": "binary"}}}}})
    async def search_image(request: Request, top: int = _top(cfg)) -> SearchOut:
        start = time.perf_counter()
        data = await _read_limited(request, cfg.max_upload_bytes)
        image = _decode_upload(data, cfg)
        hits = await _in_thread(searcher.image, image, top)
        return SearchOut(query="(image)", took_ms=_ms(start), results=_hits(hits))

    @app.get("/api/similar/{file_id}", response_model=SearchOut, summary="Images similar to an indexed image")
    def similar(file_id: int = FILE_ID, top: int = _top(cfg)) -> SearchOut:
        start = time.perf_counter()
        hits = searcher.similar(file_id, top)
        return SearchOut(query=f"similar:{file_id}", took_ms=_ms(start), results=_hits(hits))


def _add_file_routes(app: FastAPI, searcher: Searcher, cfg: ServeConfig) -> None:
    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> HTMLResponse:
        return HTMLResponse((STATIC / "index.html").read_text(encoding="utf-8"))

    @app.get("/api/thumbnail/{file_id}", summary="JPEG thumbnail of an indexed image",
             responses={200: {"content": {"image/jpeg": {}}}})
    def thumbnail(request: Request, file_id: int = FILE_ID, size: int = Query(160, ge=16, le=512)) -> Response:
        row = searcher.store.file(file_id)
        if row is None or row.deleted or row.vector_id is None:
            raise HTTPException(404, f"no indexed image with id {file_id}")
        etag = f'"{row.sha256[:16]}-{size}"'
        headers = {"Cache-Control": "private, max-age=3600", "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        data = request.app.state.thumbs.get((file_id, size))
        if data is None:
            try:
                data = _thumbnail_bytes(row.path, size)
            except ImageLoadError as e:
                raise HTTPException(404, f"image {file_id} is no longer readable: {e.reason}") from None
            request.app.state.thumbs.put((file_id, size), data)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/api/health", response_model=HealthOut, summary="Liveness and index size")
    def health() -> HealthOut:
        counts = searcher.store.counts()
        model = searcher.store.model()
        return HealthOut(status="ok", images=counts["files"], vectors=searcher.store.vector_index().size,
                         checkpoint=model.path if model else "")

    @app.get("/api/metrics", summary="Request counts, errors and latency percentiles per route")
    def metrics(request: Request) -> dict:
        return request.app.state.metrics.snapshot()


async def _in_thread(fn, *args):
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


async def _read_limited(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than ``limit`` bytes without reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPException(413, f"upload is {declared} bytes; at most {limit}")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise HTTPException(413, f"upload is over {limit} bytes")
        chunks.append(chunk)
    if not total:
        raise HTTPException(400, "empty upload: send the image file as the request body")
    return b"".join(chunks)


def _decode_upload(data: bytes, cfg: ServeConfig):
    try:
        return decode_image_bytes(data, name="upload", max_pixels=cfg.max_upload_pixels)
    except ImageLoadError as e:
        status = 413 if e.reason.startswith("too many pixels") else 400
        raise HTTPException(status, f"cannot use the upload: {e.reason}") from None


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 3)


# ----------------------------------------------------------------------------- errors and metrics
def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status_code=status)


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        response = _error(exc.status_code, str(exc.detail))
        for key, value in (exc.headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = [f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in exc.errors()]
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(CoembedError)
    async def user_error(request: Request, exc: CoembedError) -> JSONResponse:
        return _error(404 if isinstance(exc, DataError) else 400, str(exc))

    @app.exception_handler(Exception)
    async def bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error: {type(exc).__name__}")


def _install_metrics(app: FastAPI) -> None:
    app.add_middleware(_MetricsMiddleware, metrics=app.state.metrics)


class _MetricsMiddleware:
    """Plain ASGI middleware (lighter than ``@app.middleware("http")``): status and latency per route."""

    def __init__(self, app, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), [500]

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.record(_route_name(scope["path"]), status[0], time.perf_counter() - start)


def _route_name(path: str) -> str:
    """Metrics group by route template (``/api/similar/{file_id}``), not by raw path."""
    for prefix in ("/api/similar/", "/api/thumbnail/", "/static/"):
        if path.startswith(prefix):
            return prefix + "*"
    return path if path.startswith("/api/") or path == "/" else "other"
