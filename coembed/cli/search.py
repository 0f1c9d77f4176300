"""``coembed search``: query a store by text, image or a weighted combination."""

from __future__ import annotations

import argparse

from coembed.cli.common import add_quick_gelu_arg, positive_int, print_json
from coembed.cli.index import DEFAULT_DB


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("search", help="search an index by text or image",
                       description='Search an index. QUERY is text, or terms joined by + and - with optional weights: '
                                   '"2:red circle" - "square". Quote the whole expression or pass it as separate words.')
    p.add_argument("query", nargs="*", metavar="QUERY", help="query text or expression")
    p.add_argument("--db", default=DEFAULT_DB, help=f"store file (default {DEFAULT_DB})")
    p.add_argument("--image", action="append", default=[], metavar="PATH", help="search by an image file (repeatable; added to the text)")
    p.add_argument("--queries", metavar="FILE", help="run each line of FILE as a separate query")
    p.add_argument("--top", type=positive_int, default=10, help="results per query (default 10)")
    p.add_argument("--checkpoint", help="checkpoint to embed queries with (default: the one recorded in the index)")
    add_quick_gelu_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coembed.search.query import query_vector
    from coembed.search.searcher import open_searcher
    from coembed.transforms import load_image

    queries = _queries(args)
    images = [load_image(p) for p in args.image]
    searcher = open_searcher(args.db, args.checkpoint, quick_gelu=args.quick_gelu)
    results = []
    for text, terms in queries:
        hits = searcher.search_vector(query_vector(searcher.loaded, terms, images), args.top)
        results.append({"query": text, "images": list(args.image), "results": [h.to_dict() for h in hits]})
    print_json(results if args.queries else results[0]) if args.json else _print_tables(results)
    return 0


def _queries(args: argparse.Namespace) -> list[tuple[str, list]]:
    """(label, parsed terms) per query; parse errors come before the model is loaded."""
    import re
    from pathlib import Path

    from coembed.errors import ConfigError, DataError
    from coembed.search.query import parse_query, parse_tokens

    if args.queries and args.query:
        raise ConfigError("give either a QUERY or --queries FILE, not both")
    if args.queries:
        path = Path(args.queries)
        if not path.is_file():
            raise DataError(f"--queries {path} is not a file")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise DataError(f"--queries {path} is not UTF-8 text (byte {e.start})") from None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        if not lines:
            raise DataError(f"--queries {path} holds no query")
        return [(line, parse_query(line)) for line in lines]
    if args.query:
        # Arguments that were not UTF-8 bytes arrive with surrogates (surrogateescape), which no
        # tokenizer or stdout can encode: read those bytes as U+FFFD, as a browser would.
        args.query = [re.sub("[\ud800-\udfff]", "\ufffd", q) for q in args.query]
        # One argument may be a whole quoted expression; several are the words of one.
        terms = parse_query(args.query[0]) if len(args.query) == 1 else parse_tokens(args.query)
        return [(" ".join(args.query), terms)]
    if not args.image:
        raise ConfigError("give a QUERY, --image PATH or --queries FILE")
    return [("", [])]


def _print_tables(results: list[dict]) -> None:
    for i, result in enumerate(results):
        if len(results) > 1 or i:
            print(f"{'' if i == 0 else chr(10)}query: {result['query']}")
        print(f"{'rank':>4}  {'score':>7}  {'size':>9}  path")
        for rank, hit in enumerate(result["results"], start=1):
            size = f"{hit['width']}x{hit['height']}" if hit["width"] else "?"
            print(f"{rank:>4}  {hit['score']:>7.4f}  {size:>9}  {hit['path']}")
