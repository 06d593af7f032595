"""Predictions: official run files for argument TSVs, and category + Schwartz-value scores for free text.

Schwartz values from categories: a value is expressed when any of its ValueEval categories is (logical OR
through :func:`valuelens.values.valueeval_to_schwartz_matrix`), and its score is the maximum of its
categories' probabilities. Each category has its own tuned threshold, so we also report the calibrated
``margin = max over the value's categories of (probability - threshold)``; ``expressed = margin >= 0``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DataError
from ..runio import JsonlWriter, read_jsonl
from ..values import VALUE_NAMES, VALUEEVAL_CATEGORIES, valueeval_to_schwartz_matrix
from .data import Argument, read_arguments, write_labels_tsv
from .measure import apply_thresholds

if TYPE_CHECKING:
    from .finetune import EnsembleDetector, ValueDetector

__all__ = ["categories_to_values", "predict_jsonl", "read_run_file", "write_run_file"]


def categories_to_values(probs: np.ndarray, thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """From category probabilities ``[N, 20]`` to Schwartz values ``[N, 10]``.

    Returns ``(score, margin, expressed)``: score = max probability over the value's categories;
    margin = max over its categories of (probability − that category's threshold); expressed = margin ≥ 0
    (identical to OR-ing the thresholded category labels).
    """
    m = valueeval_to_schwartz_matrix().astype(bool)  # [20, 10]
    probs = np.asarray(probs, dtype=np.float64)
    margin_c = probs - np.asarray(thresholds, dtype=np.float64)[None, :]
    score = np.stack([probs[:, m[:, v]].max(1) for v in range(m.shape[1])], axis=1)
    margin = np.stack([margin_c[:, m[:, v]].max(1) for v in range(m.shape[1])], axis=1)
    return score, margin, margin >= 0


def write_run_file(det: ValueDetector | EnsembleDetector, arguments_tsv: str | os.PathLike[str], output: str | os.PathLike[str],
                   *, bf16: bool = False, batch_size: int = 64) -> int:
    """Official run file: ``Argument ID`` + the 20 category columns with 0/1, tab-separated."""
    args = read_arguments(arguments_tsv)
    labels = det.predict([a.text() for a in args], bf16=bf16, batch_size=batch_size, progress=True)
    write_labels_tsv(output, [a.id for a in args], labels)
    return len(args)


def read_run_file(path: str | os.PathLike[str]) -> tuple[list[str], np.ndarray]:
    """Read a run file back (strictly: same checks as a labels file)."""
    from .data import read_labels

    p = Path(path)
    ids = [line.split("\t", 1)[0] for line in p.read_text(encoding="utf-8").splitlines()[1:]]
    _, mat = read_labels(p, VALUEEVAL_CATEGORIES, ids)
    return ids, mat


def predict_jsonl(det: ValueDetector | EnsembleDetector, input_path: str | os.PathLike[str], output: str | os.PathLike[str], *,
                  text_field: str = "text", bf16: bool = False, batch_size: int = 64) -> int:
    """Score free text: each input line ``{"text": ...}`` (other fields are kept, ``id`` too) gets
    ``categories`` (score, label per category) and ``values`` (score, margin, expressed per Schwartz value).

    Resumable: records already in ``output`` (matched by position) are skipped.
    """
    rows = read_jsonl(input_path, allow_torn_tail=False)
    for i, r in enumerate(rows, start=1):
        if not isinstance(r.get(text_field), str):
            raise DataError(f"{input_path}:{i}: field {text_field!r} missing or not a string")
    done = len(read_jsonl(output)) if Path(output).exists() else 0
    todo = rows[done:]
    if not todo:
        return len(rows)
    texts = [Argument.from_text(r[text_field]).text() for r in todo]
    with JsonlWriter(output) as w:
        for s in range(0, len(texts), 256):
            chunk = texts[s:s + 256]
            probs = det.predict_proba(chunk, bf16=bf16, batch_size=batch_size)
            recs = score_records(probs, det.thresholds)
            w.write_many([{**todo[s + k], **rec} for k, rec in enumerate(recs)])
    return len(rows)


def score_records(probs: np.ndarray, thresholds: np.ndarray) -> list[dict[str, Any]]:
    """Per-text dicts with category and value scores (the JSONL output schema)."""
    labels = apply_thresholds(probs, thresholds)
    vscore, vmargin, vexp = categories_to_values(probs, thresholds)
    out = []
    for i in range(len(probs)):
        out.append({
            "categories": {c: {"score": round(float(probs[i, j]), 6), "label": int(labels[i, j])}
                           for j, c in enumerate(VALUEEVAL_CATEGORIES)},
            "values": {v: {"score": round(float(vscore[i, k]), 6), "margin": round(float(vmargin[i, k]), 6),
                           "expressed": bool(vexp[i, k])} for k, v in enumerate(VALUE_NAMES)},
        })
    return out
