"""Pins the circumplex evaluation (valuelens.evals.circumplex): PCA, Procrustes R², permutation baseline."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from valuelens.errors import ConfigError
from valuelens.evals.circumplex import (
    circumplex_analysis,
    cosine_matrix,
    pca_2d,
    permutation_baseline,
    procrustes_fit,
)
from valuelens.values import VALUE_NAMES, circumplex_coordinates, theoretical_cosine_matrix

SQUARE = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])


def _rot(deg: float) -> np.ndarray:
    a = math.radians(deg)
    return np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])


# ------------------------------------------------------------------------------------------------------- PCA


def test_pca_hand_example() -> None:
    # centred rows (±2, 0, 0), (0, ±1, 0): variances 8 and 2 of 10 → ratios 0.8, 0.2
    x = np.array([[2.0, 0, 0], [-2.0, 0, 0], [0, 1.0, 0], [0, -1.0, 0]]) + 7.0
    p = pca_2d(x)
    assert np.allclose(p.explained_variance_ratio, [0.8, 0.2])
    assert np.allclose(np.abs(p.components), [[1, 0, 0], [0, 1, 0]])
    assert np.allclose(p.mean, [7.0, 7.0, 7.0])
    assert np.allclose(np.abs(p.coords), [[2, 0], [2, 0], [0, 1], [0, 1]])


def test_pca_accepts_torch_and_ratios_sum_to_share() -> None:
    x = torch.randn(10, 32, generator=torch.Generator().manual_seed(0))
    p = pca_2d(x)
    xc = x.double().numpy() - x.double().numpy().mean(0)
    s = np.linalg.svd(xc, compute_uv=False)
    assert np.allclose(p.explained_variance_ratio, s[:2] ** 2 / (s**2).sum())
    assert p.coords.shape == (10, 2) and p.components.shape == (2, 32)
    with pytest.raises(ConfigError):
        pca_2d(np.zeros((2, 5)))


# ------------------------------------------------------------------------------------------------ Procrustes


def test_procrustes_squashed_square_hand_example() -> None:
    # Yᵀ T = [[2, 0], [0, 0]] → tr Σ = 2; ‖Y‖² = 2, ‖T‖² = 4 → R² = 4 / 8 = 0.5; scale = 2/2 = 1
    y = np.array([[1.0, 0.0], [0.0, 0.0], [-1.0, 0.0], [0.0, 0.0]])
    fit = procrustes_fit(y, SQUARE)
    assert fit.r2 == pytest.approx(0.5)
    assert fit.scale == pytest.approx(1.0)
    assert np.allclose(fit.fitted, y)  # the best fit is Y itself; SS_res = 2 of SS_tot = 4


def test_procrustes_similarity_transform_gives_r2_one_and_recovers_it() -> None:
    t = circumplex_coordinates()
    reflect = np.array([[1.0, 0.0], [0.0, -1.0]])
    y = 0.25 * t @ _rot(50.0) @ reflect + np.array([3.0, -2.0])
    fit = procrustes_fit(y, t)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert fit.scale == pytest.approx(4.0)
    assert fit.reflection is True
    assert np.allclose(fit.fitted, t, atol=1e-12)
    assert np.allclose(y @ (fit.scale * fit.rotation) + fit.translation, t, atol=1e-12)
    # default target is the theoretical circle
    assert procrustes_fit(y).r2 == pytest.approx(1.0, abs=1e-12)
    # a pure rotation needs no reflection
    assert procrustes_fit(t @ _rot(10.0)).reflection is False


def test_procrustes_r2_formula_matches_direct_residuals() -> None:
    rng = np.random.default_rng(1)
    y, t = rng.normal(size=(10, 2)), circumplex_coordinates()
    fit = procrustes_fit(y, t)
    yc, tc = y - y.mean(0), t - t.mean(0)
    s = np.linalg.svd(yc.T @ tc, compute_uv=False)
    assert fit.r2 == pytest.approx(s.sum() ** 2 / ((yc**2).sum() * (tc**2).sum()))
    assert fit.r2 == pytest.approx(1 - ((fit.fitted - t) ** 2).sum() / (tc**2).sum())
    # no similarity transform can do better: try many random ones
    for _ in range(200):
        r = np.linalg.qr(rng.normal(size=(2, 2)))[0]
        cand = rng.uniform(0.1, 3) * yc @ r + t.mean(0)
        assert 1 - ((cand - t) ** 2).sum() / (tc**2).sum() <= fit.r2 + 1e-12


def test_procrustes_degenerate_and_bad_shapes() -> None:
    fit = procrustes_fit(np.ones((10, 2)))
    assert fit.r2 == 0.0 and fit.scale == 0.0
    with pytest.raises(ConfigError):
        procrustes_fit(np.ones((10, 3)))
    with pytest.raises(ConfigError):
        procrustes_fit(np.ones((4, 2)))  # default target has 10 rows


# ------------------------------------------------------------------------------------------ permutation test


def test_permutation_baseline_perfect_circle() -> None:
    out = permutation_baseline(circumplex_coordinates() @ _rot(33.0), n=1000, seed=0)
    assert out["observed"] == pytest.approx(1.0)
    assert out["p_value"] == pytest.approx(1 / 1001)  # no shuffle fits as well (dihedral shuffles: ~1e-5)
    assert 0.0 < out["mean"] < out["p95"] < 1.0
    assert out == permutation_baseline(circumplex_coordinates() @ _rot(33.0), n=1000, seed=0)  # deterministic


def test_permutation_baseline_matches_loop_over_procrustes() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(size=(10, 2))
    out = permutation_baseline(y, n=50, seed=7)
    perm_rng = np.random.default_rng(7)
    perms = np.argsort(perm_rng.random((50, 10)), axis=1)
    null = np.array([procrustes_fit(y[p]).r2 for p in perms])
    assert out["mean"] == pytest.approx(null.mean())
    assert out["p95"] == pytest.approx(np.percentile(null, 95))
    assert out["p_value"] == pytest.approx((1 + (null >= out["observed"] - 1e-12).sum()) / 51)


# ------------------------------------------------------------------------------------------- full analysis


def _planted_axes(seed: int, noise: float) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(64, 2)))[0]  # random 2-D plane in R^64
    y = 4.0 * circumplex_coordinates() @ _rot(123.0) @ np.array([[0.0, 1.0], [1.0, 0.0]])  # rotated, reflected
    x = y @ basis.T + rng.normal(size=64) + noise * rng.normal(size=(10, 64))
    return dict(zip(VALUE_NAMES, x, strict=True))


def test_circumplex_planted_circle() -> None:
    out = circumplex_analysis(_planted_axes(0, noise=0.02), n_permutations=1000, seed=0)
    assert out["values"] == list(VALUE_NAMES)
    assert out["procrustes"]["r2"] > 0.99
    assert out["permutation"]["p_value"] < 0.01
    assert out["pca"]["top2_share"] > 0.95
    # raw (uncentred) cosines include the common offset, so only the shape and bookkeeping are checked here;
    # the centred case is pinned in the next test
    cos = np.array(out["cosine_matrix"])
    assert cos.shape == (10, 10) and np.allclose(np.diag(cos), 1.0)
    assert np.allclose(out["theoretical_cosine_matrix"], theoretical_cosine_matrix())
    assert out["cosine_correlation"]["n_pairs"] == 45


def test_circumplex_cosine_correlation_is_one_for_centred_circle() -> None:
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(32, 2)))[0]
    axes = dict(zip(VALUE_NAMES, circumplex_coordinates() @ basis.T, strict=True))
    out = circumplex_analysis(axes, n_permutations=100)
    assert out["cosine_correlation"]["pearson"] == pytest.approx(1.0)
    assert np.allclose(out["cosine_matrix"], theoretical_cosine_matrix())


def test_circumplex_pure_noise_is_near_the_baseline() -> None:
    observed, means, small_p = [], [], 0
    for seed in range(30):
        rng = np.random.default_rng(100 + seed)
        axes = dict(zip(VALUE_NAMES, rng.normal(size=(10, 64)), strict=True))
        out = circumplex_analysis(axes, n_permutations=300, seed=seed)
        observed.append(out["procrustes"]["r2"])
        means.append(out["permutation"]["mean"])
        small_p += out["permutation"]["p_value"] < 0.01
    assert abs(np.mean(observed) - np.mean(means)) < 0.06
    assert max(observed) < 0.9
    assert small_p <= 2


def test_circumplex_subset_and_aliases() -> None:
    axes = _planted_axes(4, noise=0.01)
    sub = {"power": axes["Power"], "UNIVERSALISM": axes["Universalism"], "hedonism": axes["Hedonism"],
           "tradition": axes["Tradition"], "Achievement": axes["Achievement"]}
    out = circumplex_analysis(sub, n_permutations=200)
    assert out["values"] == ["Hedonism", "Achievement", "Power", "Tradition", "Universalism"]
    assert out["procrustes"]["r2"] > 0.99
    assert np.array(out["cosine_matrix"]).shape == (5, 5)
    with pytest.raises(ConfigError):
        circumplex_analysis({"power": axes["Power"], "hedonism": axes["Hedonism"]})
    with pytest.raises(ConfigError, match="unknown value"):
        circumplex_analysis({"greed": axes["Power"], "power": axes["Power"], "hedonism": axes["Hedonism"]})


def test_cosine_matrix_hand_example() -> None:
    c = cosine_matrix(np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]]))
    assert np.allclose(c, [[1, 1 / math.sqrt(2), 0], [1 / math.sqrt(2), 1, 0], [0, 0, 1]])


def test_docstring_examples_run() -> None:
    import doctest

    import valuelens.evals.circumplex as mod

    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
