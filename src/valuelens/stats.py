"""Statistics for findings: bootstrap confidence intervals, permutation p-values, minimal detectable effects, and
the typed :class:`Finding` record every analysis writes to ``findings.json``.

Conventions used throughout valuelens:

* **Confidence intervals** are percentile bootstrap intervals (2,000 resamples by default, seeded) over the *unit*
  the effect is averaged over — questionnaire items, responses, queries, instructions, values — which every
  finding names in ``unit``. Resampling another unit (e.g. tokens inside a response) would understate the error.
* **p-values** compare the effect with its *control* (a random direction of the same norm, a random neuron set of
  the same size, a label permutation). Paired designs (the same item under the value steer and under its control)
  use a sign-flip permutation test of the mean paired difference; unpaired ones a label permutation test. Monte
  Carlo p-values are ``(1 + #{null ≥ observed}) / (1 + n_perm)``, so they are never 0 and are valid (not
  anti-conservative) at any number of permutations; with few units the exact sign-flip distribution is enumerated.
* **Minimal detectable effect** (MDE) at two-sided α = 0.05 and 80 % power: ``(z_{0.975} + z_{0.80}) · SE`` with the
  effect's standard error (≈ 2.80 SE). A "not detected" finding whose MDE is larger than the paper's effect says the
  run was too small to see it; one whose MDE is smaller says the effect is absent at this scale.

>>> import numpy as np
>>> r = mean_ci(np.array([1.0, 2.0, 3.0, 4.0]), seed=0)
>>> round(r.estimate, 2), r.low <= 2.5 <= r.high
(2.5, True)
>>> sign_flip_test(np.ones(12)) < 0.001
True
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "STATUSES",
    "BootstrapResult",
    "Finding",
    "bootstrap",
    "decide_status",
    "mde",
    "mean_ci",
    "paired_effect",
    "permutation_test",
    "shifted_percentile_ci",
    "sign_flip_test",
    "z_quantile",
]

Status = Literal["reproduced", "not detected", "contradicted", "untestable"]
STATUSES: tuple[str, ...] = ("reproduced", "not detected", "contradicted", "untestable")
Alternative = Literal["two-sided", "greater", "less"]


def z_quantile(p: float) -> float:
    """The standard normal quantile (inverse CDF) at ``p`` (Acklam's rational approximation refined by one Newton
    step on ``math.erf``; |error| < 1e-12), so this module needs no SciPy.

    >>> round(z_quantile(0.975), 4)
    1.96
    """
    if not 0.0 < p < 1.0:
        raise ValueError(f"quantile level must be in (0, 1), got {p}")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
         -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
         -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
         4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    lo = 0.02425
    if p < lo:
        q = math.sqrt(-2 * math.log(p))
        x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    elif p <= 1 - lo:
        q = p - 0.5
        r = q * q
        x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q / \
            (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    else:
        q = math.sqrt(-2 * math.log(1 - p))
        x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / \
            ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1)
    e = 0.5 * math.erfc(-x / math.sqrt(2)) - p
    return x - e * math.sqrt(2 * math.pi) * math.exp(x * x / 2)


def mde(se: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Minimal detectable effect of a two-sided test at ``alpha`` with ``power``, for an effect whose standard error
    is ``se``: ``(z_{1-α/2} + z_{power}) · se``.

    >>> round(mde(1.0), 3)
    2.802
    """
    if not math.isfinite(se) or se < 0:
        return float("nan")
    return (z_quantile(1 - alpha / 2) + z_quantile(power)) * se


def shifted_percentile_ci(boot: Sequence[float] | np.ndarray, point: float, *, level: float = 0.95
                          ) -> tuple[float, float, float]:
    """Percentile interval of bootstrap replicates ``boot`` moved by the bootstrap bias ``mean(boot) − point``:
    ``(low, high, bias)``.

    Why: statistics such as the cosine between two noisy mean differences fall when units are resampled with
    replacement, so their replicates sit below the point estimate and a plain percentile interval can exclude it
    (measured on SmolLM2: cos(v_int, v_prompt) of Tradition 0.772, percentile interval [0.32, 0.74]). The shifted
    interval keeps the replicates' spread and is centred on the estimate.

    >>> shifted_percentile_ci(np.array([0.1, 0.2, 0.3]), 0.5, level=0.5)
    (0.45, 0.55, -0.3)
    """
    b = np.asarray(boot, dtype=float)
    b = b[np.isfinite(b)]
    if not len(b) or not math.isfinite(point):
        return float("nan"), float("nan"), float("nan")
    bias = float(b.mean()) - float(point)
    lo, hi = np.quantile(b, [(1 - level) / 2, (1 + level) / 2])
    return round(float(lo) - bias, 12), round(float(hi) - bias, 12), round(bias, 12)


@dataclass(frozen=True)
class BootstrapResult:
    """A point estimate with its percentile bootstrap interval and standard error."""

    estimate: float
    low: float
    high: float
    se: float
    n: int
    level: float = 0.95

    @property
    def mde(self) -> float:
        return mde(self.se)


