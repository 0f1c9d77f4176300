"""``python -m coembed COMMAND ...``: the console script, also the form ``torchrun -m coembed embed ...`` launches."""

import sys

from coembed.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
