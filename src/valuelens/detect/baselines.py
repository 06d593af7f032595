"""Baselines: all-ones (the official lower bound) and TF-IDF + logistic regression with tuned thresholds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..runio import atomic_path, atomic_write_json
from ..values import VALUEEVAL_CATEGORIES
from .data import Argument
from .measure import apply_thresholds, tune_thresholds

__all__ = ["AllOnes", "TfidfLogReg", "TfidfModel"]


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

    def fit(self, arguments: list[Argument], labels: np.ndarray, *, tune: bool = True) -> TfidfLogReg:
        """Fit; ``tune=False`` skips the 5 out-of-fold fits that only serve this model's own thresholds (an
        ensemble member's thresholds are the ensemble's)."""
        from sklearn.model_selection import GroupKFold

        texts = np.array([a.text() for a in arguments], dtype=object)
        y = np.asarray(labels)
        if not tune:
            self.model_ = self._pipeline().fit(texts, y)
            return self
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

    def save(self, folder: str | Path) -> Path:
        """Write the fitted model without pickle (see :class:`TfidfModel`), thresholds included."""
        return TfidfModel.from_pipeline(self.model_, self.thresholds).save(folder)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "C": self.c, "max_features": self.max_features,
                "thresholds": "5-fold (grouped by conclusion) out-of-fold on training"}


class TfidfModel:
    """A fitted TF-IDF + one-vs-rest logistic regression, stored without pickle: ``tfidf.json`` (vectoriser
    settings and vocabulary) + ``tfidf.safetensors`` (idf, coefficients, intercepts, thresholds).

    Inference rebuilds scikit-learn's vectoriser from the vocabulary and idf and computes each category's
    probability as ``sigmoid(x·w + b)`` — what ``LogisticRegression.predict_proba`` returns (tested equal).
    """

    def __init__(self, settings: dict[str, Any], idf: np.ndarray, coef: np.ndarray, intercept: np.ndarray,
                 thresholds: np.ndarray | None = None) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.settings = settings
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = np.asarray(intercept, dtype=np.float64)
        self.thresholds = (np.full(len(self.intercept), 0.5) if thresholds is None
                           else np.asarray(thresholds, dtype=np.float64))
        self.vectorizer = TfidfVectorizer(
            vocabulary=settings["vocabulary"], ngram_range=tuple(settings["ngram_range"]),
            sublinear_tf=settings["sublinear_tf"], lowercase=settings["lowercase"],
            token_pattern=settings["token_pattern"], norm=settings["norm"], dtype=np.float64)
        self.vectorizer.idf_ = np.asarray(idf, dtype=np.float64)

    @classmethod
    def from_pipeline(cls, pipeline: Any, thresholds: np.ndarray | None = None) -> TfidfModel:
        vec, ovr = pipeline.steps[0][1], pipeline.steps[1][1]
        coefs, icpts = [], []
        n_feat = len(vec.vocabulary_)
        for est in ovr.estimators_:
            if hasattr(est, "coef_"):
                coefs.append(np.asarray(est.coef_[0], dtype=np.float64))
                icpts.append(float(est.intercept_[0]))
            else:  # a category without both classes in training: scikit-learn's constant predictor
                p = float(np.clip(np.ravel(est.y_)[0], 1e-6, 1 - 1e-6))
                coefs.append(np.zeros(n_feat))
                icpts.append(float(np.log(p / (1 - p))))
        settings = {"vocabulary": {k: int(v) for k, v in vec.vocabulary_.items()},
                    "ngram_range": list(vec.ngram_range), "sublinear_tf": bool(vec.sublinear_tf),
                    "lowercase": bool(vec.lowercase), "token_pattern": vec.token_pattern, "norm": vec.norm}
        return cls(settings, vec.idf_, np.stack(coefs), np.array(icpts), thresholds)

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        x = self.vectorizer.transform(list(texts))
        return 1.0 / (1.0 + np.exp(-(x @ self.coef.T + self.intercept)))

    def save(self, folder: str | Path) -> Path:
        from safetensors.numpy import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_json(folder / "tfidf.json", self.settings)
        with atomic_path(folder / "tfidf.safetensors") as tmp:
            save_file({"idf": self.vectorizer.idf_, "coef": self.coef, "intercept": self.intercept,
                       "thresholds": self.thresholds}, str(tmp))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> TfidfModel:
        from safetensors.numpy import load_file

        folder = Path(folder)
        if not (folder / "tfidf.json").exists():
            hint = (" (it holds a model.pkl from an older valuelens: pickles are no longer loaded; rebuild it)"
                    if (folder / "model.pkl").exists() else "")
            raise ModelError(f"{folder}: no tfidf.json{hint}")
        t = load_file(str(folder / "tfidf.safetensors"))
        return cls(json.loads((folder / "tfidf.json").read_text()), t["idf"], t["coef"], t["intercept"],
                   t.get("thresholds"))
