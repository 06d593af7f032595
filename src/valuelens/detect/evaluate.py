"""Evaluate a saved detector on any labelled file in the task's format: official macro P/R/F1 with bootstrap
CIs, per-category P/R/F1 with bootstrap CIs, and (when the detector is calibrated) the expected calibration
error per category, raw and calibrated, plus a reliability diagram.

The files are the task's: ``arguments-<name>.tsv`` (``Argument ID``, ``Conclusion``, ``Stance``, ``Premise``)
and ``labels-<name>.tsv`` (``Argument ID`` + the 20 categories). That covers the validation split, the test
split once a user has its labels, and the task's extra test sets (Zhihu, Nahj al-Balagha, New York Times),
given either as a split name in a data folder (``--split test-nahjalbalagha``) or as two file paths.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..values import VALUEEVAL_CATEGORIES
from .data import ValueEvalSplit, read_arguments, read_labels
from .measure import apply_thresholds, bootstrap_scores, evaluate, tune_thresholds

__all__ = ["evaluate_detector", "load_labelled", "render_evaluation"]


def load_labelled(arguments: str | os.PathLike[str], labels: str | os.PathLike[str], name: str = "") -> ValueEvalSplit:
    """A labelled split from two files in the task's format (IDs must match row by row)."""
    args = read_arguments(arguments)
    _, y = read_labels(labels, VALUEEVAL_CATEGORIES, [a.id for a in args])
    return ValueEvalSplit(name=name or Path(arguments).stem.removeprefix("arguments-"), arguments=args, labels=y)


def evaluate_detector(det: Any, split: ValueEvalSplit, *, n_boot: int = 1000, seed: int = 0, bf16: bool = False,
                      reliability_png: str | os.PathLike[str] | None = None, progress: bool = False,
                      probs: np.ndarray | None = None) -> dict[str, Any]:
    """Score ``det`` (a loaded detector) on a labelled ``split``; see the module docstring for what is reported.

    Keys: ``saved`` (the detector's own thresholds: the honest score), ``ci`` (bootstrap CIs of ``saved``),
    ``crossfit`` and ``self_tuned`` (thresholds tuned on halves of / all of this split: noisy / optimistic),
    ``calibration`` (ECE per category) when the detector has a calibrator, ``inference_per_second``.
    """
    from .finetune import calibration_report, crossfit_scores

    if split.labels is None:
        raise DataError(f"split {split.name!r} has no labels; use `valuelens detect predict` for a run file")
    t0 = time.time()
    if probs is None:
        probs = det.predict_proba(split.texts(), bf16=bf16, progress=progress)
    infer_s = time.time() - t0
    saved = evaluate(split.labels, apply_thresholds(probs, det.thresholds))
    out: dict[str, Any] = {
        "split": split.name, "n": len(split), "saved": saved.as_dict(),
        "ci": bootstrap_scores(split.labels, apply_thresholds(probs, det.thresholds), n_boot=n_boot, seed=seed),
        "crossfit": crossfit_scores(probs, split.labels).as_dict(),
        "self_tuned": evaluate(split.labels, apply_thresholds(probs, tune_thresholds(probs, split.labels))).as_dict(),
        "inference_per_second": len(split) / max(infer_s, 1e-9),
    }
    cal = getattr(det, "calibrator", None)
    if cal is not None:
        out["calibration"] = calibration_report(probs, split.labels, cal)
        if reliability_png:
            from .calibration import reliability_diagram

            reliability_diagram(reliability_png, {"raw": (probs, split.labels),
                                                  f"{cal.method}": (cal.transform(probs), split.labels)},
                                title=f"reliability on {split.name} ({len(split)} arguments)")
            out["reliability_png"] = str(reliability_png)
    return out


def _f(v: float) -> str:
    return "  –  " if v != v else f"{v:.3f}"  # NaN: a category without positives


def render_evaluation(res: dict[str, Any]) -> str:
    """Plain-text table: macro scores with CIs, then one line per category (P, R, F1 [CI], support, ECE)."""
    s, ci = res["saved"], res["ci"]
    lvl = round(ci["level"] * 100)
    lines = [
        f"{res['split']} ({res['n']} arguments), saved thresholds: macro P {s['precision']:.4f} "
        f"[{ci['macro']['precision'][0]:.3f}, {ci['macro']['precision'][1]:.3f}]  "
        f"R {s['recall']:.4f} [{ci['macro']['recall'][0]:.3f}, {ci['macro']['recall'][1]:.3f}]  "
        f"F1 {s['f1']:.4f} [{ci['macro']['f1'][0]:.3f}, {ci['macro']['f1'][1]:.3f}]  ({lvl} % bootstrap CIs, "
        f"{ci['n_boot']} resamples)",
        f"crossfit thresholds F1 {res['crossfit']['f1']:.4f}; tuned on {res['split']} itself (optimistic) F1 "
        f"{res['self_tuned']['f1']:.4f}; {res['inference_per_second']:.1f} arguments/s",
    ]
    cal = res.get("calibration")
    head = f"  {'category':28s}  P      R      F1     {lvl}% CI of F1      n"
    if cal:
        head += f"    ECE raw  ECE {cal['method']}"
        lines.append(f"expected calibration error, mean over categories: raw {cal['ece_raw_mean']:.4f} → "
                     f"{cal['method']} {cal['ece_mean']:.4f}")
    lines.append(head)
    for c, d in s["per_category"].items():
        lo, hi = ci["per_category"][c]["f1"]
        row = (f"  {c:28s}  {_f(d['precision'])}  {_f(d['recall'])}  {_f(d['f1'])}  [{_f(lo)}, {_f(hi)}]  "
               f"{d['support']:5d}")
        if cal:
            row += f"    {cal['ece_raw'][c]:.4f}   {cal['ece'][c]:.4f}"
        lines.append(row)
    return "\n".join(lines)