def bootstrap(statistic: Callable[[np.ndarray], float], n: int, *, n_boot: int = 2000, seed: int = 0,
              level: float = 0.95, strata: Sequence[Any] | None = None) -> BootstrapResult:
    """Percentile bootstrap of ``statistic(indices)`` over ``n`` units.

    ``statistic`` receives an integer index array (the full ``arange(n)`` for the point estimate, resampled
    indices otherwise) and returns a float. ``strata``: one label per unit; resampling then happens within each
    stratum (keeps e.g. the number of responses per value fixed). Resamples whose statistic is not finite (a
    group emptied by the resampling) are dropped; if more than 10 % are, the interval is NaN.
    """
    if n < 1:
        return BootstrapResult(float("nan"), float("nan"), float("nan"), float("nan"), 0, level)
    rng = np.random.default_rng(seed)
    est = float(statistic(np.arange(n)))
    if strata is not None:
        labels = np.asarray(list(strata))
        if len(labels) != n:
            raise ValueError(f"{len(labels)} strata labels for {n} units")
        groups = [np.flatnonzero(labels == s) for s in dict.fromkeys(labels.tolist())]
    else:
        groups = [np.arange(n)]
    vals = np.empty(n_boot)
    for b in range(n_boot):
        idx = np.concatenate([g[rng.integers(0, len(g), len(g))] for g in groups])
        vals[b] = statistic(idx)
    ok = vals[np.isfinite(vals)]
    if len(ok) < 0.9 * n_boot or n < 2:
        return BootstrapResult(est, float("nan"), float("nan"), float("nan"), n, level)
    lo, hi = np.quantile(ok, [(1 - level) / 2, 1 - (1 - level) / 2])
    return BootstrapResult(est, float(lo), float(hi), float(np.std(ok, ddof=1)), n, level)


def mean_ci(x: Sequence[float] | np.ndarray, *, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
            strata: Sequence[Any] | None = None) -> BootstrapResult:
    """Bootstrap CI of the mean of ``x`` (one value per unit; NaNs are dropped first).

    Vectorised for the common case without strata.
    """
    a = np.asarray(x, dtype=np.float64)
    keep = np.isfinite(a)
    a = a[keep]
    n = len(a)
    if strata is not None:
        st = np.asarray(list(strata))[keep]
        return bootstrap(lambda i: float(a[i].mean()), n, n_boot=n_boot, seed=seed, level=level, strata=st)
    if n == 0:
        return BootstrapResult(float("nan"), float("nan"), float("nan"), float("nan"), 0, level)
    if n == 1:
        return BootstrapResult(float(a[0]), float("nan"), float("nan"), float("nan"), 1, level)
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, n, (n_boot, n))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return BootstrapResult(float(a.mean()), float(lo), float(hi), float(means.std(ddof=1)), n, level)


def _p_from_null(null: np.ndarray, observed: float, alternative: Alternative, exact: bool) -> float:
    eps = 1e-12 * max(1.0, abs(observed))  # ties with the observed statistic count as "as extreme"
    if alternative == "greater":
        k = int(np.sum(null >= observed - eps))
    elif alternative == "less":
        k = int(np.sum(null <= observed + eps))
    else:
        k = int(np.sum(np.abs(null) >= abs(observed) - eps))
    if exact:
        return k / len(null)
    return (1 + k) / (1 + len(null))


def sign_flip_test(d: Sequence[float] | np.ndarray, *, n_perm: int = 10000, seed: int = 0,
                   alternative: Alternative = "two-sided") -> float:
    """Permutation p-value for "the mean of the paired differences ``d`` is 0" (a random sign per unit).

    Exact (all 2^n sign patterns) when n ≤ 14, Monte Carlo otherwise. NaNs are dropped. Returns NaN for no data.
    """
    a = np.asarray(d, dtype=np.float64)
    a = a[np.isfinite(a)]
    n = len(a)
    if n == 0:
        return float("nan")
    obs = float(a.mean())
    if n <= 14:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
        return _p_from_null(signs @ a / n, obs, alternative, exact=True)
    rng = np.random.default_rng(seed)
    null = np.empty(n_perm)
    for s in range(0, n_perm, 1000):  # chunks keep memory flat for large n
        k = min(1000, n_perm - s)
        null[s:s + k] = (rng.choice((-1.0, 1.0), size=(k, n)) @ a) / n
    return _p_from_null(null, obs, alternative, exact=False)


