"""HTTP API and web page for search (needs the ``serve`` extra: fastapi, uvicorn)."""
