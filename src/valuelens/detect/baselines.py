"""Baselines: all-ones (the official lower bound) and TF-IDF + logistic regression with tuned thresholds."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..runio import atomic_write_bytes
from ..values import VALUEEVAL_CATEGORIES
from .data import Argument
from .measure import apply_thresholds, tune_thresholds

__all__ = ["AllOnes", "TfidfLogReg"]


class AllOnes:
    """Predict every category for every argument (official baseline: recall 1, precision = base rate)."""

    name = "all-ones"

    def fit(self, arguments: list[Argument], labels: np.ndarray) -> AllOnes:
        return self

    def predict_proba(self, arguments: list[Argument]) -> np.ndarray:
        return np.ones((len(arguments), len(VALUEEVAL_CATEGORIES)), dtype=np.float32)

    def predict(self, arguments: list[Argument]) -> np.ndarray:
        return np.ones((len(arguments), len(VALUEEVAL_CATEGORIES)), dtype=np.int64)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass
class TfidfLogReg:
    """Word 1–2-gram TF-IDF + one balanced logistic regression per category + per-category thresholds.

    Thresholds are tuned on out-of-fold predictions over the training data (5 folds grouped by conclusion), so no evaluation
    data is touched.
    """

    c: float = 1.0
    max_features: int = 50000
    seed: int = 0
    thresholds: np.ndarray = field(default_factory=lambda: np.full(len(VALUEEVAL_CATEGORIES), 0.5))
    name: str = "tfidf-logreg"

    def _pipeline(self) -> Any:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier
        from sklearn.pipeline import make_pipeline

        return make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=self.max_features, sublinear_tf=True),
            OneVsRestClassifier(LogisticRegression(C=self.c, class_weight="balanced", max_iter=2000)),
        )

    def fit(self, arguments: list[Argument], labels: np.ndarray) -> TfidfLogReg:
        from sklearn.model_selection import GroupKFold

        texts = np.array([a.text() for a in arguments], dtype=object)
        y = np.asarray(labels)
        oof = np.zeros(y.shape, dtype=np.float64)
        # Folds by conclusion (like the official splits): otherwise near-duplicate arguments on the same
        # conclusion leak across folds, out-of-fold scores look too confident and thresholds come out too high.
        groups = [a.conclusion for a in arguments]
        for tr, te in GroupKFold(5).split(texts, groups=groups):
            oof[te] = self._pipeline().fit(texts[tr], y[tr]).predict_proba(texts[te])
        self.thresholds = tune_thresholds(oof, y)
        self.model_ = self._pipeline().fit(texts, y)
        return self

    def predict_proba(self, arguments: list[Argument]) -> np.ndarray:
        return np.asarray(self.model_.predict_proba([a.text() for a in arguments]))

    def predict(self, arguments: list[Argument]) -> np.ndarray:
        return apply_thresholds(self.predict_proba(arguments), self.thresholds)

    def save(self, path: str | Path) -> None:
        atomic_write_bytes(path, pickle.dumps(self))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "C": self.c, "max_features": self.max_features,
                "thresholds": "5-fold (grouped by conclusion) out-of-fold on training"}
