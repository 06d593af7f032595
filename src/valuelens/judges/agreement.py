"""Agreement between judges: percent agreement and Cohen's kappa, per value and pooled.

>>> import numpy as np
>>> a = np.array([1] * 20 + [1] * 5 + [0] * 10 + [0] * 15)   # textbook table: 20 yes/yes, 5 yes/no,
>>> b = np.array([1] * 20 + [0] * 5 + [1] * 10 + [0] * 15)   # 10 no/yes, 15 no/no
>>> round(cohen_kappa(a, b), 3), percent_agreement(a, b)
(0.4, 0.7)

Cohen's kappa for two binary raters: κ = (p_o − p_e) / (1 − p_e), with p_o the observed agreement and
p_e = p_a·p_b + (1 − p_a)(1 − p_b) the agreement expected from the raters' own "yes" rates. When p_e = 1 (both
raters gave one and the same label to every item) κ is undefined and reported as NaN, not 1.

Cells that are invalid in either result (an unparsable LLM answer) are left out, per value and in the pooled
figures; ``n`` says how many cells each figure rests on. *Pooled* treats every valid (text, value) cell as one
item; ``mean_kappa`` is the unweighted mean of the per-value kappas that are defined.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..values import VALUE_NAMES, VALUEEVAL_CATEGORIES, SchwartzValue, get_value, valueeval_to_schwartz_matrix
from .base import JudgeResult

__all__ = ["Agreement", "AgreementReport", "agreement", "agreement_with_labels", "cohen_kappa",
           "labels_to_result", "percent_agreement"]


def _binary(x: Any) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype != bool and not np.isin(arr, (0, 1)).all():
        raise ConfigError("agreement needs binary labels (0/1 or bool)")
    return arr.astype(bool).ravel()


def percent_agreement(a: Any, b: Any) -> float:
    """Share of items on which the two raters agree (NaN for no items)."""
    a, b = _binary(a), _binary(b)
    if a.shape != b.shape:
        raise ConfigError(f"rater arrays differ in size: {a.shape} vs {b.shape}")
    return float((a == b).mean()) if a.size else math.nan


def cohen_kappa(a: Any, b: Any) -> float:
    """Cohen's kappa of two binary raters (NaN when undefined: no items, or p_e = 1)."""
    a, b = _binary(a), _binary(b)
    if a.shape != b.shape:
        raise ConfigError(f"rater arrays differ in size: {a.shape} vs {b.shape}")
    if not a.size:
        return math.nan
    po = float((a == b).mean())
    pa, pb = float(a.mean()), float(b.mean())
    pe = pa * pb + (1 - pa) * (1 - pb)
    if pe >= 1 - 1e-12:
        return math.nan
    return (po - pe) / (1 - pe)


@dataclass
class Agreement:
    """Agreement figures for one value (or pooled): cells used, agreement, kappa, each rater's yes rate."""

    n: int
    agreement: float
    kappa: float
    rate_a: float
    rate_b: float


@dataclass
class AgreementReport:
    per_value: dict[str, Agreement]
    pooled: Agreement
    mean_kappa: float
    n_invalid: int  # cells left out because either result marked them invalid
    names: tuple[str, str] = ("a", "b")
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"names": list(self.names), "pooled": asdict(self.pooled), "mean_kappa": self.mean_kappa,
                "n_invalid": self.n_invalid, "per_value": {k: asdict(v) for k, v in self.per_value.items()},
                **self.extra}

    def to_markdown(self) -> str:
        def f(x: float) -> str:
            return "" if math.isnan(x) else f"{x:.3f}"

        a, b = self.names
        lines = [f"| value | n | agreement | kappa | yes rate {a} | yes rate {b} |", "|---|---|---|---|---|---|"]
        for name, g in [*self.per_value.items(), ("pooled", self.pooled)]:
            lines.append(f"| {name} | {g.n} | {f(g.agreement)} | {f(g.kappa)} | {f(g.rate_a)} | {f(g.rate_b)} |")
        lines.append(f"\nmean per-value kappa: {f(self.mean_kappa)}; cells left out as invalid: {self.n_invalid}")
        return "\n".join(lines) + "\n"


