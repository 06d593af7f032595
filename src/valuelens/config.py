"""Strict construction of config dataclasses from user dicts (files, ``--set`` overrides)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

from .errors import ConfigError

__all__ = ["strict_config"]

T = TypeVar("T")


def strict_config(cls: type[T], d: dict[str, Any], label: str) -> T:
    """``cls(**d)`` that names unknown keys (and the known ones) instead of a TypeError, then ``validate()``s."""
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown {label} config keys: {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    cfg = cls(**d)
    validate = getattr(cfg, "validate", None)
    if validate is not None:
        validate()
    return cfg
