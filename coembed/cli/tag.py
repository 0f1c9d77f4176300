"""``coembed tag``: zero-shot tags for images, from a checkpoint or the one an index records."""

from __future__ import annotations

import argparse

from coembed.cli.common import add_checkpoint_args, positive_int, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tag", help="zero-shot tag images", description="Score images against comma-separated labels.")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", required=True, help='comma-separated labels, e.g. "circle,square,star"')
    p.add_argument("--checkpoint", help="checkpoint folder (default: the one recorded in --db)")
    p.add_argument("--db", help="an index whose checkpoint to use")
    add_checkpoint_args(p, flag="")  # --quick-gelu / --no-quick-gelu
    p.add_argument("--template", action="append", default=[], help='prompt template with {} (repeatable; default "a {}")')
    p.add_argument("--top", type=positive_int, default=3, help="labels per image")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coembed.errors import ConfigError
    from coembed.eval.zeroshot import _SLOT
    from coembed.loading import load

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if len(labels) < 2:
        raise ConfigError(f"--labels needs at least two comma-separated labels, got {args.labels!r}")
    templates = args.template or ["a {}"]
    if (bad := next((t for t in templates if not _SLOT.search(t)), None)) is not None:
        raise ConfigError(f"--template {bad!r} has no slot for the label; put {{}} where it goes, e.g. \"a photo of a {{}}\"")
    if args.checkpoint is None and getattr(args, "db", None) is None:
        raise ConfigError("give --checkpoint CKPT or --db PATH (an index records its checkpoint)")
    loaded = load(args.checkpoint or _recorded_checkpoint(args.db), quick_gelu=args.quick_gelu)
    print_tags(tag_images(loaded, args.images, labels, templates, args.top), as_json=args.json)
    return 0


def tag_images(loaded, paths: list[str], labels: list[str], templates: list[str], top: int) -> list[dict]:
    """``[{"image": path, "labels": [{"label", "prob"}, ...]}, ...]``, best label first."""
    from coembed.search.query import encode_images, zero_shot_tags
    from coembed.transforms import load_image

    tags = zero_shot_tags(loaded, encode_images(loaded, [load_image(p) for p in paths]), labels, templates, top)
    return [{"image": str(path), "labels": [{"label": label, "prob": round(p, 4)} for label, p in t]}
            for path, t in zip(paths, tags)]


def print_tags(results: list[dict], *, as_json: bool) -> None:
    if as_json:
        print_json(results)
        return
    for r in results:
        print(f"{r['image']}: " + ", ".join(f"{x['label']} {x['prob']:.3f}" for x in r["labels"]))


def _recorded_checkpoint(db: str) -> str:
    from coembed.errors import DataError
    from coembed.search.store import Store

    with Store.open(db) as store:
        identity = store.model()
    if identity is None:
        raise DataError(f"{db} records no checkpoint yet; give --checkpoint")
    return identity.path
