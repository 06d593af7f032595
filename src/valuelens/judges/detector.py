"""The detector judge: a trained value detector (``valuelens detect train``) labels texts for Schwartz values.

Labels: the detector has a tuned threshold per ValueEval category. A Schwartz value is expressed when any of
its categories passes its own threshold, i.e. when ``margin = max_c (p_c − t_c) ≥ 0``.

Scores: a detector trained with calibration (``calibration.json``, fitted on the held-out training
conclusions, see :mod:`valuelens.detect.calibration`) gives calibrated per-category probabilities; a value's
score is the largest calibrated probability among its categories — the probability that its most likely
category is present, a lower bound on the value being present. Older detectors without a calibrator keep
the threshold-anchored score: ``p_c* / (2 t_c*)`` below the threshold and ``0.5 + (p_c* − t_c*) / (2 (1 − t_c*))``
above it, for the category c* with the largest margin (0.5 = the decision boundary).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ModelError
from ..values import VALUE_NAMES, SchwartzValue, valueeval_to_schwartz_matrix
from .base import Judge, JudgeResult, register_judge

__all__ = ["DetectorJudge", "calibrated_value_scores", "probability_value_scores"]


def calibrated_value_scores(probs: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Category probabilities ``[N, 20]`` → (calibrated value scores ``[N, 10]``, expressed ``[N, 10]``)."""
    probs = np.asarray(probs, dtype=np.float64)
    t = np.clip(np.asarray(thresholds, dtype=np.float64), 1e-6, 1 - 1e-6)[None, :]
    cal = np.where(probs < t, probs / (2 * t), 0.5 + (probs - t) / (2 * (1 - t)))  # [N, 20], 0.5 at threshold
    m = valueeval_to_schwartz_matrix().astype(bool)
    score = np.stack([cal[:, m[:, v]].max(1) for v in range(m.shape[1])], axis=1)
    return score, score >= 0.5


def probability_value_scores(cal_probs: np.ndarray) -> np.ndarray:
    """Calibrated category probabilities ``[N, 20]`` → value scores ``[N, 10]`` (max over the value's categories)."""
    m = valueeval_to_schwartz_matrix().astype(bool)
    cal_probs = np.asarray(cal_probs, dtype=np.float64)
    return np.stack([cal_probs[:, m[:, v]].max(1) for v in range(m.shape[1])], axis=1)


def _default_folder(root: Path) -> Path:
    """The pipeline's default detector (:func:`valuelens.detect.presets.default_detector_dir`)."""
    from ..detect.presets import default_detector_dir

    return default_detector_dir()


@register_judge("detector")
class DetectorJudge(Judge):
    """Judge backed by a trained :class:`~valuelens.detect.finetune.ValueDetector` folder.

    ``model``: detector folder (default ``$VALUELENS_DETECTOR``, else the ``pipeline`` preset's cached detector
    ``~/.cache/valuelens/detectors/minilm-pipeline-v1`` when trained, else ``…/minilm-v1``).
    ``use_context``: prepend the user query (``contexts``) to the response, as "conclusion / premise".
    """

    name = "detector"

    def __init__(self, model: str | os.PathLike[str] | None = None, *, batch_size: int = 64, bf16: bool = False,
                 use_context: bool = False) -> None:
        from ..detect.encoders import cache_dir
        from ..detect.finetune import load_detector

        path = Path(model or os.environ.get("VALUELENS_DETECTOR") or _default_folder(cache_dir() / "detectors"))
        if not (path / "detector.json").exists():
            raise ModelError(f"{path}: no trained detector there; train one with `valuelens detect train --out DIR` "
                             f"and pass DIR/model")
        self.path = path.expanduser()
        self.detector = load_detector(self.path)
        self.batch_size = batch_size
        self.bf16 = bf16
        self.use_context = use_context
        self._hash: str | None = None

    def judge_batch(self, texts: Sequence[str], values: Sequence[SchwartzValue],
                    contexts: Sequence[str] | None = None) -> JudgeResult:
        inputs = list(texts)
        if self.use_context and contexts is not None:
            inputs = [f"{c} / {t}" for c, t in zip(contexts, texts, strict=True)]
        probs = (self.detector.predict_proba(inputs, batch_size=self.batch_size, bf16=self.bf16)
                 if inputs else np.zeros((0, len(self.detector.categories))))
        score, expressed = calibrated_value_scores(probs, self.detector.thresholds)
        cal = getattr(self.detector, "calibrator", None)
        cal_probs = cal.transform(probs) if cal is not None and len(probs) else None
        if cal_probs is not None:
            score = probability_value_scores(cal_probs)
        cols = [VALUE_NAMES.index(v.name) for v in values]
        raw = [{"categories": dict(zip(self.detector.categories, map(float, p), strict=True))} for p in probs]
        if cal_probs is not None:
            for r, cp in zip(raw, cal_probs, strict=True):
                r["calibrated"] = dict(zip(self.detector.categories, map(float, cp), strict=True))
        return JudgeResult(values=list(values), labels=expressed[:, cols].astype(bool), scores=score[:, cols],
                           valid=np.ones((len(inputs), len(cols)), dtype=bool), raw=raw)

    def describe(self) -> dict[str, Any]:
        from ..detect.finetune import detector_hash

        if self._hash is None:
            self._hash = detector_hash(self.path)  # hashing the weights takes ~0.1-1 s: do it once
        return {"name": self.name, "model": str(self.path), "sha256": self._hash,
                "encoder": self.detector.encoder_name,
                "thresholds": dict(zip(self.detector.categories, map(float, self.detector.thresholds), strict=True)),
                "calibration": (f"{self.detector.calibrator.method} on held-out training arguments; value score = "
                                "max calibrated category probability; labels = tuned thresholds"
                                if getattr(self.detector, "calibrator", None) is not None else
                                "piecewise-linear, 0.5 = per-category tuned threshold; value = max over categories")}
