"""``coembed export onnx``: the two towers of a dual encoder as ONNX graphs (optionally int8)."""

from __future__ import annotations

import argparse
from dataclasses import asdict

from coembed.cli.common import add_checkpoint_args, load_checkpoint, print_json


CHECK_TEXTS = ["a photo of a dog", "a large red circle left of a small blue star"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a model for another runtime (ONNX)",
                       description="Write image.onnx and text.onnx (normalised embeddings; dynamic batch and text "
                                   "length) and onnx_config.json into OUT; check them against coembed with ONNX Runtime.")
    p.add_argument("format", choices=["onnx"])
    add_checkpoint_args(p)
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--int8", action="store_true", help="also write dynamically quantised int8 graphs (*.int8.onnx)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from coembed.interop.onnx import OnnxEncoder, export, parity, require

    require("onnxruntime")  # before any work: the export is checked with it
    loaded = load_checkpoint(args)
    config = export(loaded.model, loaded.preprocess, args.out, int8=args.int8, source=str(args.checkpoint))
    images = torch.randn(2, 3, config.image_size, config.image_size, generator=torch.Generator().manual_seed(0))
    tokens = loaded.tokenizer(CHECK_TEXTS, context_length=config.context_length)
    checks = {"fp32": parity(loaded.model, OnnxEncoder(args.out), images, tokens)}
    if args.int8:
        checks["int8"] = parity(loaded.model, OnnxEncoder(args.out, int8=True), images, tokens)
    if args.json:
        print_json({"config": asdict(config), "max_abs_diff": checks})
    else:
        for name, diff in checks.items():
            print(f"{name}: max abs difference to coembed: image {diff['image']:.1e}, text {diff['text']:.1e}")
        print(f"wrote {args.out}")
    return 0
