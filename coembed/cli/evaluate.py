"""``coembed eval``: evaluate a checkpoint on a dataset split; table on screen, JSON to a file."""

from __future__ import annotations

import argparse
from pathlib import Path

from coembed.cli import eval_generation
from coembed.cli.common import add_checkpoint_args, eprint, load_checkpoint, positive_int, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint", description="Retrieval, zero-shot, linear probe and compositional evaluation.")
    add_checkpoint_args(p)
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--task", choices=("suite", "vqa", "generation"), default="suite",
                   help="suite: retrieval, zero-shot, linear probe and compositional (default); vqa: VQA accuracy per "
                        "question type of a VQA model on SPLIT/vqa.jsonl (`coembed data vqa`); generation: score a "
                        "text-to-image checkpoint's samples of test captions (see the --task generation options)")
    p.add_argument("--split", default="test", help="split to evaluate (default test)")
    p.add_argument("--out", help="write the metrics JSON here")
    p.add_argument("--json", action="store_true", help="print the metrics JSON instead of a table")
    p.add_argument("--rerank-k", type=positive_int,
                   help="fusion models: also re-rank each query's ITC top K candidates with the ITM head")
    p.add_argument("--batch-size", type=positive_int, default=64, help="--task vqa: questions per batch (default 64)")
    p.add_argument("--skip", action="append", default=[], choices=("zeroshot", "linear_probe", "compositional"),
                   help="leave out a task (repeatable); retrieval always runs")
    p.add_argument("--rerank-score", choices=("itm", "itm+itc"), default="itm",
                   help="re-ranking score: ITM matched probability (ALBEF) or ITM + ITC cosine (BLIP); default itm")
    eval_generation.add_arguments(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from coembed.eval.report import flatten_metrics, format_table, write_eval_json
    from coembed.eval.suite import evaluate

    from coembed.errors import ConfigError
    from coembed.eval.pair_scores import has_itm

    loaded = load_checkpoint(args)
    if args.task == "vqa":
        return _run_vqa(args, loaded)
    if args.task == "generation":
        return eval_generation.run(args, loaded)
    if args.rerank_k is not None and not has_itm(loaded.model):
        raise ConfigError(f"--rerank-k needs a model with an ITM head (a fusion family); {args.checkpoint} is a "
                          f"{type(loaded.model).__name__}")
    result = evaluate(loaded, args.data, args.split, rerank_k=args.rerank_k, rerank_score=args.rerank_score,
                      skip=tuple(args.skip), log=eprint)
    record = {"dataset": Path(args.data).name, "model": str(args.checkpoint), "split": args.split}
    if args.out:
        write_eval_json(args.out, **record, metrics=result.metrics, extra={"seconds": round(result.seconds, 1)})
    if args.json:
        print_json({**record, "metrics": result.metrics})
    else:
        print(format_table(flatten_metrics(result.metrics)))
    for note in result.notes:
        eprint(note)
    if args.out:
        eprint(f"wrote {args.out}")
    return 0


def _run_vqa(args: argparse.Namespace, loaded) -> int:
    """``--task vqa``: answer every question of the split, print the per-type table (or JSON), write the record."""
    import time

    from coembed.data.splits import split_root
    from coembed.data.vqa_pairs import vqa_samples
    from coembed.eval.report import write_eval_json
    from coembed.eval.vqa_answer import check_vqa_model, vqa_split_accuracy

    check_vqa_model(loaded.model, str(args.checkpoint))
    root = split_root(args.data, args.split)
    samples = vqa_samples(root)
    start = time.perf_counter()
    result, _ = vqa_split_accuracy(loaded.model, loaded.tokenizer, root, samples, batch_size=args.batch_size)
    record = {"dataset": Path(args.data).name, "model": str(args.checkpoint), "split": args.split}
    metrics = result.to_dict()
    if args.out:
        write_eval_json(args.out, **record, metrics=metrics, task="vqa", extra={"seconds": round(time.perf_counter() - start, 1)})
    if args.json:
        print_json({**record, "task": "vqa", "metrics": metrics})
    else:
        print(result.table())
    if args.out:
        eprint(f"wrote {args.out}")
    return 0
