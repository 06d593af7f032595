"""User-facing errors.

Anything a user can cause (bad file, unknown value, wrong layer) raises :class:`ValuelensError` (or a
subclass). The CLI prints such errors as one line, without a traceback, and exits non-zero; everything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ValuelensError(Exception):
    """An error caused by user input or environment, reported as one clear line."""


class ConfigError(ValuelensError):
    """Invalid configuration: unknown names, out-of-range indices, incompatible options."""


class DataError(ValuelensError):
    """A malformed or inconsistent input file; the message names the file (and line when known)."""


class ModelError(ValuelensError):
    """A model that cannot be found, verified, loaded or used as asked."""
