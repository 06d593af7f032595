"""Statistics behind findings: CI coverage on data with a known effect, p-value calibration under the null,
MDE, status rules and the Finding record."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from valuelens.stats import (
    Finding,
    bootstrap,
    decide_status,
    mde,
    mean_ci,
    paired_effect,
    permutation_test,
    shifted_percentile_ci,
    sign_flip_test,
    z_quantile,
)


def test_z_quantile_matches_known_values() -> None:
    for p, z in ((0.5, 0.0), (0.8, 0.8416212335729143), (0.975, 1.959963984540054), (0.001, -3.090232306167813),
                 (0.999999, 4.753424308822899)):
        assert z_quantile(p) == pytest.approx(z, abs=1e-9)
    with pytest.raises(ValueError):
        z_quantile(1.0)


def test_mde_formula() -> None:
    assert mde(0.1) == pytest.approx(0.1 * (1.959963984540054 + 0.8416212335729143), rel=1e-9)
    assert math.isnan(mde(float("nan")))


def test_bootstrap_ci_covers_true_mean_about_95_percent() -> None:
    # 400 synthetic experiments of n = 30 units with a known effect of 0.3 (sd 1): the 95 % interval must cover
    # 0.3 in about 95 % of them (percentile bootstrap is slightly liberal at n = 30: accept 0.91-0.98).
    rng = np.random.default_rng(1)
    hits = 0
    trials = 400
    for t in range(trials):
        x = rng.normal(0.3, 1.0, 30)
        r = mean_ci(x, seed=t, n_boot=1000)
        hits += r.low <= 0.3 <= r.high
    assert 0.91 <= hits / trials <= 0.98


def test_stratified_bootstrap_keeps_strata_sizes() -> None:
    x = np.r_[np.zeros(20), np.ones(5)]
    strata = ["a"] * 20 + ["b"] * 5
    # Resampling within strata keeps 5 ones per resample: the mean cannot move.
    r = bootstrap(lambda i: float(x[i].mean()), len(x), strata=strata, n_boot=200)
    assert r.low == pytest.approx(0.2) and r.high == pytest.approx(0.2)
    r2 = bootstrap(lambda i: float(x[i].mean()), len(x), n_boot=200)
    assert r2.high > 0.25


@pytest.mark.parametrize("n", [8, 40])  # exact enumeration and Monte Carlo
def test_sign_flip_p_values_are_uniform_under_the_null(n: int) -> None:
    rng = np.random.default_rng(2)
    ps = np.array([sign_flip_test(rng.normal(0, 1, n), seed=i, n_perm=2000) for i in range(400)])
    # Calibrated: P(p < a) ≈ a for a in {0.05, 0.2, 0.5} (binomial sd at 400 trials ≈ 0.011-0.025).
    for a in (0.05, 0.2, 0.5):
        assert abs(np.mean(ps < a) - a) < 3.5 * math.sqrt(a * (1 - a) / 400) + 0.01, (a, np.mean(ps < a))


def test_sign_flip_has_power_against_a_real_effect() -> None:
    rng = np.random.default_rng(3)
    ps = [sign_flip_test(rng.normal(0.8, 1, 30), seed=i, n_perm=2000) for i in range(100)]
    assert np.mean(np.array(ps) < 0.05) > 0.9  # power at d = 0.8, n = 30 is ≈ 0.97


def test_two_sample_permutation_calibrated_and_powerful() -> None:
    rng = np.random.default_rng(4)
    null = [permutation_test(rng.normal(0, 1, 15), rng.normal(0, 1, 15), seed=i, n_perm=1000) for i in range(200)]
    assert abs(np.mean(np.array(null) < 0.05) - 0.05) < 0.05
    alt = [permutation_test(rng.normal(1.2, 1, 15), rng.normal(0, 1, 15), seed=i, n_perm=1000) for i in range(50)]
    assert np.mean(np.array(alt) < 0.05) > 0.85


def test_mde_predicts_power() -> None:
    # An effect equal to the MDE is detected ~80 % of the time (by construction of the MDE).
    rng = np.random.default_rng(5)
    n, sd = 30, 1.0
    eff = mde(sd / math.sqrt(n))
    det = [sign_flip_test(rng.normal(eff, sd, n), seed=i, n_perm=1000) < 0.05 for i in range(300)]
    assert 0.7 <= np.mean(det) <= 0.9


def test_decide_status_rules() -> None:
    assert decide_status(0.5, 0.2, 0.8, 0.001) == "reproduced"
    assert decide_status(-0.5, -0.8, -0.2, 0.001) == "contradicted"
    assert decide_status(-0.5, -0.8, -0.2, 0.001, direction=-1) == "reproduced"
    assert decide_status(0.1, -0.1, 0.3, 0.3) == "not detected"
    assert decide_status(0.5, 0.2, 0.8, 0.2) == "not detected"  # CI excludes 0 but p against control does not
    assert decide_status(None, None, None, None) == "untestable"
    assert decide_status(float("nan"), None, None, None) == "untestable"


def test_finding_record_round_trips_through_json() -> None:
    pe = paired_effect(np.r_[np.full(10, 0.5), np.full(10, 0.7)])
    f = Finding.from_paired(pe, id="x", claim="c", paper="p", metric="m", unit="items", control="random",
                            section="s", paper_effect=1.7)
    assert f.status == "reproduced" and f.n == 20 and f.mde is not None and f.mde < 0.2
    d = json.loads(json.dumps(f.to_dict()))
    for key in ("effect", "ci_low", "ci_high", "p_value", "n", "mde", "control", "status", "unit"):
        assert key in d
    assert d["paper_detectable"] is True
    u = Finding.untestable("no vectors", id="y", claim="c", paper="p", metric="m", unit="items", control="-",
                           section="s")
    assert u.to_dict()["status"] == "untestable" and u.to_dict()["effect"] is None
    nan = Finding(id="z", claim="c", paper="p", metric="m", unit="u", control="-", section="s", effect=float("nan"))
    assert nan.to_dict()["effect"] is None  # NaN never reaches JSON


def test_shifted_interval_holds_a_resampling_biased_cosine() -> None:
    """The cosine between two noisy mean differences falls under resampling with replacement; the shifted
    interval keeps the replicates' spread and holds the point estimate (the plain one often does not)."""
    rng = np.random.default_rng(0)
    d, n = 64, 30
    u = rng.normal(size=d)
    a = rng.normal(size=(n, d)) + 0.6 * u
    b = rng.normal(size=(n, d)) + 0.6 * u

    def cos(x: np.ndarray, y: np.ndarray) -> float:
        mx, my = x.mean(0), y.mean(0)
        return float(mx @ my / np.linalg.norm(mx) / np.linalg.norm(my))

    point = cos(a, b)
    boot = np.array([cos(a[rng.integers(0, n, n)], b[rng.integers(0, n, n)]) for _ in range(400)])
    assert boot.mean() < point - 0.02  # the bias the helper corrects
    lo, hi, bias = shifted_percentile_ci(boot, point)
    assert lo <= point <= hi and bias == pytest.approx(boot.mean() - point)
    plain_lo, plain_hi = np.quantile(boot, [0.025, 0.975])
    assert hi - lo == pytest.approx(plain_hi - plain_lo)
    assert all(math.isnan(x) for x in shifted_percentile_ci(np.array([np.nan]), 0.3))
