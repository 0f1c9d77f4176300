"""``coembed serve``: the search API and web page on one port (FastAPI + uvicorn)."""

from __future__ import annotations

import argparse
import ipaddress

from coembed.cli.common import add_quick_gelu_arg, eprint, port_number, positive_int
from coembed.cli.index import DEFAULT_DB


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve search over HTTP with a web page",
                       description="Serve the search API (OpenAPI docs at /docs) and a web page over an index.")
    p.add_argument("--db", default=DEFAULT_DB, help=f"store file (default {DEFAULT_DB})")
    p.add_argument("--checkpoint", help="checkpoint folder (default: the one recorded in the index)")
    add_quick_gelu_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=port_number, default=8000)
    p.add_argument("--max-upload-mb", type=positive_int, default=10, help="largest upload in MiB")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from coembed.search.searcher import open_searcher
    from coembed.serve.app import ServeConfig, create_app

    searcher = open_searcher(args.db, args.checkpoint, quick_gelu=args.quick_gelu)
    searcher.store.vector_index()  # load or rebuild before the first request
    app = create_app(searcher, ServeConfig(max_upload_bytes=args.max_upload_mb * 1024 * 1024))
    if not _is_loopback(args.host):
        eprint(f"warning: binding {args.host}: the index is reachable from other machines")
    eprint(f"serving {args.db} on http://{args.host}:{args.port} (API docs at /docs)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
