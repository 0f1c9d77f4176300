"""``coembed convert``: rewrite a checkpoint as coembed, OpenCLIP or Hugging Face files."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from coembed.cli.common import add_checkpoint_args, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert a checkpoint between formats",
                       description="Convert SRC (coembed folder, OpenCLIP/OpenAI state dict or folder, Hugging Face "
                                   "CLIP/SigLIP folder; detected) into the folder DST in another format.")
    p.add_argument("src", metavar="SRC")
    p.add_argument("dst", metavar="DST", help="output folder (must not exist or be empty)")
    p.add_argument("--to", required=True, choices=["coembed", "openclip", "hf"])
    add_checkpoint_args(p, flag="")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coembed.interop.convert import convert

    result = convert(args.src, args.dst, args.to, quick_gelu=args.quick_gelu)
    if args.json:
        print_json(asdict(result))
    else:
        print(f"{result.source} ({result.source_format}) -> {result.target} ({result.target_format}): "
              f"{result.tensors} tensors, {result.parameters:,} parameters, {result.dtype}")
    return 0