def permutation_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, *, n_perm: int = 10000,
                     seed: int = 0, alternative: Alternative = "two-sided") -> float:
    """Two-sample permutation p-value for "mean(a) − mean(b) is 0" (group labels shuffled)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    x, y = x[np.isfinite(x)], y[np.isfinite(y)]
    if len(x) == 0 or len(y) == 0:
        return float("nan")
    pooled = np.concatenate([x, y])
    obs = float(x.mean() - y.mean())
    rng = np.random.default_rng(seed)
    null = np.empty(n_perm)
    for i in range(n_perm):
        p = rng.permutation(pooled)
        null[i] = p[: len(x)].mean() - p[len(x):].mean()
    return _p_from_null(null, obs, alternative, exact=False)


@dataclass(frozen=True)
class PairedEffect:
    """Mean paired difference (value condition − control) with CI, sign-flip p-value, SE and MDE."""

    effect: float
    ci_low: float
    ci_high: float
    p_value: float
    n: int
    se: float
    mde: float


def paired_effect(d: Sequence[float] | np.ndarray, *, seed: int = 0, n_boot: int = 2000,
                  strata: Sequence[Any] | None = None) -> PairedEffect:
    """Effect = mean of per-unit differences ``d`` (condition − control), its bootstrap CI over units, the
    two-sided sign-flip p-value and the MDE (from the bootstrap SE, or from sd/√n when n is too small for a
    bootstrap)."""
    a = np.asarray(d, dtype=np.float64)
    if strata is not None:
        keep = np.isfinite(a)
        strata = np.asarray(list(strata))[keep]
    a = a[np.isfinite(a)]
    ci = mean_ci(a, seed=seed, n_boot=n_boot, strata=strata)
    se = ci.se if math.isfinite(ci.se) else (float(a.std(ddof=1) / math.sqrt(len(a))) if len(a) > 1 else math.nan)
    return PairedEffect(effect=ci.estimate, ci_low=ci.low, ci_high=ci.high,
                        p_value=sign_flip_test(a, seed=seed), n=len(a), se=se, mde=mde(se))


def decide_status(effect: float | None, ci_low: float | None, ci_high: float | None, p_value: float | None, *,
                  direction: int = 1, alpha: float = 0.05) -> Status:
    """The status of a finding from its statistics.

    ``reproduced``: p < α against the control, the CI excludes 0, and the effect has the paper's sign
    (``direction`` +1 or −1); ``contradicted``: the same but with the opposite sign; ``not detected`` otherwise;
    ``untestable`` when there is no effect to judge.
    """
    vals = (effect, ci_low, ci_high, p_value)
    if any(v is None or not math.isfinite(float(v)) for v in vals):
        if effect is None or not math.isfinite(float(effect)):
            return "untestable"
        return "not detected"
    assert effect is not None and ci_low is not None and ci_high is not None and p_value is not None
    excludes_zero = ci_low > 0 or ci_high < 0
    if p_value < alpha and excludes_zero:
        return "reproduced" if np.sign(effect) == np.sign(direction) else "contradicted"
    return "not detected"


def _clean(x: Any) -> Any:
    """JSON-safe: NaN/inf → None, numpy scalars → Python."""
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


@dataclass
class Finding:
    """One claim of the paper checked on this run, with its statistics (a row of ``findings.json``).

    ``effect`` is in the units named by ``metric``; ``ci_low``/``ci_high`` its 95 % bootstrap interval over
    ``unit``; ``p_value`` against ``control``; ``n`` the number of units; ``mde`` the smallest effect this run
    would detect with 80 % power at α = 0.05. ``paper_effect`` is the paper's number in the same units when one
    exists, so a reader can compare it with ``mde``. ``status`` is set by :func:`decide_status` unless a reason
    makes the finding ``untestable``.
    """

    id: str
    claim: str
    paper: str
    metric: str
    unit: str
    control: str
    section: str
    effect: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    n: int = 0
    mde: float | None = None
    direction: int = 1
    paper_effect: float | None = None
    status: str = "untestable"
    ours: str = ""
    reason: str = ""
    evidence: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_paired(cls, pe: PairedEffect, **kw: Any) -> Finding:
        f = cls(effect=pe.effect, ci_low=pe.ci_low, ci_high=pe.ci_high, p_value=pe.p_value, n=pe.n, mde=pe.mde,
                **kw)
        return f.decided()

    @classmethod
    def untestable(cls, reason: str, **kw: Any) -> Finding:
        return cls(status="untestable", reason=reason, ours=kw.pop("ours", reason), **kw)

    def decided(self, alpha: float = 0.05) -> Finding:
        """Set ``status`` from the statistics (keeps ``untestable`` when a reason was given)."""
        if self.reason and self.effect is None:
            self.status = "untestable"
        else:
            self.status = decide_status(self.effect, self.ci_low, self.ci_high, self.p_value,
                                        direction=self.direction, alpha=alpha)
        return self

    @property
    def paper_detectable(self) -> bool | None:
        """Would the paper's effect have been detected at this run's MDE (None when either is unknown)?"""
        if self.paper_effect is None or self.mde is None or not math.isfinite(self.mde):
            return None
        return abs(self.paper_effect) >= self.mde

    def to_dict(self) -> dict[str, Any]:
        d = {k: _clean(v) for k, v in asdict(self).items()}
        d["paper_detectable"] = self.paper_detectable
        for k in ("effect", "ci_low", "ci_high", "mde", "paper_effect"):
            if isinstance(d[k], float):
                d[k] = round(d[k], 6)
        if isinstance(d["p_value"], float):
            d["p_value"] = float(f"{d['p_value']:.4g}")
        return d
