"""``coembed index``: embed every image under a folder into a search store (incremental, resumable), or
fill the store from the output of ``coembed embed`` (``--from-embeddings OUT``)."""

from __future__ import annotations

import argparse

from coembed.cli.common import CHECKPOINT_HELP, add_quick_gelu_arg, eprint, positive_int, print_json

DEFAULT_DB = "coembed-index.db"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("index", help="index a folder of images for search",
                       description="Embed the images under DIR into a SQLite + FAISS store. Reruns only embed new or "
                                   "changed files; renamed and duplicate files reuse vectors; vanished files are soft-deleted. "
                                   "With --from-embeddings OUT, insert the finished partitions of `coembed embed --out OUT` instead.")
    p.add_argument("folder", metavar="DIR", nargs="?", help="folder of images (searched recursively)")
    p.add_argument("--checkpoint", help=CHECKPOINT_HELP + "; required with DIR, checked against the embeddings with --from-embeddings")
    add_quick_gelu_arg(p)
    p.add_argument("--from-embeddings", metavar="OUT", help="output folder of `coembed embed` to insert instead of embedding DIR")
    p.add_argument("--allow-partial", action="store_true", help="with --from-embeddings: insert the finished partitions even if others are not")
    p.add_argument("--db", default=DEFAULT_DB, help=f"store file (default {DEFAULT_DB}); the FAISS index is written beside it")
    p.add_argument("--batch-size", type=positive_int, default=64, help="images embedded and committed together")
    p.add_argument("--max-pixels", type=positive_int, default=50_000_000, help="skip images larger than this (decompression bombs)")
    p.add_argument("--exact-threshold", type=positive_int, help="largest index searched exactly (default 100000)")
    p.add_argument("--approximate", choices=("hnsw", "ivf"), help="index type above the threshold (default hnsw)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the run summary as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coembed.search.indexer import IndexerConfig, index_folder

    _check_sources(args)
    if args.from_embeddings:
        return _run_merge(args)
    cfg = IndexerConfig(batch_size=args.batch_size, max_pixels=args.max_pixels, progress=not args.no_progress)
    _apply_index_config(args)
    report = index_folder(args.db, args.folder, args.checkpoint, cfg, quick_gelu=args.quick_gelu)
    _summarise(args, report.to_dict(), f"indexed {report.root} into {args.db}: {report.found} images found, "
               f"{report.embedded} embedded, {report.reused} reused by content, {report.unchanged} unchanged, "
               f"{report.deleted} removed ({report.images_per_second:.1f} images/s)")
    if report.skipped.total:
        eprint(report.skipped.summary(max_examples=20))
    return 0


def _summarise(args: argparse.Namespace, summary: dict, line: str) -> None:
    """The run's summary as JSON on stdout with --json, else one line on stderr."""
    if args.json:
        print_json({"db": str(args.db), **summary})
    else:
        eprint(line)


def _check_sources(args: argparse.Namespace) -> None:
    from coembed.errors import ConfigError

    if args.from_embeddings and args.folder:
        raise ConfigError(f"give either DIR ({args.folder}) or --from-embeddings ({args.from_embeddings}), not both")
    if not args.from_embeddings and not args.folder:
        raise ConfigError("give a folder DIR to index, or --from-embeddings OUT")
    if args.folder and not args.checkpoint:
        raise ConfigError(f"indexing {args.folder} needs --checkpoint")
    if args.allow_partial and not args.from_embeddings:
        raise ConfigError("--allow-partial only applies with --from-embeddings")


def _run_merge(args: argparse.Namespace) -> int:
    from coembed.search.merge import merge_embeddings

    _apply_index_config(args)
    report = merge_embeddings(args.db, args.from_embeddings, allow_partial=args.allow_partial, checkpoint=args.checkpoint)
    _summarise(args, report.to_dict(), f"merged {report.merged} of {report.partitions} partitions of {report.source} into "
               f"{args.db}: {report.rows} rows, {report.added} new vectors, {report.reused} reused by content, "
               f"{report.unchanged} unchanged, {report.stale} changed or gone since embedding")
    if report.missing:
        from coembed.embeddings.layout import partition_names

        eprint(f"not merged (unfinished): {partition_names(report.missing)}")
    return 0


def _apply_index_config(args: argparse.Namespace) -> None:
    """Store --exact-threshold / --approximate in the store's settings before indexing."""
    if args.exact_threshold is None and args.approximate is None:
        return
    from dataclasses import replace

    from coembed.search.store import Store

    with Store.open(args.db, create=True) as store:
        cfg = store.index_config()
        changes = {k: v for k, v in (("exact_threshold", args.exact_threshold), ("approximate", args.approximate)) if v is not None}
        store.set_index_config(replace(cfg, **changes))
