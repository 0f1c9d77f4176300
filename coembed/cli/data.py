"""``coembed data shapes``: generate the built-in benchmark; ``coembed data vqa``: question-answer pairs about
it; ``coembed data filter``: ALIGN-style cleaning; ``coembed data shard``: write a dataset as tar shards; ``coembed data corrupt``:
web-noise on purpose; ``coembed data capfilt``: BLIP's captioner + ITM filter."""

from __future__ import annotations

import argparse
import time

from coembed.cli.common import eprint, float_in, non_negative_int, positive_int, print_json, progress_callback


def register(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser("data", help="generate or prepare datasets")
    data_sub = parser.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    shapes = data_sub.add_parser("shapes", help="generate the built-in `shapes` benchmark")
    shapes.add_argument("--out", required=True, help="output folder")
    shapes.add_argument("--image-size", type=positive_int, default=64)
    shapes.add_argument("--train", type=non_negative_int, default=20000, help="training images")
    shapes.add_argument("--val", type=non_negative_int, default=1000)
    shapes.add_argument("--test", type=non_negative_int, default=1000)
    shapes.add_argument("--heldout", type=non_negative_int, default=500, help="held-out-compositions images")
    shapes.add_argument("--train-swap-negatives", action="store_true",
                        help="also give training images swap-type false captions (attributes swapped, relation reversed)")
    shapes.add_argument("--seed", type=int, default=0)
    shapes.add_argument("--workers", type=positive_int, default=2)
    shapes.add_argument("--json", action="store_true", help="print the dataset summary as JSON")
    shapes.set_defaults(func=run_shapes)
    _register_vqa(data_sub)
    _register_filter(data_sub)
    _register_shard(data_sub)
    _register_corrupt(data_sub)
    _register_capfilt(data_sub)


def _register_filter(data_sub: argparse._SubParsersAction) -> None:
    filt = data_sub.add_parser(
        "filter", help="clean an image-text dataset (ALIGN-style frequency, junk, length and image-size filters)",
        description="Drop captions that have no letters, match a junk pattern (file names like IMG_1234.jpg, URLs, "
                    "'click here' / 'stock photo' boilerplate, plus --junk-pattern), have fewer than --min-words words or "
                    "are shared by more than --max-images-per-text images; drop images left without captions, unreadable, "
                    "smaller than --min-image-side or more elongated than --max-aspect. Writes OUT/captions.jsonl "
                    "(image paths resolve from OUT) and OUT/filter_report.json.")
    filt.add_argument("src", metavar="SRC", help="dataset folder (captions.jsonl or OpenCLIP CSV)")
    filt.add_argument("out", metavar="OUT", help="output folder")
    filt.add_argument("--max-images-per-text", type=non_negative_int, default=10, metavar="N",
                      help="drop a caption text shared by more than N images (ALIGN: 10; 0: off)")
    filt.add_argument("--min-words", type=non_negative_int, default=3, metavar="K", help="drop captions under K words (ALIGN: 3; 0: off)")
    filt.add_argument("--junk-pattern", action="append", default=[], metavar="REGEX",
                      help="also drop captions matching REGEX (case-insensitive; repeatable)")
    filt.add_argument("--no-default-junk", action="store_true", help="do not apply the built-in junk patterns")
    filt.add_argument("--min-image-side", type=non_negative_int, default=0, metavar="PX",
                      help="drop images whose shorter side is under PX pixels (ALIGN: 200; default 0: off)")
    filt.add_argument("--max-aspect", type=float, default=3.0, metavar="R",
                      help="drop images whose long/short side ratio exceeds R (ALIGN: 3; 0: off)")
    filt.add_argument("--copy-images", action="store_true", help="copy the kept images into OUT instead of pointing at them")
    filt.add_argument("--json", action="store_true", help="print the report as JSON")
    filt.add_argument("--no-progress", action="store_true", help="no progress bar")
    filt.set_defaults(func=run_filter)


def _register_vqa(data_sub: argparse._SubParsersAction) -> None:
    vqa = data_sub.add_parser("vqa", help="write question-answer pairs about a `shapes` dataset (SPLIT/vqa.jsonl)",
                              description="Generate VQA questions (count, color, exists, left_right) with exact single-word "
                                          "answers from the scene descriptions of a `coembed data shapes` folder, into "
                                          "SPLIT/vqa.jsonl beside each split's captions.jsonl.")
    vqa.add_argument("shapes_dir", metavar="SHAPES_DIR", help="folder written by `coembed data shapes`")
    vqa.add_argument("--per-image", type=positive_int, default=3, metavar="N", help="questions per image (default 3)")
    vqa.add_argument("--seed", type=int, default=0)
    vqa.add_argument("--json", action="store_true", help="print the summary as JSON")
    vqa.set_defaults(func=run_vqa)


def _register_shard(data_sub: argparse._SubParsersAction) -> None:
    shard = data_sub.add_parser("shard", help="write a dataset as WebDataset tar shards (img2dataset layout)",
                                description="Write a dataset folder (captions.jsonl or CSV, or train/val/... split folders) "
                                            "as img2dataset-style tar shards: {key}.jpg|png, {key}.txt, {key}.json per sample. "
                                            "A rerun keeps the shards that are already complete.")
    shard.add_argument("src", metavar="SRC", help="dataset folder")
    shard.add_argument("out", metavar="OUT", help="output folder (one sub-folder per split when SRC has splits)")
    shard.add_argument("--samples-per-shard", type=positive_int, default=10000, metavar="N", help="samples per shard (default 10000)")
    shard.add_argument("--json", action="store_true", help="print the summary as JSON")
    shard.add_argument("--no-progress", action="store_true", help="no progress bar")
    shard.set_defaults(func=run_shard)


def _register_corrupt(data_sub: argparse._SubParsersAction) -> None:
    corrupt = data_sub.add_parser(
        "corrupt", help="give a share of the images other images' captions (noise with a recorded truth)",
        description="Replace every caption of round(FRACTION * images) randomly chosen images with a caption of another "
                    "random image. Writes OUT/captions.jsonl (image paths resolve from OUT; each line has 'corrupted', one "
                    "flag per caption, and 'original_captions' when corrupted) and OUT/corrupt_report.json.")
    corrupt.add_argument("src", metavar="SRC", help="dataset folder (one split, e.g. shapes/train)")
    corrupt.add_argument("out", metavar="OUT", help="output folder")
    corrupt.add_argument("--fraction", type=float, default=0.5, help="share of images to corrupt, in [0, 1] (default 0.5)")
    corrupt.add_argument("--seed", type=int, default=0)
    corrupt.add_argument("--json", action="store_true", help="print the report as JSON")
    corrupt.set_defaults(func=run_corrupt)


def run_corrupt(args: argparse.Namespace) -> int:
    from coembed.data.corrupt import corrupt_dataset
    from coembed.errors import ConfigError

    if not 0.0 <= args.fraction <= 1.0:  # also refuses nan
        raise ConfigError(f"--fraction must be in [0, 1], got {args.fraction}")
    report = corrupt_dataset(args.src, args.out, args.fraction, args.seed)
    if args.json:
        print_json(report.to_dict())
    else:
        eprint(report.table())
    return 0


def _register_capfilt(data_sub: argparse._SubParsersAction) -> None:
    from coembed.cli.common import PROBABILITY

    cf = data_sub.add_parser(
        "capfilt", help="BLIP's CapFilt: add synthetic captions, drop the captions an ITM filter judges unmatched",
        description="For each image of SRC the captioner (a blip or coca run) writes --synthetic captions by nucleus "
                    "sampling; the filter (a fusion run with an ITM head, e.g. albef-tiny) scores every web and synthetic "
                    "caption with its ITM match probability; captions under --threshold are dropped, and images left "
                    "without a caption. Writes OUT/captions.jsonl (with each caption's origin and score under 'capfilt'), "
                    "OUT/capfilt_scores.jsonl (every caption's score) and OUT/capfilt_report.json. An interrupted run "
                    "resumes when rerun with the same settings.")
    cf.add_argument("src", metavar="SRC", help="dataset folder (captions.jsonl or OpenCLIP CSV)")
    cf.add_argument("out", metavar="OUT", help="output folder")
    cf.add_argument("--captioner", metavar="RUN", help="captioning checkpoint or run folder (needed unless --synthetic 0)")
    cf.add_argument("--filter", required=True, metavar="RUN", help="ITM checkpoint or run folder (a fusion family)")
    cf.add_argument("--synthetic", type=non_negative_int, default=1, metavar="K",
                    help="synthetic captions per image (default 1)")
    cf.add_argument("--threshold", type=_threshold, default=0.5,
                    help="keep captions with ITM match probability >= this (default 0.5, BLIP's rule), or 'auto': the "
                         "threshold with the best accuracy on --calibrate's corrupted captions")
    cf.add_argument("--calibrate", metavar="DIR",
                    help="with --threshold auto: a set with known corruption (`coembed data corrupt` of a clean val split) "
                         "the filter scores first to choose the threshold")
    cf.add_argument("--top-p", type=PROBABILITY, default=0.9, help="nucleus mass of the captioner's sampling (default 0.9)")
    cf.add_argument("--max-length", type=positive_int, default=32,
                    help="tokens per synthetic caption, <sot>/<eot> included (default 32)")
    cf.add_argument("--batch-size", type=positive_int, default=32, help="images per batch (default 32)")
    cf.add_argument("--seed", type=non_negative_int, default=0, help="sampling seed (default 0)")
    cf.add_argument("--json", action="store_true", help="print the report as JSON")
    cf.add_argument("--no-progress", action="store_true", help="no progress bar")
    cf.set_defaults(func=run_capfilt)


def _threshold(text: str) -> float | str:
    return "auto" if text == "auto" else float_in(0.0, 1.0)(text)


def run_capfilt(args: argparse.Namespace) -> int:
    from coembed.data.capfilt import CapFiltConfig, capfilt
    from coembed.errors import ConfigError

    if args.synthetic and args.captioner is None:
        raise ConfigError("--captioner is required unless --synthetic 0 (the captioner writes the synthetic captions)")
    if (args.threshold == "auto") != (args.calibrate is not None):
        raise ConfigError("--threshold auto needs --calibrate DIR (a corrupted val split), and --calibrate needs --threshold auto")
    cfg = CapFiltConfig(synthetic=args.synthetic, threshold=args.threshold, top_p=args.top_p, max_length=args.max_length,
                        batch_size=args.batch_size, seed=args.seed)
    try:
        report = capfilt(args.src, args.out, args.captioner, args.filter, cfg,
                         progress=None if args.no_progress else progress_callback("capfilt"), calibrate_dir=args.calibrate)
    except ConfigError as e:
        raise ConfigError(str(e).replace("max_length", "--max-length")) from None
    if args.json:
        print_json(report.to_dict())
    else:
        eprint(report.table())
    return 0


def run_shapes(args: argparse.Namespace) -> int:
    from coembed.data.synthetic.shapes import ShapesConfig, generate
    from coembed.errors import ConfigError

    try:
        cfg = ShapesConfig(image_size=args.image_size, train=args.train, val=args.val, test=args.test,
                           heldout=args.heldout, train_swap_negatives=args.train_swap_negatives, seed=args.seed,
                           workers=args.workers)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    from pathlib import Path

    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is a file; give a folder for the dataset")
    start = time.perf_counter()
    meta = generate(cfg, args.out, progress=progress_callback("shapes"))
    if args.json:
        print_json(meta)
    else:
        eprint(f"wrote shapes to {args.out} in {time.perf_counter() - start:.1f}s: "
               + ", ".join(f"{k} {v}" for k, v in meta["splits"].items()))
    return 0


def run_vqa(args: argparse.Namespace) -> int:
    from coembed.data.synthetic.vqa import write_vqa

    summary = write_vqa(args.shapes_dir, args.per_image, args.seed)
    if args.json:
        print_json(summary)
        return 0
    for split, stats in summary.items():
        types = ", ".join(f"{k} {v}" for k, v in sorted(stats["per_type"].items()))
        eprint(f"{split}: {stats['questions']} questions about {stats['images']} images ({types}) -> "
               f"{args.shapes_dir}/{split}/vqa.jsonl")
    return 0


def run_filter(args: argparse.Namespace) -> int:
    from coembed.data.filters import FilterConfig, filter_dataset
    from coembed.errors import ConfigError

    try:
        cfg = FilterConfig(max_images_per_text=args.max_images_per_text, min_words=args.min_words,
                           junk_patterns=args.junk_pattern, default_junk=not args.no_default_junk,
                           min_image_side=args.min_image_side, max_aspect=args.max_aspect, copy_images=args.copy_images)
    except ValueError as e:
        raise ConfigError(str(e).replace("junk_patterns", "--junk-pattern").replace("max_aspect", "--max-aspect")) from None
    report = filter_dataset(args.src, args.out, cfg, progress=None if args.no_progress else progress_callback("filter"))
    if args.json:
        print_json(report.to_dict())
    else:
        eprint(report.table())
    return 0


def run_shard(args: argparse.Namespace) -> int:
    from coembed.data.shards import write_shards

    start = time.perf_counter()
    stats = write_shards(args.src, args.out, args.samples_per_shard, progress=None if args.no_progress else progress_callback("shard"))
    if args.json:
        print_json(stats.to_dict())
    else:
        eprint(f"{stats.summary()} in {time.perf_counter() - start:.1f}s")
    eprint(stats.skipped.summary())
    return 0
