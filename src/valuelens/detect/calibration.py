"""Calibrated per-category probabilities, expected calibration error, reliability diagrams.

A detector's sigmoid outputs are not probabilities one can trust: the head's bias starts at the prior, the
thresholds that maximise the official measure sit anywhere on 0.02…0.95, and ensembles average members of
different sharpness. A :class:`Calibrator` maps each category's raw probability to a calibrated one with a
monotone function fitted on the *held-out* training conclusions (never on the split that is scored):

* ``platt`` (default): ``sigmoid(a·logit(p) + b)`` per category (logistic regression on the logit, lightly
  L2-regularised so that rare categories with a handful of held-out positives stay close to identity);
* ``temperature``: ``sigmoid(logit(p) / T)`` per category (Platt without the shift);
* ``isotonic``: a per-category isotonic regression (stored as breakpoints, interpolated linearly);
* ``none``: identity.

All are monotone in ``p``, so a category's ranking of texts — and therefore its tuned threshold, mapped
through the same function — is unchanged (isotonic may merge ties). Saved as ``calibration.json`` next to
``thresholds.json``; :func:`expected_calibration_error` (equal-width bins, per category) and
:func:`reliability_diagram` measure the result.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ModelError
from ..runio import atomic_path, atomic_write_json

__all__ = ["CALIBRATION_METHODS", "Calibrator", "expected_calibration_error", "reliability_diagram"]

CALIBRATION_METHODS = ("none", "platt", "temperature", "isotonic")
_EPS = 1e-6


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _fit_affine(z: np.ndarray, y: np.ndarray, *, shift: bool, l2: float = 1.0, iters: int = 50) -> tuple[float, float]:
    """Newton's method for ``sigmoid(a·z + b)`` on 0/1 ``y``, with an L2 pull of (a, b) towards (1, 0)."""
    a, b = 1.0, 0.0
    for _ in range(iters):
        p = _sigmoid(a * z + b)
        w = p * (1 - p)
        r = p - y
        ga = float(r @ z) + l2 * (a - 1.0)
        gb = float(r.sum()) + l2 * b
        haa = float(w @ (z * z)) + l2
        hab = float(w @ z)
        hbb = float(w.sum()) + l2
        if shift:
            det = haa * hbb - hab * hab
            if det <= 1e-12:
                break
            da = (hbb * ga - hab * gb) / det
            db = (haa * gb - hab * ga) / det
        else:
            da, db = ga / haa, 0.0
        a, b = a - da, b - db
        if abs(da) < 1e-8 and abs(db) < 1e-8:
            break
    return max(a, 1e-3), b  # a > 0 keeps the map increasing


