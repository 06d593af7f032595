"""The official measure (macro P and R over categories with a positive, F1 = their harmonic mean)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from valuelens.detect.finetune import crossfit_scores
from valuelens.detect.measure import apply_thresholds, evaluate, tune_thresholds
from valuelens.errors import DataError

DATA = Path(__file__).resolve().parents[2].parent / "shared/data/valueeval23"


def test_toy_case_by_hand() -> None:
    # 4 examples, 3 categories; category 2 has no gold positive, so it is left out of the macro averages.
    gold = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    pred = np.array([[1, 1, 1], [0, 1, 0], [0, 0, 0], [1, 0, 0]])
    # cat 0: TP 1, FP 1, FN 1 → P 1/2, R 1/2 ; cat 1: TP 1, FP 1, FN 1 → P 1/2, R 1/2
    s = evaluate(gold, pred, ["a", "b", "c"])
    assert s.precision == pytest.approx(0.5) and s.recall == pytest.approx(0.5) and s.f1 == pytest.approx(0.5)
    assert np.isnan(s.per_category["c"]["f1"]) and s.per_category["a"]["support"] == 2


def test_f1_is_harmonic_mean_of_macros_not_mean_of_f1s() -> None:
    gold = np.array([[1, 1], [1, 0], [0, 1], [0, 0]])
    pred = np.array([[1, 1], [1, 1], [1, 1], [1, 1]])  # cat a: P 2/4 R 1 ; cat b: P 2/4 R 1
    pred[:, 1] = [1, 0, 0, 0]  # cat b: TP 1, FP 0, FN 1 → P 1, R 1/2
    s = evaluate(gold, pred, ["a", "b"])
    mp, mr = (0.5 + 1.0) / 2, (1.0 + 0.5) / 2
    assert s.precision == pytest.approx(mp) and s.recall == pytest.approx(mr)
    assert s.f1 == pytest.approx(2 * mp * mr / (mp + mr))
    mean_f1 = (2 * 0.5 * 1 / 1.5 + 2 * 1 * 0.5 / 1.5) / 2
    assert s.f1 != pytest.approx(mean_f1)


def test_nothing_predicted_scores_zero_precision() -> None:
    gold = np.array([[1, 0], [0, 1]])
    s = evaluate(gold, np.zeros_like(gold), ["a", "b"])
    assert s.precision == 0 and s.recall == 0 and s.f1 == 0


def test_all_ones_on_validation_equals_hand_computation() -> None:
    lines = (DATA / "labels-validation.tsv").read_text().splitlines()
    rows = [[int(v) for v in line.split("\t")[1:]] for line in lines[1:]]
    n = len(rows)
    pos = [sum(r[j] for r in rows) for j in range(20)]
    present = [p for p in pos if p > 0]
    by_hand_p = sum(p / n for p in present) / len(present)  # all-ones: precision = base rate, recall = 1
    by_hand_f1 = 2 * by_hand_p * 1.0 / (by_hand_p + 1.0)
    gold = np.array(rows)
    s = evaluate(gold, np.ones_like(gold))
    assert s.recall == 1.0
    assert s.precision == pytest.approx(by_hand_p, abs=1e-12) and s.f1 == pytest.approx(by_hand_f1, abs=1e-12)
    assert s.f1 == pytest.approx(0.2872, abs=1e-4)  # the number reported in docs/detector.md


def test_shape_and_value_errors() -> None:
    with pytest.raises(DataError, match="same"):
        evaluate(np.zeros((2, 20)), np.zeros((3, 20)))
    with pytest.raises(DataError, match="0/1"):
        evaluate(np.zeros((2, 20)), np.full((2, 20), 2))


def test_thresholds_recover_a_separable_cut() -> None:
    rng = np.random.default_rng(0)
    gold = (rng.random((400, 3)) < 0.3).astype(int)
    cuts = np.array([0.2, 0.5, 0.8])
    # Positives sit just above their category's cut, negatives below: the best threshold is the cut.
    probs = np.where(gold == 1, cuts + 0.05 * rng.random((400, 3)), cuts - 0.1 - 0.05 * rng.random((400, 3)))
    th = tune_thresholds(probs, gold)
    assert evaluate(gold, apply_thresholds(probs, th)).f1 == pytest.approx(1.0)
    assert np.all(th <= cuts + 1e-9) and np.all(th >= cuts - 0.1 - 1e-9)


def test_macro_objective_never_does_worse_than_per_category_on_its_own_data() -> None:
    rng = np.random.default_rng(3)
    gold = (rng.random((300, 6)) < [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]).astype(int)
    probs = np.clip(0.25 * gold + 0.8 * rng.random((300, 6)), 0, 1)
    cat = tune_thresholds(probs, gold, objective="category")
    f_cat = evaluate(gold, apply_thresholds(probs, cat)).f1
    for sweeps in (1, 3):
        mac = tune_thresholds(probs, gold, objective="macro", sweeps=sweeps)
        f_mac = evaluate(gold, apply_thresholds(probs, mac)).f1
        assert f_mac >= f_cat - 1e-12
    assert f_mac > f_cat  # coordinate ascent on the official measure finds a better point here
    # No coordinate move of the 3-pass solution improves the official measure (a local optimum on the grid).
    grid = np.round(np.arange(0.02, 0.96, 0.01), 2)
    for j in range(6):
        for t in grid[::7]:
            th = mac.copy()
            th[j] = t
            assert evaluate(gold, apply_thresholds(probs, th)).f1 <= f_mac + 1e-9
    with pytest.raises(DataError, match="objective"):
        tune_thresholds(probs, gold, objective="vibes")


def test_threshold_for_category_without_positives_is_half() -> None:
    gold = np.zeros((10, 2), dtype=int)
    gold[:3, 0] = 1
    th = tune_thresholds(np.random.default_rng(1).random((10, 2)), gold)
    assert th[1] == 0.5


def test_crossfit_is_between_chance_and_self_tuned() -> None:
    rng = np.random.default_rng(0)
    gold = (rng.random((600, 20)) < 0.2).astype(int)
    probs = np.clip(0.35 * gold + rng.random((600, 20)) * 0.7, 0, 1)
    self_tuned = evaluate(gold, apply_thresholds(probs, tune_thresholds(probs, gold))).f1
    cross = crossfit_scores(probs, gold).f1
    allones = evaluate(gold, np.ones_like(gold)).f1
    assert allones < cross <= self_tuned + 1e-9
