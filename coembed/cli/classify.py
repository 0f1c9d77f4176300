"""``coembed classify``: zero-shot classification of images against text labels."""

from __future__ import annotations

import argparse

from coembed.cli.common import add_checkpoint_args, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("classify", help="zero-shot classify images", description="Score images against comma-separated labels.")
    add_checkpoint_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", required=True, help='comma-separated class names, e.g. "circle,square,star"')
    p.add_argument("--template", action="append", default=[], help='prompt template with {} (repeatable; default "a {}")')
    p.add_argument("--top", type=positive_int, default=3, help="labels to show per image")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coembed.cli.tag import run as tag_run

    return tag_run(args)  # classify is tag with a required --checkpoint