class Calibrator:
    """Per-category monotone map from raw to calibrated probabilities (see the module docstring)."""

    def __init__(self, method: str, params: list[dict[str, Any]], categories: Sequence[str]) -> None:
        if method not in CALIBRATION_METHODS:
            raise ConfigError(f"unknown calibration {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
        if len(params) != len(categories):
            raise ModelError(f"calibration has {len(params)} entries for {len(categories)} categories")
        self.method = method
        self.params = params
        self.categories = list(categories)
        self.info: dict[str, Any] = {}

    @classmethod
    def fit(cls, probs: np.ndarray, gold: np.ndarray, method: str = "platt",
            categories: Sequence[str] | None = None) -> Calibrator:
        """Fit on held-out probabilities ``[N, C]`` and 0/1 labels ``[N, C]``."""
        probs = np.asarray(probs, dtype=np.float64)
        gold = np.asarray(gold, dtype=np.float64)
        cats = list(categories) if categories is not None else [f"c{j}" for j in range(probs.shape[1])]
        params: list[dict[str, Any]] = []
        for j in range(probs.shape[1]):
            y, p = gold[:, j], probs[:, j]
            if method == "none" or y.min() == y.max():  # no information to fit on: identity
                params.append({"a": 1.0, "b": 0.0} if method != "isotonic" else {"x": [0.0, 1.0], "y": [0.0, 1.0]})
            elif method in ("platt", "temperature"):
                a, b = _fit_affine(_logit(p), y, shift=method == "platt")
                params.append({"a": a, "b": b})
            elif method == "isotonic":
                from sklearn.isotonic import IsotonicRegression

                iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(p, y)
                params.append({"x": [float(v) for v in iso.X_thresholds_],
                               "y": [float(v) for v in iso.y_thresholds_]})
            else:
                raise ConfigError(f"unknown calibration {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}")
        cal = cls(method, params, cats)
        cal.info = {"n_fit": int(probs.shape[0])}
        return cal

    def transform(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``[N, C]``."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != len(self.params):
            raise ModelError(f"calibrator for {len(self.params)} categories got probabilities {probs.shape}")
        if self.method == "none":
            return probs.copy()
        out = np.empty_like(probs)
        for j, prm in enumerate(self.params):
            if self.method == "isotonic":
                out[:, j] = np.interp(probs[:, j], prm["x"], prm["y"])
            else:
                out[:, j] = _sigmoid(prm["a"] * _logit(probs[:, j]) + prm["b"])
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"format": "valuelens-calibration/1", "method": self.method, "categories": self.categories,
                "params": self.params, **self.info}

    def save(self, folder: str | os.PathLike[str]) -> Path:
        path = Path(folder) / "calibration.json"
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Calibrator | None:
        """The calibrator saved in a detector folder, or None when it has none (detectors before calibration)."""
        path = Path(folder) / "calibration.json"
        if not path.exists():
            return None
        d = json.loads(path.read_text())
        cal = cls(d["method"], d["params"], d["categories"])
        cal.info = {k: v for k, v in d.items() if k not in ("format", "method", "categories", "params")}
        return cal


def expected_calibration_error(probs: np.ndarray, gold: np.ndarray, n_bins: int = 10) -> np.ndarray:
    """Per-category ECE ``[C]``: Σ_bins (n_b / N) · |mean probability − positive rate| over equal-width bins."""
    probs = np.asarray(probs, dtype=np.float64)
    gold = np.asarray(gold, dtype=np.float64)
    if probs.shape != gold.shape or probs.ndim != 2:
        raise ConfigError(f"probabilities {probs.shape} and labels {gold.shape} must both be [N, C]")
    bins = np.minimum((probs * n_bins).astype(np.int64), n_bins - 1)
    n = probs.shape[0]
    out = np.zeros(probs.shape[1])
    for j in range(probs.shape[1]):
        sp = np.bincount(bins[:, j], weights=probs[:, j], minlength=n_bins)
        sy = np.bincount(bins[:, j], weights=gold[:, j], minlength=n_bins)
        out[j] = float(np.abs(sp - sy).sum() / max(n, 1))  # Σ n_b |mean_p − mean_y| / N
    return out


def reliability_diagram(path: str | os.PathLike[str], curves: dict[str, tuple[np.ndarray, np.ndarray]], *,
                        n_bins: int = 10, title: str = "") -> Path:
    """PNG: positive rate against mean predicted probability per bin, pooled over categories, one line per
    entry of ``curves`` (name → (probs ``[N, C]``, gold ``[N, C]``)); the legend gives each one's mean ECE."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.0, 6.0), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect")
    for name, (p, y) in curves.items():
        p = np.asarray(p, dtype=np.float64).ravel()
        y = np.asarray(y, dtype=np.float64).ravel()
        b = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
        cnt = np.bincount(b, minlength=n_bins)
        keep = cnt > 0
        mp = np.bincount(b, weights=p, minlength=n_bins)[keep] / cnt[keep]
        my = np.bincount(b, weights=y, minlength=n_bins)[keep] / cnt[keep]
        ece = float(expected_calibration_error(*curves[name]).mean())
        ax.plot(mp, my, marker="o", ms=3, label=f"{name} (mean ECE {ece:.3f})")
        axh.plot((np.arange(n_bins) + 0.5) / n_bins, cnt / cnt.sum(), marker=".", label=name)
    ax.set_ylabel("positive rate")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title or "reliability (all categories pooled)")
    ax.legend(fontsize=7)
    axh.set_yscale("log")
    axh.set_xlabel("predicted probability")
    axh.set_ylabel("share")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path
