"""Validation shared by the search configs' ``__post_init__`` (user errors are ``ValueError``)."""

from __future__ import annotations


def require_ints(obj: object, names: tuple[str, ...], minimum: int = 1) -> None:
    """Raise ValueError unless each named attribute of ``obj`` is an int (not a bool) >= ``minimum``."""
    for name in names:
        value = getattr(obj, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
