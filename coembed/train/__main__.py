"""``python -m coembed.train [coembed train options]``: the form ``torchrun`` launches, e.g.
``torchrun --nproc_per_node 4 -m coembed.train --data DIR --out RUN``."""

import sys

from coembed.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
