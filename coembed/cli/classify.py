"""``coembed classify``: zero-shot classification of images against text labels."""

from __future__ import annotations

import argparse

from coembed.cli.common import add_checkpoint_args, load_checkpoint, positive_int, print_json
from coembed.errors import ConfigError


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
    import torch

    from coembed.eval.features import embed_texts
    from coembed.eval.zeroshot import class_embeddings
    from coembed.transforms import load_image

    labels = [label.strip() for label in args.labels.split(",") if label.strip()]
    if len(labels) < 2:
        raise ConfigError(f"--labels needs at least two comma-separated labels, got {args.labels!r}")
    model, preprocess, tokenizer = load_checkpoint(args)
    classes = class_embeddings(lambda t: embed_texts(model, tokenizer, t), labels, args.template or ["a {}"])
    results = []
    for path in args.images:
        with torch.no_grad():
            emb = model.encode_image(preprocess(load_image(path)).unsqueeze(0), normalize=True).float()
        probs = (model.temperature().float() * emb @ classes.T).softmax(-1)[0]
        top = probs.topk(min(args.top, len(labels)))
        results.append({"image": path, "labels": [{"label": labels[i], "prob": round(p, 4)} for p, i in zip(top.values.tolist(), top.indices.tolist())]})
    if args.json:
        print_json(results)
    else:
        for r in results:
            print(f"{r['image']}: " + ", ".join(f"{x['label']} {x['prob']:.3f}" for x in r["labels"]))
    return 0
