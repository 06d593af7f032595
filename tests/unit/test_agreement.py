"""Cohen's kappa and percent agreement, hand-checked; invalid cells; agreement with detector labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from valuelens.errors import ConfigError
from valuelens.judges.agreement import (
    agreement,
    agreement_with_labels,
    cohen_kappa,
    labels_to_result,
    percent_agreement,
)
from valuelens.judges.base import JudgeResult
from valuelens.values import VALUEEVAL_CATEGORIES, resolve_values


def table(yy: int, yn: int, ny: int, nn: int) -> tuple[np.ndarray, np.ndarray]:
    """Two raters' labels from a 2x2 table (rater A rows, rater B columns)."""
    a = np.array([1] * yy + [1] * yn + [0] * ny + [0] * nn)
    b = np.array([1] * yy + [0] * yn + [1] * ny + [0] * nn)
    return a, b


def test_textbook_kappa() -> None:
    # Wikipedia "Cohen's kappa", first worked example: 50 proposals, 20 yes/yes, 5 yes/no, 10 no/yes, 15 no/no.
    # p_o = 35/50 = 0.7; p_yes = 0.5 * 0.6 = 0.3, p_no = 0.5 * 0.4 = 0.2; p_e = 0.5; kappa = 0.2 / 0.5 = 0.4.
    a, b = table(20, 5, 10, 15)
    assert percent_agreement(a, b) == pytest.approx(0.7)
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_second_textbook_kappa() -> None:
    # Wikipedia's second example: 45/15/25/15 → p_o = 0.60, p_e = 0.6*0.7 + 0.4*0.3 = 0.54, kappa = 0.1304.
    a, b = table(45, 15, 25, 15)
    assert cohen_kappa(a, b) == pytest.approx(0.06 / 0.46)
    assert cohen_kappa(a, b) == pytest.approx(0.1304, abs=1e-4)


def test_kappa_edge_cases() -> None:
    a = np.array([1, 0, 1, 0])
    assert cohen_kappa(a, a) == pytest.approx(1.0)
    assert cohen_kappa(a, 1 - a) == pytest.approx(-1.0)
    assert math.isnan(cohen_kappa([1, 1, 1], [1, 1, 1]))  # p_e = 1: undefined, not 1
    assert math.isnan(cohen_kappa([], []))
    assert cohen_kappa([0, 0, 0, 0], [0, 0, 0, 1]) == pytest.approx(0.0)  # p_e = 0.75 = p_o
    with pytest.raises(ConfigError):
        cohen_kappa([1, 0], [1])
    with pytest.raises(ConfigError):
        cohen_kappa([2, 0], [1, 0])


def _result(labels: list[list[int]], valid: list[list[int]] | None = None,
            values: str = "benevolence,power") -> JudgeResult:
    lab = np.array(labels, dtype=bool)
    val = np.ones_like(lab) if valid is None else np.array(valid, dtype=bool)
    return JudgeResult(values=resolve_values(values), labels=lab, scores=lab.astype(float), valid=val)


def test_per_value_pooled_and_invalid_cells() -> None:
    a = _result([[1, 0], [1, 1], [0, 0], [0, 1], [1, 0]], valid=[[1, 1], [1, 1], [1, 1], [1, 1], [0, 1]])
    b = _result([[1, 0], [0, 1], [0, 0], [0, 0], [1, 1]])
    rep = agreement(a, b)
    ben, pow_ = rep.per_value["Benevolence"], rep.per_value["Power"]
    # Benevolence: row 5 invalid in a → 4 cells: a=[1,1,0,0], b=[1,0,0,0]: p_o=.75, p_e=.5*.25+.5*.75=.5, κ=.5
    assert ben.n == 4 and ben.agreement == pytest.approx(0.75) and ben.kappa == pytest.approx(0.5)
    # Power: a=[0,1,0,1,0], b=[0,1,0,0,1]: p_o=.6, p_e=.4*.4+.6*.6=.52, κ=.08/.48
    assert pow_.n == 5 and pow_.kappa == pytest.approx(0.08 / 0.48)
    assert rep.n_invalid == 1
    # Pooled over 9 valid cells: a=[1,1,0,0,0,1,0,1,0], b=[1,0,0,0,0,1,0,0,1].
    pa, pb = 4 / 9, 3 / 9
    po = 6 / 9
    pe = pa * pb + (1 - pa) * (1 - pb)
    assert rep.pooled.n == 9 and rep.pooled.kappa == pytest.approx((po - pe) / (1 - pe))
    assert rep.mean_kappa == pytest.approx((0.5 + 0.08 / 0.48) / 2)
    md = rep.to_markdown()
    assert "| Benevolence | 4 |" in md and "pooled" in md
    assert rep.to_dict()["per_value"]["Power"]["n"] == 5


def test_values_are_matched_by_name_and_shapes_checked() -> None:
    a = _result([[1, 0], [0, 1]], values="benevolence,power")
    b = _result([[0, 1], [1, 0]], values="power,benevolence")  # same labels, columns swapped
    rep = agreement(a, b)
    assert rep.pooled.agreement == 1.0
    with pytest.raises(ConfigError):
        agreement(a, _result([[1, 0]]))
    with pytest.raises(ConfigError):
        agreement(a, _result([[1], [0]], values="hedonism"))


def test_agreement_with_valueeval_labels() -> None:
    cat = np.zeros((3, 20), dtype=int)
    cat[0, VALUEEVAL_CATEGORIES.index("Benevolence: caring")] = 1
    cat[1, VALUEEVAL_CATEGORIES.index("Face")] = 1  # Face → Power
    ref = labels_to_result(cat, ["benevolence", "power"])
    assert ref.labels.tolist() == [[True, False], [False, True], [False, False]]
    judge = _result([[1, 0], [0, 1], [0, 1]])
    rep = agreement_with_labels(judge, cat, name="gold")
    assert rep.names == ("judge", "gold")
    assert rep.per_value["Benevolence"].agreement == 1.0
    assert rep.per_value["Power"].agreement == pytest.approx(2 / 3)
    with pytest.raises(ConfigError):
        labels_to_result(np.zeros((2, 7)))
