"""Helpers shared by the subcommands: output formatting and argument checks."""

from __future__ import annotations

import json
import sys
from typing import Any


def printable(text: str) -> str:
    """``text`` with the lone surrogates of non-UTF-8 file names written as ``\\udcXX`` escapes, so
    printing it cannot fail to encode (in JSON the escape reads back as the same str)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def print_json(obj: Any) -> None:
    sys.stdout.write(printable(json.dumps(obj, indent=2, ensure_ascii=False)) + "\n")


def eprint(*parts: Any) -> None:
    """Human progress messages go to stderr so stdout stays machine-readable."""
    print(*(printable(str(p)) for p in parts), file=sys.stderr, flush=True)


def positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def port_number(text: str) -> int:
    """A TCP port, 1..65535."""
    import argparse

    value = positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"expected a port number in 1..65535, got {value}")
    return value


def non_negative_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def float_in(low: float, high: float = float("inf"), *, include_low: bool = True, include_high: bool = True):
    """An argparse ``type``: a float in the interval from ``low`` to ``high`` (NaN and, unless ``high`` is
    infinite and included, infinity refused), with an error that states the interval."""
    import argparse

    if high == float("inf"):
        want = f"a {'finite ' if not include_high else ''}number {'>=' if include_low else '>'} {low:g}"
    else:
        want = f"a number in {'[' if include_low else '('}{low:g}, {high:g}{']' if include_high else ')'}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {want}, got {text!r}") from None
        above = value >= low if include_low else value > low
        below = value <= high if include_high else value < high
        if not (above and below):  # NaN fails both
            raise argparse.ArgumentTypeError(f"expected {want}, got {value}")
        return value

    return parse


PROBABILITY = float_in(0.0, 1.0, include_low=False)  # (0, 1]: a nucleus mass
POSITIVE_FLOAT = float_in(0.0, include_low=False)  # > 0: a temperature
NON_NEGATIVE_FLOAT = float_in(0.0, include_high=False)  # finite, >= 0: a guidance scale, an eta


CHECKPOINT_HELP = ("coembed checkpoint or run folder, OpenCLIP/OpenAI state dict (.safetensors/.pt/.bin, or a folder "
                   "with open_clip_config.json), or Hugging Face CLIPModel/SiglipModel folder")


def add_checkpoint_args(parser, *, flag: str = "--checkpoint") -> None:
    """``--checkpoint PATH`` (any supported format) and ``--quick-gelu`` / ``--no-quick-gelu``."""
    if flag.startswith("-"):
        parser.add_argument(flag, required=True, help=CHECKPOINT_HELP)
    add_quick_gelu_arg(parser)


def add_quick_gelu_arg(parser) -> None:
    """``--quick-gelu`` / ``--no-quick-gelu`` (default: what the checkpoint says)."""
    import argparse

    parser.add_argument("--quick-gelu", action=argparse.BooleanOptionalAction, default=None,
                        help="the model uses QuickGELU (OpenAI weights) or not; only needed when the checkpoint does not say")


def load_checkpoint(args, *, need_tokenizer: bool = True):
    """``coembed.load`` with the command's ``--checkpoint`` and ``--quick-gelu``."""
    from coembed.errors import CheckpointError
    from coembed.loading import load

    loaded = load(args.checkpoint, quick_gelu=args.quick_gelu)
    if need_tokenizer and loaded.tokenizer is None:
        raise CheckpointError(f"{args.checkpoint} has no tokenizer coembed can read (add a tokenizer.json)")
    return loaded


def progress_callback(desc: str, unit: str = "img"):
    """A ``progress(done, total)`` callback drawing a tqdm bar labelled ``desc``, for library functions
    that report progress that way (:func:`coembed.data.synthetic.shapes.generate`, ``write_shards``)."""
    from tqdm.auto import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True)
        bar.update(done - bar.n)
        if done >= total:
            bar.close()

    return update
