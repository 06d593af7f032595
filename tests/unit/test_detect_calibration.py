"""Calibration (Platt, temperature, isotonic), expected calibration error, reliability diagrams, bootstrap CIs
of the official measure — numbers checked against cases whose answer is known (no model needed)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from valuelens.detect.calibration import Calibrator, expected_calibration_error, reliability_diagram
from valuelens.detect.measure import bootstrap_scores, evaluate
from valuelens.errors import ConfigError


def _miscalibrated(n: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Raw probabilities sigmoid(z) whose true probabilities are sigmoid(2z - 1): over-cautious and shifted."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 1.5, size=(n, 3))
    y = (rng.random((n, 3)) < 1 / (1 + np.exp(-(2 * z - 1)))).astype(np.int64)
    return 1 / (1 + np.exp(-z)), y


def test_ece_of_a_known_case() -> None:
    probs = np.full((10, 2), 0.8)
    gold = np.zeros((10, 2), dtype=np.int64)
    gold[:5, 0] = 1  # column 0: positive rate 0.5 at confidence 0.8 → ECE 0.3; column 1: rate 0 → 0.8
    np.testing.assert_allclose(expected_calibration_error(probs, gold), [0.3, 0.8])
    perfect = np.array([[0.0], [1.0]])
    assert expected_calibration_error(perfect, np.array([[0], [1]]))[0] == 0.0


def test_platt_recovers_the_true_map_and_lowers_ece() -> None:
    probs, gold = _miscalibrated()
    cal = Calibrator.fit(probs, gold, "platt")
    for prm in cal.params:
        assert prm["a"] == pytest.approx(2.0, abs=0.25) and prm["b"] == pytest.approx(-1.0, abs=0.2)
    test_p, test_y = _miscalibrated(seed=1)  # fresh data: calibration generalises
    raw, after = expected_calibration_error(test_p, test_y), expected_calibration_error(cal.transform(test_p), test_y)
    assert (after < raw / 2).all(), (raw, after)
    # Monotone: each category's ranking of the texts is unchanged.
    for j in range(3):
        assert (np.argsort(test_p[:, j], kind="stable") == np.argsort(cal.transform(test_p)[:, j], kind="stable")).all()


@pytest.mark.parametrize("method", ["temperature", "isotonic"])
def test_other_methods_lower_ece(method: str) -> None:
    probs, gold = _miscalibrated()
    cal = Calibrator.fit(probs, gold, method)
    test_p, test_y = _miscalibrated(seed=1)
    out = cal.transform(test_p)
    assert (np.diff(out[np.argsort(test_p[:, 0]), 0]) >= -1e-12).all()  # non-decreasing
    assert expected_calibration_error(out, test_y).mean() < expected_calibration_error(test_p, test_y).mean()
    if method == "temperature":
        assert all(prm["b"] == 0.0 for prm in cal.params)


def test_category_without_positives_is_left_alone_and_round_trip(tmp_path: Path) -> None:
    probs, gold = _miscalibrated(400)
    gold[:, 1] = 0
    for method in ("platt", "isotonic", "none"):
        cal = Calibrator.fit(probs, gold, method, ["a", "b", "c"])
        np.testing.assert_allclose(cal.transform(probs)[:, 1], probs[:, 1], atol=1e-9)
        cal.save(tmp_path)
        back = Calibrator.load(tmp_path)
        assert back is not None and back.method == method and back.categories == ["a", "b", "c"]
        np.testing.assert_array_equal(back.transform(probs), cal.transform(probs))
    assert Calibrator.load(tmp_path / "nowhere") is None
    with pytest.raises(ConfigError, match="unknown calibration"):
        Calibrator.fit(probs, gold, "beta")


def test_reliability_diagram_is_a_png(tmp_path: Path) -> None:
    probs, gold = _miscalibrated(500)
    cal = Calibrator.fit(probs, gold)
    path = reliability_diagram(tmp_path / "r.png", {"raw": (probs, gold), "platt": (cal.transform(probs), gold)})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_bootstrap_cis_cover_the_estimate_and_shrink_with_data() -> None:
    rng = np.random.default_rng(0)

    def case(n: int) -> tuple[np.ndarray, np.ndarray]:
        gold = (rng.random((n, 20)) < 0.2).astype(np.int64)
        flip = rng.random((n, 20)) < 0.15
        return gold, np.where(flip, 1 - gold, gold)

    g, p = case(300)
    point = evaluate(g, p)
    ci = bootstrap_scores(g, p, n_boot=400, seed=0)
    for k in ("precision", "recall", "f1"):
        lo, hi = ci["macro"][k]
        assert lo < getattr(point, k) < hi
    for c, d in point.per_category.items():
        lo, hi = ci["per_category"][c]["f1"]
        assert lo <= d["f1"] <= hi
    g2, p2 = case(3000)
    ci2 = bootstrap_scores(g2, p2, n_boot=400, seed=0)
    w1 = ci["macro"]["f1"][1] - ci["macro"]["f1"][0]
    w2 = ci2["macro"]["f1"][1] - ci2["macro"]["f1"][0]
    assert w2 < w1 / 2  # ~1/sqrt(10) of the width with 10x the data
    # A perfect predictor has a degenerate interval at 1; a category never positive has no interval.
    g[:, 3] = 0
    perfect = bootstrap_scores(g, g.copy(), n_boot=50)
    assert perfect["macro"]["f1"] == [1.0, 1.0]
    assert all(np.isnan(perfect["per_category"][list(point.per_category)[3]]["f1"]))
    # Same seed, same intervals (compared as JSON: NaN != NaN).
    a, b = (json.dumps(bootstrap_scores(g, p, n_boot=100, seed=3)) for _ in range(2))
    assert a == b