def _one(a: np.ndarray, b: np.ndarray) -> Agreement:
    n = int(a.size)
    return Agreement(n=n, agreement=percent_agreement(a, b), kappa=cohen_kappa(a, b),
                     rate_a=float(a.mean()) if n else math.nan, rate_b=float(b.mean()) if n else math.nan)


def agreement(a: JudgeResult, b: JudgeResult, names: tuple[str, str] = ("a", "b")) -> AgreementReport:
    """Agreement of two judge results on the same texts, over the values both have (in ``a``'s order)."""
    if a.labels.shape[0] != b.labels.shape[0]:
        raise ConfigError(f"the two results label different numbers of texts: {a.labels.shape[0]} vs "
                          f"{b.labels.shape[0]}")
    b_cols = {v.name: j for j, v in enumerate(b.values)}
    common = [(i, b_cols[v.name], v.name) for i, v in enumerate(a.values) if v.name in b_cols]
    if not common:
        raise ConfigError("the two results share no value")
    per: dict[str, Agreement] = {}
    pooled_a: list[np.ndarray] = []
    pooled_b: list[np.ndarray] = []
    n_invalid = 0
    for ia, ib, name in common:
        ok = a.valid[:, ia].astype(bool) & b.valid[:, ib].astype(bool)
        n_invalid += int((~ok).sum())
        la, lb = a.labels[ok, ia].astype(bool), b.labels[ok, ib].astype(bool)
        per[name] = _one(la, lb)
        pooled_a.append(la)
        pooled_b.append(lb)
    pooled = _one(np.concatenate(pooled_a), np.concatenate(pooled_b))
    kappas = [g.kappa for g in per.values() if not math.isnan(g.kappa)]
    mean_kappa = float(np.mean(kappas)) if kappas else math.nan
    return AgreementReport(per_value=per, pooled=pooled, mean_kappa=mean_kappa, n_invalid=n_invalid, names=names)


def labels_to_result(labels: Any, values: Sequence[str | SchwartzValue] | None = None) -> JudgeResult:
    """Wrap gold or detector labels as a :class:`JudgeResult` (all cells valid).

    ``labels``: ``[N, 20]`` ValueEval categories (mapped to the 10 values: a value is present when any of its
    categories is) or ``[N, 10]`` Schwartz values in :data:`~valuelens.values.VALUE_NAMES` order. ``values``
    selects columns of the 10.
    """
    arr = np.asarray(labels)
    if arr.ndim != 2 or arr.shape[1] not in (len(VALUEEVAL_CATEGORIES), len(VALUE_NAMES)):
        raise ConfigError(f"labels must be [N, {len(VALUEEVAL_CATEGORIES)}] or [N, {len(VALUE_NAMES)}], "
                          f"got {arr.shape}")
    arr = _binary(arr).reshape(arr.shape).astype(np.int64)
    if arr.shape[1] == len(VALUEEVAL_CATEGORIES):
        arr = (arr @ valueeval_to_schwartz_matrix()) > 0
    vals = [get_value(v) for v in (values if values is not None else VALUE_NAMES)]
    cols = [VALUE_NAMES.index(v.name) for v in vals]
    lab = arr[:, cols].astype(bool)
    return JudgeResult(values=vals, labels=lab, scores=lab.astype(float),
                       valid=np.ones_like(lab, dtype=bool))


def agreement_with_labels(result: JudgeResult, labels: Any, name: str = "labels") -> AgreementReport:
    """Agreement of a judge with fixed labels (gold ValueEval labels, or a detector's 0/1 predictions)."""
    ref = labels_to_result(labels, [v.name for v in result.values])
    return agreement(result, ref, names=("judge", name))
