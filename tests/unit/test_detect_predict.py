"""Category → Schwartz-value aggregation, judge calibration, run-file round trip (no model needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from valuelens.detect.predict import categories_to_values, read_run_file, score_records, write_labels_tsv
from valuelens.errors import DataError
from valuelens.judges.detector import calibrated_value_scores
from valuelens.values import VALUE_NAMES, VALUEEVAL_CATEGORIES

CAT = {c: j for j, c in enumerate(VALUEEVAL_CATEGORIES)}
VAL = {v: k for k, v in enumerate(VALUE_NAMES)}


def _probs() -> tuple[np.ndarray, np.ndarray]:
    p = np.full((2, 20), 0.1)
    t = np.full(20, 0.3)
    p[0, CAT["Face"]] = 0.35  # above its threshold → Power expressed via Face
    p[0, CAT["Power: dominance"]] = 0.25
    p[1, CAT["Humility"]] = 0.9
    t[CAT["Humility"]] = 0.95  # high score but below its own threshold → Tradition not expressed
    return p, t


def test_values_are_or_of_categories_and_score_is_max() -> None:
    p, t = _probs()
    score, margin, expressed = categories_to_values(p, t)
    assert score.shape == (2, 10)
    assert expressed[0, VAL["Power"]] and score[0, VAL["Power"]] == pytest.approx(0.35)
    assert margin[0, VAL["Power"]] == pytest.approx(0.05)
    assert not expressed[1, VAL["Tradition"]] and score[1, VAL["Tradition"]] == pytest.approx(0.9)
    assert expressed.sum() == 1


def test_judge_calibration_puts_threshold_at_half() -> None:
    p, t = _probs()
    score, expressed = calibrated_value_scores(p, t)
    _, _, exp2 = categories_to_values(p, t)
    np.testing.assert_array_equal(expressed, exp2)
    assert ((score >= 0) & (score <= 1)).all()
    assert score[1, VAL["Tradition"]] < 0.5 < score[0, VAL["Power"]]
    exact = calibrated_value_scores(np.full((1, 20), 0.3), np.full(20, 0.3))[0]
    np.testing.assert_allclose(exact, 0.5)


def test_score_records_schema() -> None:
    p, t = _probs()
    rec = score_records(p, t)[0]
    assert set(rec["categories"]) == set(VALUEEVAL_CATEGORIES) and set(rec["values"]) == set(VALUE_NAMES)
    assert rec["categories"]["Face"] == {"score": 0.35, "label": 1}
    assert rec["values"]["Power"]["expressed"] is True


def test_run_file_round_trip_and_strictness(tmp_path: Path) -> None:
    labels = np.zeros((3, 20), dtype=int)
    labels[1, 4] = 1
    path = tmp_path / "run.tsv"
    write_labels_tsv(path, ["A1", "A2", "A3"], labels)
    text = path.read_text()
    assert text.splitlines()[0] == "\t".join(["Argument ID", *VALUEEVAL_CATEGORIES]) and text.endswith("\n")
    ids, back = read_run_file(path)
    assert ids == ["A1", "A2", "A3"]
    np.testing.assert_array_equal(back, labels)
    path.write_text(text.replace("A2\t0", "A2\tx", 1))
    with pytest.raises(DataError, match=r"run\.tsv:3: label"):
        read_run_file(path)
