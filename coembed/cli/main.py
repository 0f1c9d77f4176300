"""``coembed``: one command with subcommands; each is a thin adapter over a library call."""

from __future__ import annotations

import argparse
import errno
import logging
import sys
from collections.abc import Sequence

from coembed.cli import caption, classify, convert, data, demo, embed, evaluate, explain, export, generate, index, search, serve, tag, train
from coembed.cli import train_reader
from coembed.cli.common import printable
from coembed.errors import CoembedError

COMMANDS = (data, train, train_reader, evaluate, embed, classify, caption, generate, convert, export, index, search, tag, serve, explain,
            demo)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="coembed", description="Train, evaluate and use image-text embedding models.")
    parser.add_argument("--version", action="version", version=f"coembed {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("coembed")
    except PackageNotFoundError:
        return "unknown"


def os_error_text(e: OSError) -> str:
    """``"[Errno 28] No space left on device: 'runs/x/checkpoint/model.safetensors'"`` as one line
    that names the errno, the reason and the path."""
    name = errno.errorcode.get(e.errno or 0)
    where = f": {e.filename}" if e.filename else ""
    what = e.strerror or str(e)
    return f"{what}{where}" + (f" ({name})" if name else "")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the process exit code."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if hasattr(sys.stdout, "reconfigure"):  # tables name files; a non-UTF-8 name prints as \udcXX, not a crash
        sys.stdout.reconfigure(errors="backslashreplace")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CoembedError as e:
        print(printable(f"coembed {args.command}: error: {' '.join(str(e).split())}"), file=sys.stderr)  # one line
        return 2
    except OSError as e:  # the machine said no (disk full, read-only folder, permissions): not a bug
        print(printable(f"coembed {args.command}: error: {os_error_text(e)}"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"coembed {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
