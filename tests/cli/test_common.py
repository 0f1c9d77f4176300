"""The argparse number types of coembed/cli/common.py: each interval's ends, NaN, infinity and text."""

from __future__ import annotations

import argparse
import re

import pytest

from coembed.cli.common import NON_NEGATIVE_FLOAT, POSITIVE_FLOAT, PROBABILITY, float_in


@pytest.mark.parametrize(("parse", "good", "bad", "message"), [
    (PROBABILITY, ["1e-9", "0.5", "1"], ["0", "-0.1", "1.0001", "nan", "inf", "x"], "expected a number in (0, 1]"),
    (float_in(0.0, 1.0), ["0", "1"], ["-1e-9", "1.5", "nan", "auto"], "expected a number in [0, 1]"),
    (POSITIVE_FLOAT, ["1e-9", "2", "inf"], ["0", "-1", "nan", "x"], "expected a number > 0"),
    (NON_NEGATIVE_FLOAT, ["0", "3.5"], ["-1e-9", "inf", "nan", ""], "expected a finite number >= 0"),
])
def test_each_interval_keeps_its_ends_and_refuses_the_rest(parse, good: list[str], bad: list[str], message: str) -> None:
    assert [parse(v) for v in good] == [float(v) for v in good]
    for text in bad:
        with pytest.raises(argparse.ArgumentTypeError, match=f"^{re.escape(message)}, got "):
            parse(text)
