"""Query expressions: parsing, errors, and how terms combine."""

from __future__ import annotations

import numpy as np
import pytest

from coembed.search.query import MAX_TERMS, QueryError, Term, combine, parse_query, parse_tokens


@pytest.mark.parametrize(
    ("expression", "terms"),
    [
        ("red circle", [Term(1.0, "red circle")]),
        ('"2:red circle" - "square"', [Term(2.0, "red circle"), Term(-1.0, "square")]),
        ("red circle + 0.5:big - blue", [Term(1.0, "red circle"), Term(0.5, "big"), Term(-1.0, "blue")]),
        ("- square", [Term(-1.0, "square")]),
        ('"a + b"', [Term(1.0, "a + b")]),
        ("  lots   of\tspace  ", [Term(1.0, "lots of space")]),
        ("1e-1:tiny", [Term(0.1, "tiny")]),
        ("x-ray", [Term(1.0, "x-ray")]),
    ],
)
def test_parse(expression: str, terms: list[Term]) -> None:
    assert parse_query(expression) == terms


def test_tokens_from_the_command_line() -> None:
    assert parse_tokens(["2:red circle", "-", "square"]) == [Term(2.0, "red circle"), Term(-1.0, "square")]
    assert parse_tokens(["red", "circle"]) == [Term(1.0, "red circle")]


@pytest.mark.parametrize(
    ("expression", "needle"),
    [
        ("", "empty query"),
        ("   ", "empty query"),
        ('"red circle', "No closing quotation"),
        ("red -", "ends with an operator"),
        ("red + - blue", "two operators in a row"),
        ("0:red", "must be a positive number"),
        ("2:", "needs text after its colon"),
        ("-", "empty query"),
        (" + ".join(["a"] * (MAX_TERMS + 1)), "too many terms"),
        ("x" * 1001, "at most 1000"),
    ],
)
def test_malformed(expression: str, needle: str) -> None:
    with pytest.raises(QueryError, match=needle):
        parse_query(expression)


def test_combine_is_a_normalised_weighted_sum() -> None:
    a, b = np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)
    v = combine(np.stack([a, b]), [2.0, -1.0])
    np.testing.assert_allclose(v, np.array([2.0, -1.0]) / np.sqrt(5), rtol=1e-6)
    with pytest.raises(QueryError, match="cancel out"):
        combine(np.stack([a, a]), [1.0, -1.0])
