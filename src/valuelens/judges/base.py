"""The judge interface: decide, for each text, whether it expresses each of a set of Schwartz values.

Judges are pluggable (the trained detector, an LLM judge local or over HTTP) and registered by name in
:data:`JUDGES`, so a pipeline config can say ``judge: detector`` or ``judge: llm`` and a user can add their own.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..values import SchwartzValue, resolve_values

__all__ = ["JUDGES", "Judge", "JudgeResult", "get_judge", "register_judge"]


@dataclass
class JudgeResult:
    """Labels for ``N`` texts × ``V`` values.

    ``labels[i, j]`` is True when text i expresses ``values[j]``; ``scores`` holds the judge's confidence in
    [0, 1] when it has one (NaN otherwise); ``valid[i, j]`` is False where the judge produced nothing usable
    (an unparsable LLM answer), and such cells must not be counted as "does not express".
    """

    values: list[SchwartzValue]
    labels: np.ndarray  # bool [N, V]
    scores: np.ndarray  # float [N, V]
    valid: np.ndarray  # bool [N, V]
    raw: list[Any] = field(default_factory=list)  # per-text raw judge output, for audit

    def __post_init__(self) -> None:
        n_v = len(self.values)
        for name in ("labels", "scores", "valid"):
            arr = getattr(self, name)
            if arr.ndim != 2 or arr.shape[1] != n_v:
                raise ValueError(f"JudgeResult.{name} must be [N, {n_v}], got {arr.shape}")


class Judge(ABC):
    """Base class. Subclasses implement :meth:`judge_batch`; :meth:`judge` resolves value names."""

    name: str = "judge"

    @abstractmethod
    def judge_batch(self, texts: Sequence[str], values: Sequence[SchwartzValue],
                    contexts: Sequence[str] | None = None) -> JudgeResult:
        """Label ``texts`` (optionally with the user query each answers, ``contexts``) for ``values``."""

    def judge(self, texts: Sequence[str], values: str | Sequence[str] | None = None,
              contexts: Sequence[str] | None = None) -> JudgeResult:
        vals = resolve_values(values if values is None or isinstance(values, str) else list(values))
        if contexts is not None and len(contexts) != len(texts):
            raise ConfigError(f"got {len(texts)} texts but {len(contexts)} contexts")
        return self.judge_batch(list(texts), vals, None if contexts is None else list(contexts))

    def describe(self) -> dict[str, Any]:
        """Identity of the judge for manifests (name, model, thresholds hash, …)."""
        return {"name": self.name}


JUDGES: dict[str, Callable[..., Judge]] = {}


def register_judge(name: str) -> Callable[[Callable[..., Judge]], Callable[..., Judge]]:
    def deco(factory: Callable[..., Judge]) -> Callable[..., Judge]:
        JUDGES[name] = factory
        return factory
    return deco


def get_judge(name: str, **kwargs: Any) -> Judge:
    # Importing the implementations registers them.
    from . import _registry  # noqa: F401

    if name not in JUDGES:
        raise ConfigError(f"unknown judge {name!r}; available: {', '.join(sorted(JUDGES)) or 'none'}")
    return JUDGES[name](**kwargs)
