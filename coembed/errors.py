"""Exceptions for user-facing errors.

Library code raises these (never ``SystemExit``) with messages that name the file, field or argument
and what was wrong; the CLI turns them into a one-line message and a non-zero exit code.
"""

from __future__ import annotations


class CoembedError(Exception):
    """Base class for errors caused by user input (files, arguments, configs)."""


class DataError(CoembedError):
    """A dataset, image or caption cannot be used."""


class ConfigError(CoembedError):
    """A configuration value or command-line argument is invalid."""


class CheckpointError(CoembedError):
    """A checkpoint folder or weights file is missing, malformed or incompatible."""


class TrainingDiverged(CoembedError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
