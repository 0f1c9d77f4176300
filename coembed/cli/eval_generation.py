"""``coembed eval --task generation``: score a text-to-image model's samples on ``shapes`` prompts.

The diffusion checkpoint (``--checkpoint``) draws one image per test caption; a dual encoder
(``--scorer``), optionally a fusion model (``--fusion``) and the attribute reader (``--reader``, see
``coembed train-reader``), all trained separately on real images, score them, next to the real test
images of the same captions (ceiling) and mismatched / noise images (floors).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coembed.cli.common import eprint, non_negative_int, positive_int, print_json


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``--task generation`` (``--data``, ``--split``, ``--out``, ``--json`` are eval's own)."""
    g = p.add_argument_group("--task generation")
    g.add_argument("--scorer", help="dual-encoder checkpoint or run: CLIP score and R@1 by cosine")
    g.add_argument("--fusion", help="optional fusion checkpoint or run with an ITM head: R@1 by ITM")
    g.add_argument("--reader", help="attribute reader folder (`coembed train-reader`)")
    g.add_argument("--prompts-per-layout", type=positive_int, default=50, help="test captions drawn per layout (default 50)")
    g.add_argument("--layouts", default="single,horizontal,vertical,row",
                   help="comma-separated layouts to prompt (default all four: single,horizontal,vertical,row)")
    g.add_argument("--distractors", type=positive_int, default=99, help="other test captions each prompt competes with (default 99)")
    g.add_argument("--steps", type=positive_int, default=50, help="sampling steps (default 50)")
    g.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale (default 3)")
    g.add_argument("--eta", type=float, default=0.0, help="DDIM eta (default 0: deterministic)")
    g.add_argument("--seed", type=non_negative_int, default=0, help="seed of sampling, prompt subset and distractors (default 0)")
    g.add_argument("--grid", help="write a PNG grid of prompts and samples here")
    g.add_argument("--grid-n", type=positive_int, default=24, help="prompts shown in the grid (default 24, spread over layouts)")


def make_generator(loaded, args: argparse.Namespace):
    """``generate(prompts, seed)`` sampling the loaded diffusion model with the command's settings, with a
    progress bar on stderr when the sampler reports its steps (``on_step``)."""
    import inspect

    from coembed.errors import ConfigError

    try:
        from coembed.generation.diffusion import sample_images
    except ImportError as e:
        raise ConfigError(f"this coembed has no diffusion sampler (coembed.generation.diffusion): {e}") from None
    reports = "on_step" in inspect.signature(sample_images).parameters
    batch_size = 32  # sample_images' default

    def generate(prompts: list[str], seed: int):
        from tqdm.auto import tqdm

        extra = {}
        if reports:
            bar = tqdm(total=-(-len(prompts) // batch_size) * args.steps, desc="generate", unit="step", dynamic_ncols=True)
            extra["on_step"] = bar.update
        images = sample_images(loaded.model, loaded.tokenizer, prompts, steps=args.steps, guidance=args.guidance,
                               eta=args.eta, seed=seed, batch_size=batch_size, **extra)
        if reports:
            bar.close()
        return images
    return generate


def _scorer(path: str, flag: str):
    from coembed.errors import ConfigError
    from coembed.eval.generation import Scorer
    from coembed.loading import load
    from coembed.models.families import context_length

    loaded = load(path)
    if loaded.tokenizer is None:
        raise ConfigError(f"{flag} {path} has no tokenizer")
    if not callable(getattr(loaded.model, "encode_image", None)) or not callable(getattr(loaded.model, "encode_text", None)):
        raise ConfigError(f"{flag} {path} is a {type(loaded.model).__name__}: it has no encode_image / encode_text")
    return Scorer(loaded.model, loaded.preprocess, loaded.tokenizer, context_length(loaded.model))


def _evaluation(args: argparse.Namespace):
    from coembed.data.splits import split_root
    from coembed.errors import ConfigError
    from coembed.eval.attribute_reader import load_reader
    from coembed.eval.generation import GenerationEval, canonical_captions, select_prompts
    from coembed.eval.pair_scores import has_itm

    for flag in ("scorer", "reader"):
        if getattr(args, flag) is None:
            raise ConfigError(f"--task generation needs --{flag}")
    root = split_root(args.data, args.split)
    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    fusion = _scorer(args.fusion, "--fusion") if args.fusion else None
    if fusion is not None and not has_itm(fusion.model):
        raise ConfigError(f"--fusion {args.fusion} is a {type(fusion.model).__name__}: it has no ITM head")
    try:
        prompts = select_prompts(root, per_layout=args.prompts_per_layout, layouts=layouts, seed=args.seed)
        return GenerationEval(prompts, canonical_captions(root), load_reader(args.reader), _scorer(args.scorer, "--scorer"),
                              fusion, distractors=args.distractors, seed=args.seed)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def grid_subset(prompts, n: int) -> list[int]:
    """Up to ``n`` prompt indices, taken round-robin over the layouts so each is shown."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        groups.setdefault(p.target.layout, []).append(i)
    order = [g[k] for k in range(max(map(len, groups.values()))) for g in groups.values() if k < len(g)]
    return sorted(order[:n])


def run(args: argparse.Namespace, loaded) -> int:
    """Generate, score, print the table (or JSON), write ``--out`` and ``--grid``."""
    import time

    from coembed.eval.generation import plot_generation_grid, summary_table
    from coembed.eval.report import write_eval_json

    evaluation = _evaluation(args)
    start = time.perf_counter()
    results, generated = evaluation.run(make_generator(loaded, args), log=eprint)
    seconds = time.perf_counter() - start
    record = {"dataset": Path(args.data).name, "model": str(args.checkpoint), "split": args.split}
    settings = {"steps": args.steps, "guidance": args.guidance, "eta": args.eta, "seed": args.seed, "scorer": args.scorer,
                "fusion": args.fusion, "reader": args.reader, "distractors": args.distractors,
                "prompts": [p.text for p in evaluation.prompts]}
    if args.out:
        write_eval_json(args.out, **record, metrics=results, task="generation",
                        extra={"seconds": round(seconds, 1), "settings": settings})
    if args.json:
        print_json({**record, "task": "generation", "metrics": results})
    else:
        print(summary_table(results))
    if args.grid:
        keep = grid_subset(evaluation.prompts, args.grid_n)
        plot_generation_grid([evaluation.prompts[i] for i in keep], generated[keep], evaluation.reader, args.grid)
        eprint(f"wrote {args.grid}")
    if args.out:
        eprint(f"wrote {args.out}")
    return 0
