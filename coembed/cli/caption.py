"""``coembed caption``: captions for images from a captioning checkpoint (CoCa, BLIP decoder, a bridge to an LM, the LM alone)."""

from __future__ import annotations

import argparse

from coembed.cli.common import POSITIVE_FLOAT, PROBABILITY, add_checkpoint_args, eprint, non_negative_int, positive_int, print_json

BATCH = 16  # images decoded together: a beam search runs BATCH * num_beams rows


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("caption", help="caption images", description="Write a caption for each image with a captioning "
                       "checkpoint (a coca-tiny, blip-tiny, llava-tiny, flamingo-tiny or qformer-tiny run). Images that "
                       "cannot be read are named and skipped.")
    add_checkpoint_args(p)
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--method", choices=("greedy", "beam", "nucleus"), default="greedy", help="decoding method (default greedy)")
    p.add_argument("--num-beams", type=positive_int, default=3, help="beams of --method beam (default 3)")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam score = log-prob / length**penalty (default 1)")
    p.add_argument("--top-p", type=PROBABILITY, default=0.9, help="nucleus mass of --method nucleus (default 0.9)")
    p.add_argument("--top-k", type=non_negative_int, default=0, help="also keep only the k likeliest tokens (0 = off)")
    p.add_argument("--temperature", type=POSITIVE_FLOAT, default=1.0, help="sampling temperature (default 1)")
    p.add_argument("--max-length", type=positive_int, default=32, help="tokens per caption, <sot> and <eot> included (default 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of --method nucleus (default 0)")
    p.add_argument("--prompt", default=None, help="text each caption continues (and begins with); required for a bridge "
                   "to a Hugging Face LM whose tokenizer adds no start token (GPT-2), optional otherwise")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coembed.cli.common import load_checkpoint

    loaded = load_checkpoint(args)
    spec, prompt = _check_captioner(loaded.model, loaded.tokenizer, args)
    images, paths, skipped = _read_images(args.images, loaded.preprocess)
    for path, reason in skipped:
        eprint(f"coembed caption: skipped {path}: {reason}")
    texts = _captions(loaded, images, args, spec, prompt)
    results = [{"image": path, "caption": text} for path, text in zip(paths, texts)]
    if args.json:
        print_json({"checkpoint": str(args.checkpoint), "method": args.method, "prompt": args.prompt, "captions": results,
                    "skipped": [{"image": p, "reason": r} for p, r in skipped]})
    else:
        _print_table(results)
    return 0


def _check_captioner(model, tokenizer, args: argparse.Namespace):
    """The model's decoding spec and the prompt ids; errors naming the argument for what cannot decode."""
    from coembed.errors import CheckpointError, ConfigError
    from coembed.generation import decoding_spec, is_captioner

    if not is_captioner(model):
        family = model.cfg.to_dict().get("family", type(model).__name__) if hasattr(model, "cfg") else type(model).__name__
        raise CheckpointError(f"{args.checkpoint} holds a {family} model, which has no captioning head; caption needs a "
                              "captioner or a bridge checkpoint (coembed train --preset coca-tiny, blip-tiny, llava-tiny, ...)")
    if tokenizer is None:
        raise CheckpointError(f"{args.checkpoint} has no tokenizer.json: captions cannot be decoded")
    spec = decoding_spec(model, tokenizer)
    try:
        prompt = spec.prompt_ids(tokenizer, args.prompt)
    except ValueError as e:
        raise ConfigError(f"--prompt: {e}") from None
    if not len(prompt) < args.max_length <= spec.max_length:
        raise ConfigError(f"--max-length must be in [{len(prompt) + 1}, {spec.max_length}] (past the {len(prompt)} "
                          f"start/prompt token(s), within the model's context length), got {args.max_length}")
    return spec, prompt


def _read_images(paths: list[str], preprocess):
    """Preprocessed tensors of the readable images, their paths, and (path, reason) of the others."""
    from coembed.errors import DataError
    from coembed.transforms import ImageLoadError, load_image

    images, kept, skipped = [], [], []
    for path in paths:
        try:
            images.append(preprocess(load_image(path)))
            kept.append(path)
        except ImageLoadError as e:
            skipped.append((path, e.reason))
    if not images:
        raise DataError(f"none of the {len(paths)} image(s) could be read (first: {skipped[0][0]}: {skipped[0][1]})")
    return images, kept, skipped


def _captions(loaded, images: list, args: argparse.Namespace, spec, prompt: list[int]) -> list[str]:
    import torch

    from coembed.generation import decode_captions, generate

    settings = {"max_length": args.max_length, "num_beams": args.num_beams, "length_penalty": args.length_penalty,
                "top_p": args.top_p, "top_k": args.top_k, "temperature": args.temperature}
    texts: list[str] = []
    for start in range(0, len(images), BATCH):
        batch = torch.stack(images[start : start + BATCH])  # (B, 3, H, W)
        ids = generate(loaded.model, batch, args.method, seed=args.seed, spec=spec, prompt=prompt, **settings)
        texts += decode_captions(ids, loaded.tokenizer, spec.eos_id)
    return texts


def _print_table(results: list[dict]) -> None:
    from coembed.cli.common import printable

    width = max(len(r["image"]) for r in results)
    print(f"{'image':<{width}}  caption")
    for r in results:
        print(printable(f"{r['image']:<{width}}  {r['caption']}"))
