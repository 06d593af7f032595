"""Circumplex evaluation: do the ten value axes lie on Schwartz's circle? (MISSION.md §2 step 9)

Procedure: PCA of the value axes (one ``[D]`` vector per value) → the top-2 principal-component scores
``Y [k, 2]`` → Procrustes fit of ``Y`` to the theoretical circle (:func:`valuelens.values.circumplex_coordinates`),
allowing rotation, reflection, uniform scale and translation → ``R² = 1 − SS_res/SS_tot`` of the fitted
configuration against the target → compared with a permutation baseline in which the value labels are shuffled.

Closed form used throughout: with ``Y`` and the target ``T`` centred, the optimal orthogonal map is
``R = U Vᵀ`` from ``Yᵀ T = U Σ Vᵀ`` (reflections allowed, so no determinant correction), the optimal scale is
``s = tr Σ / ‖Y‖²``, and ``R² = (tr Σ)² / (‖Y‖² ‖T‖²)`` ∈ [0, 1].

>>> import numpy as np
>>> from valuelens.values import circumplex_coordinates
>>> Y = 3.0 * circumplex_coordinates() @ np.array([[0.0, 1.0], [1.0, 0.0]]) + 5.0   # reflected, scaled, moved
>>> round(procrustes_fit(Y).r2, 6)
1.0
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sstats

from ..errors import ConfigError, DataError
from ..values import VALUE_NAMES, circumplex_coordinates, get_value, theoretical_cosine_matrix

__all__ = [
    "PCA2D",
    "ProcrustesResult",
    "circumplex_analysis",
    "cosine_matrix",
    "pca_2d",
    "permutation_baseline",
    "procrustes_fit",
]


def _to_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().to("cpu").double().numpy()
    arr = np.asarray(x, dtype=np.float64)
    if not np.isfinite(arr).all():
        raise DataError("circumplex: input contains NaN or inf")
    return arr


@dataclass
class PCA2D:
    """Top-2 PCA of ``X [k, D]``.

    ``coords [k, 2]`` = scores of the centred rows on the two components; ``components [2, D]`` (unit rows,
    sign fixed so each component's largest-magnitude loading is positive); ``explained_variance_ratio [2]``
    = share of the total variance of the centred ``X`` per component; ``mean [D]``.
    """

    coords: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray
    mean: np.ndarray


def pca_2d(X: Any) -> PCA2D:
    """PCA of ``X: [k, D]`` (numpy or torch) keeping two components.

    >>> import numpy as np
    >>> p = pca_2d(np.array([[2.0, 0, 0], [-2.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]]))
    >>> p.explained_variance_ratio.round(3).tolist()
    [0.8, 0.2]
    """
    x = _to_numpy(X)
    if x.ndim != 2 or x.shape[0] < 3:
        raise ConfigError(f"pca_2d needs a [k, D] matrix with k >= 3, got shape {x.shape}")
    mean = x.mean(axis=0)
    xc = x - mean
    _, s, vt = np.linalg.svd(xc, full_matrices=False)
    comps = vt[:2].copy()
    if comps.shape[0] < 2:  # D == 1
        comps = np.vstack([comps, np.zeros_like(comps)])
        s = np.concatenate([s, [0.0]])
    for i in range(2):
        j = int(np.argmax(np.abs(comps[i])))
        if comps[i, j] < 0:
            comps[i] = -comps[i]
    total = float((s**2).sum())
    ratio = (s[:2] ** 2) / total if total > 0 else np.zeros(2)
    return PCA2D(coords=xc @ comps.T, components=comps, explained_variance_ratio=ratio, mean=mean)


@dataclass
class ProcrustesResult:
    """Similarity Procrustes fit of ``Y`` onto ``target``: ``fitted = scale · (Y − mean Y) @ rotation + mean T``.

    ``rotation`` is orthogonal (``reflection`` is True when its determinant is −1); ``r2 = 1 − SS_res/SS_tot``
    with ``SS_tot = Σ‖T − mean T‖²``.
    """

    r2: float
    fitted: np.ndarray
    rotation: np.ndarray
    scale: float
    translation: np.ndarray
    reflection: bool

    def to_dict(self) -> dict[str, Any]:
        return {"r2": self.r2, "scale": self.scale, "reflection": self.reflection,
                "rotation": self.rotation.tolist(), "translation": self.translation.tolist(),
                "fitted": self.fitted.tolist()}


def _target(target: Any | None, k: int) -> np.ndarray:
    t = circumplex_coordinates() if target is None else _to_numpy(target)
    if t.shape != (k, 2):
        raise ConfigError(f"procrustes: target has shape {t.shape}, expected ({k}, 2)")
    return t


def procrustes_fit(Y: Any, target: Any | None = None) -> ProcrustesResult:
    """Fit ``Y: [k, 2]`` to ``target: [k, 2]`` (default: the theoretical circle) by rotation, reflection,
    uniform scale and translation; see the module docstring for the closed form.

    A degenerate ``Y`` (all rows equal) gets ``r2 = 0`` and ``scale = 0``.

    >>> import numpy as np
    >>> T = np.array([[1.0, 0], [0, 1], [-1, 0], [0, -1]])
    >>> Y = np.array([[1.0, 0], [0, 0], [-1, 0], [0, 0]])      # the square squashed onto a line
    >>> procrustes_fit(Y, T).r2                                # (tr Σ)² / (‖Y‖²‖T‖²) = 4 / (2·4)
    0.5
    """
    y = _to_numpy(Y)
    if y.ndim != 2 or y.shape[1] != 2 or y.shape[0] < 3:
        raise ConfigError(f"procrustes_fit needs Y of shape [k >= 3, 2], got {y.shape}")
    t = _target(target, y.shape[0])
    my, mt = y.mean(axis=0), t.mean(axis=0)
    yc, tc = y - my, t - mt
    ss_y, ss_t = float((yc**2).sum()), float((tc**2).sum())
    if ss_t <= 0:
        raise ConfigError("procrustes_fit: the target configuration is a single point")
    if ss_y <= 0:
        fitted = np.tile(mt, (y.shape[0], 1))
        return ProcrustesResult(0.0, fitted, np.eye(2), 0.0, mt - 0.0, False)
    u, s, vt = np.linalg.svd(yc.T @ tc)
    rot = u @ vt
    scale = float(s.sum() / ss_y)
    fitted = scale * yc @ rot + mt
    r2 = 1.0 - float(((fitted - t) ** 2).sum()) / ss_t
    return ProcrustesResult(r2=float(np.clip(r2, 0.0, 1.0)), fitted=fitted, rotation=rot, scale=scale,
                            translation=mt - scale * my @ rot, reflection=bool(np.linalg.det(rot) < 0))


def _r2_batch(yc_perm: np.ndarray, tc: np.ndarray, ss_y: float, ss_t: float) -> np.ndarray:
    """R² for a batch of centred configurations ``[P, k, 2]`` against centred ``tc [k, 2]``."""
    m = np.einsum("pki,kj->pij", yc_perm, tc)
    nuc = np.linalg.svd(m, compute_uv=False).sum(axis=-1)
    return np.clip(nuc**2 / (ss_y * ss_t), 0.0, 1.0)


def permutation_baseline(Y: Any, n: int = 1000, seed: int = 0, target: Any | None = None) -> dict[str, Any]:
    """Null distribution of the Procrustes R² when the value labels of ``Y: [k, 2]`` are shuffled.

    Returns ``observed`` (R² with the true labels), ``mean``, ``std``, ``p95`` of the ``n`` permuted R²s and
    ``p_value = (1 + #{permuted R² ≥ observed − 1e-12}) / (n + 1)`` (the permutation test's standard
    add-one estimate, never 0). Deterministic for a given ``seed``.

    >>> import numpy as np
    >>> from valuelens.values import circumplex_coordinates
    >>> out = permutation_baseline(circumplex_coordinates(), n=200, seed=0)
    >>> round(out["observed"], 6), out["p_value"] < 0.01
    (1.0, True)
    """
    if n < 1:
        raise ConfigError(f"permutation_baseline: n must be >= 1, got {n}")
    y = _to_numpy(Y)
    if y.ndim != 2 or y.shape[1] != 2 or y.shape[0] < 3:
        raise ConfigError(f"permutation_baseline needs Y of shape [k >= 3, 2], got {y.shape}")
    t = _target(target, y.shape[0])
    observed = procrustes_fit(y, t).r2
    yc, tc = y - y.mean(axis=0), t - t.mean(axis=0)
    ss_y, ss_t = float((yc**2).sum()), float((tc**2).sum())
    if ss_y <= 0:
        null = np.zeros(n)
    else:
        rng = np.random.default_rng(seed)
        perms = np.argsort(rng.random((n, y.shape[0])), axis=1)
        null = _r2_batch(yc[perms], tc, ss_y, ss_t)
    p_value = (1.0 + float((null >= observed - 1e-12).sum())) / (n + 1.0)
    return {"observed": float(observed), "mean": float(null.mean()), "std": float(null.std()),
            "p95": float(np.percentile(null, 95)), "p_value": p_value, "n": int(n), "seed": int(seed)}


def cosine_matrix(X: Any) -> np.ndarray:
    """``[k, D] → [k, k]`` cosine similarities of the rows; a zero row has cosine 0 with everything (1 with
    itself on the diagonal)."""
    x = _to_numpy(X)
    n = np.linalg.norm(x, axis=1)
    unit = x / np.where(n > 0, n, 1.0)[:, None]
    c = np.clip(unit @ unit.T, -1.0, 1.0)
    np.fill_diagonal(c, 1.0)
    return c


def circumplex_analysis(axes: Mapping[str, Any], *, n_permutations: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Everything for the circumplex table/figure, for ``axes = {value name: [D] vector}`` (≥ 3 values).

    Values are put in circumplex order (:data:`~valuelens.values.VALUE_NAMES`) and the target is their
    positions on the theoretical circle. Returns a JSON-ready dict with ``values``, ``pca``
    (``explained_variance_ratio``, ``top2_share``, ``coords``), ``procrustes`` (:class:`ProcrustesResult`),
    ``permutation`` (:func:`permutation_baseline`), ``cosine_matrix``, ``theoretical_cosine_matrix`` and
    ``cosine_correlation``: Pearson and Spearman correlation of the off-diagonal (upper-triangle) entries of
    the observed and theoretical cosine matrices.

    >>> import numpy as np
    >>> from valuelens.values import VALUE_NAMES, circumplex_coordinates
    >>> basis = np.linalg.qr(np.random.default_rng(0).normal(size=(16, 2)))[0]   # a 2-D plane in R^16
    >>> axes = dict(zip(VALUE_NAMES, circumplex_coordinates() @ basis.T))
    >>> out = circumplex_analysis(axes, n_permutations=200)
    >>> round(out["procrustes"]["r2"], 6), out["permutation"]["p_value"] < 0.01
    (1.0, True)
    """
    if not axes:
        raise ConfigError("circumplex_analysis: no axes given")
    by_name = {get_value(k).name: v for k, v in axes.items()}
    if len(by_name) != len(axes):
        raise ConfigError("circumplex_analysis: the same value appears twice under different spellings")
    names = [v for v in VALUE_NAMES if v in by_name]
    if len(names) < 3:
        raise ConfigError(f"circumplex_analysis needs at least 3 values, got {names}")
    rows = [_to_numpy(by_name[v]).reshape(-1) for v in names]
    if len({r.shape[0] for r in rows}) != 1:
        raise ConfigError("circumplex_analysis: axes have different dimensions")
    x = np.stack(rows)
    idx = [VALUE_NAMES.index(v) for v in names]
    target = circumplex_coordinates()[idx]

    pca = pca_2d(x)
    fit = procrustes_fit(pca.coords, target)
    perm = permutation_baseline(pca.coords, n=n_permutations, seed=seed, target=target)
    cos = cosine_matrix(x)
    theo = theoretical_cosine_matrix()[np.ix_(idx, idx)]
    iu = np.triu_indices(len(names), k=1)
    a, b = cos[iu], theo[iu]
    if len(a) >= 3 and np.std(a) > 0 and np.std(b) > 0:
        pearson = float(sstats.pearsonr(a, b)[0])
        spearman = float(sstats.spearmanr(a, b)[0])
    else:
        pearson = spearman = float("nan")
    return {
        "values": names,
        "pca": {"explained_variance_ratio": pca.explained_variance_ratio.tolist(),
                "top2_share": float(pca.explained_variance_ratio.sum()), "coords": pca.coords.tolist()},
        "procrustes": fit.to_dict(),
        "permutation": perm,
        "cosine_matrix": cos.tolist(),
        "theoretical_cosine_matrix": theo.tolist(),
        "cosine_correlation": {"pearson": pearson, "spearman": spearman, "n_pairs": len(a)},
    }
