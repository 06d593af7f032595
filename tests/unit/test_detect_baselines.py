"""Baselines: all-ones, and TF-IDF + logistic regression saved without pickle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from valuelens.detect.baselines import AllOnes, TfidfLogReg, TfidfModel
from valuelens.detect.data import load_split
from valuelens.detect.finetune import TfidfMember
from valuelens.errors import ModelError

DATA = Path(__file__).resolve().parents[2].parent / "shared/data/valueeval23"


@pytest.fixture(scope="module")
def fitted() -> tuple:
    train = load_split(DATA, "training").head(600)
    valid = load_split(DATA, "validation").head(80)
    return TfidfLogReg(max_features=3000).fit(train.arguments, train.labels), valid


def test_all_ones_predicts_everything() -> None:
    valid = load_split(DATA, "validation").head(5)
    assert AllOnes().predict(valid.arguments).sum() == 5 * 20


def test_pickle_free_model_predicts_exactly_like_scikit_learn(fitted: tuple, tmp_path: Path) -> None:
    model, valid = fitted
    texts = [a.text() for a in valid.arguments]
    ref = model.predict_proba(valid.arguments)
    ours = TfidfModel.from_pipeline(model.model_, model.thresholds)
    np.testing.assert_allclose(ours.predict_proba(texts), ref, rtol=0, atol=1e-12)
    folder = model.save(tmp_path / "tfidf")
    assert sorted(p.name for p in folder.iterdir()) == ["tfidf.json", "tfidf.safetensors"]
    back = TfidfModel.load(folder)
    np.testing.assert_allclose(back.predict_proba(texts), ref, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(back.thresholds, model.thresholds)
    # As an ensemble member, saved and reloaded.
    member = TfidfMember(model)
    member.save_pretrained(tmp_path / "member")
    np.testing.assert_allclose(TfidfMember.from_pretrained(tmp_path / "member").predict_proba(texts), ref, atol=1e-12)


def test_an_old_pickled_member_is_refused_with_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(b"not loaded")
    with pytest.raises(ModelError, match="pickles are no longer loaded"):
        TfidfModel.load(tmp_path)
