"""The judge in its own domain: score any judge on labelled chat answers and on a run's prompted responses.

A judge trained on arguments (the detector) or built from word lists (the lexicon) has to be measured on the
kind of text it labels in the pipeline: chat answers. Two measurements:

* :func:`evaluate_judge` — on the shipped, hand-labelled chat answers (``data/chat_answers.jsonl``, 333 answers,
  labels written before any judge saw them; ``split="test"`` by default, ``"dev"`` is for tuning). Per value:
  precision, recall, F1, ROC AUC of the judge's score; ``in_domain_macro_f1`` = the mean of the per-value F1s and
  ``in_domain_official_f1`` = the harmonic mean of macro-P and macro-R (the ValueEval measure); ``in_domain_top1``
  = how often the judge's highest-scoring value is the answer's primary value (answers that have one).
* :func:`prompted_top1` — on a run folder of ``valuelens extract``: the weak label of a prompted response is the
  value its system prompt asked for; top-1 = how often the judge ranks that value first.

Chance levels sit beside every figure: ``chance_top1`` = 1 / (number of values ranked), ``majority_top1`` = the
share of the most frequent primary value (what always naming that value would score), ``chance_macro_f1`` = the
expected macro-F1 of a labeller that says "yes" to each value at the judge's own rate but without reading the
text (2pq/(p+q) per value, p the gold rate, q the judge's rate), ``all_ones_macro_f1`` = labelling everything.
``better_than_chance`` is True when the lower end of the top-1 bootstrap interval is above ``chance_top1``;
a finding that rests on the judge is untestable when it is False.

Ties. Many judges give equal scores (the lexicon scores 0 for most values of most texts; an LLM judge says yes
to several values). Top-1 counts a tie among k values that includes the label as 1/k — the expected accuracy
of breaking the tie at random — so a judge that scores everything equal sits exactly at chance, whatever the
value order. Cells an LLM judge left unparsable (``valid`` False) are left out of that value's counts, and a
NaN score never wins the argmax; ``coverage`` says what share of cells were usable.

Confidence intervals: percentile bootstrap over answers (``n_boot`` resamples, seeded), recomputing the whole
statistic on each resample.

:func:`tune_thresholds` picks, per value, the score threshold that maximises that value's F1 on the dev split,
and :class:`ThresholdedJudge` applies such thresholds to any judge, so its binary labels can be recalibrated
for chat text without retraining (``evaluate_judge(ThresholdedJudge(judge, th))`` scores the result on test).
:func:`calibrate_judge` does that and also replaces each value's score by its percentile among the dev answers'
scores, which makes scores comparable across values (what top-1 needs).

Command line (prints JSON; ``--out`` writes it atomically)::

    python -m valuelens.judges.indomain --judge lexicon --tune
    python -m valuelens.judges.indomain --judge detector --model DIR --run runs/default
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError
from ..values import VALUE_NAMES, SchwartzValue, get_value, resolve_values
from .base import Judge, JudgeResult

__all__ = ["CHAT_ANSWERS_FILE", "ChatAnswer", "ThresholdedJudge", "calibrate_judge", "evaluate_judge",
           "evaluate_result",
           "load_chat_answers", "prompted_top1", "tie_aware_top1", "tune_thresholds"]

CHAT_ANSWERS_FILE = "chat_answers.jsonl"
SPLITS = ("dev", "test")
STYLES = ("direct", "balanced", "story", "list", "hedge", "one-liner", "factual")
LENGTHS = ("short", "medium", "long")


@dataclass(frozen=True)
class ChatAnswer:
    """One labelled chat answer. ``values``: canonical names, primary first; empty when none is expressed."""

    id: str
    question: str
    answer: str
    values: tuple[str, ...]
    style: str
    length: str
    source: str
    split: str

    @property
    def primary(self) -> str | None:
        return self.values[0] if self.values else None


def _chat_answers_path() -> Path:
    from importlib import resources

    ref = resources.files("valuelens").joinpath("data").joinpath(CHAT_ANSWERS_FILE)
    if not ref.is_file():
        raise DataError(f"shipped data file {CHAT_ANSWERS_FILE!r} is missing from the valuelens package "
                        "(broken install?)")
    return Path(str(ref))


def load_chat_answers(split: str | None = None, path: str | Path | None = None) -> list[ChatAnswer]:
    """The labelled chat answers (shipped file, or ``path`` in the same format), optionally one split only.

    ``split``: ``"dev"``, ``"test"`` or ``None``/``"all"`` for both. Every record is checked; a bad one raises
    :class:`DataError` naming the file and line.
    """
    if split not in (None, "all", *SPLITS):
        raise ConfigError(f"unknown split {split!r}; choose dev, test or all")
    from ..runio import read_jsonl

    src = _chat_answers_path() if path is None else Path(path).expanduser()
    if not src.is_file():
        raise DataError(f"{src}: no such file")
    rows = read_jsonl(src, allow_torn_tail=False)
    out: list[ChatAnswer] = []
    seen: set[str] = set()
    for i, r in enumerate(rows, start=1):
        where = f"{src}, record {i}"
        missing = [k for k in ("id", "question", "answer", "values", "split") if k not in r]
        if missing:
            raise DataError(f"{where}: missing field(s) {', '.join(missing)}")
        if not isinstance(r["answer"], str) or not r["answer"].strip():
            raise DataError(f"{where}: empty answer")
        if not isinstance(r["values"], list):
            raise DataError(f"{where}: 'values' must be a list of value names")
        try:
            vals = tuple(get_value(v).name for v in r["values"])
        except ConfigError as exc:
            raise DataError(f"{where}: {exc}") from None
        if len(set(vals)) != len(vals):
            raise DataError(f"{where}: a value is listed twice")
        if r["split"] not in SPLITS:
            raise DataError(f"{where}: split must be dev or test, got {r['split']!r}")
        if r["id"] in seen:
            raise DataError(f"{where}: duplicate id {r['id']!r}")
        seen.add(r["id"])
        out.append(ChatAnswer(id=str(r["id"]), question=str(r["question"]), answer=r["answer"], values=vals,
                              style=str(r.get("style", "")), length=str(r.get("length", "")),
                              source=str(r.get("source", "")), split=r["split"]))
    if split in SPLITS:
        out = [a for a in out if a.split == split]
    if not out:
        raise DataError(f"{src}: no answers{'' if split in (None, 'all') else f' in split {split!r}'}")
    return out


# ----------------------------------------------------------------------------------------------------------------
# Metrics


def tie_aware_top1(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row, credit 1/k when the target column is among the k columns sharing the top score, else 0.

    ``scores [N, V]`` (NaN never wins; a row of NaNs has no top and scores 0); ``target [N]`` column indices.
    """
    s = np.where(np.isnan(scores), -np.inf, np.asarray(scores, dtype=np.float64))
    top = s.max(axis=1, keepdims=True)
    is_top = (s == top) & np.isfinite(top)
    k = is_top.sum(axis=1)
    hit = is_top[np.arange(len(target)), target]
    return np.where(hit & (k > 0), 1.0 / np.maximum(k, 1), 0.0)


def _auc(score: np.ndarray, gold: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties counted half); NaN without both classes."""
    pos, neg = score[gold], score[~gold]
    if not len(pos) or not len(neg):
        return math.nan
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    allv = np.concatenate([pos, neg])[order]
    ranks = np.empty(len(allv))
    # Average ranks over ties.
    _, first, counts = np.unique(allv, return_index=True, return_counts=True)
    for f, c in zip(first, counts, strict=True):
        ranks[f:f + c] = f + (c + 1) / 2
    r = np.empty_like(ranks)
    r[order] = ranks
    return float((r[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def _macro(tp: np.ndarray, pp: np.ndarray, gp: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                       np.ndarray, np.ndarray]:
    """Counts ``[..., V]`` → (per-value P, R, F1, mean F1, official F1) over values with a gold positive.

    Same definitions as :func:`valuelens.detect.measure.evaluate`: P = 0 when nothing is predicted.
    """
    prec = np.divide(tp, pp, out=np.zeros_like(tp), where=pp > 0)
    rec = np.divide(tp, gp, out=np.zeros_like(tp), where=gp > 0)
    f1 = np.divide(2 * prec * rec, prec + rec, out=np.zeros_like(tp), where=(prec + rec) > 0)
    has = gp > 0
    n_has = np.maximum(has.sum(-1), 1)
    mf = (f1 * has).sum(-1) / n_has
    mp, mr = (prec * has).sum(-1) / n_has, (rec * has).sum(-1) / n_has
    off = np.divide(2 * mp * mr, mp + mr, out=np.zeros_like(mp), where=(mp + mr) > 0)
    return prec, rec, f1, mf, off


def _ci(samples: np.ndarray, level: float) -> list[float]:
    ok = samples[np.isfinite(samples)]
    if len(ok) < 2:
        return [math.nan, math.nan]
    lo, hi = np.quantile(ok, [(1 - level) / 2, 1 - (1 - level) / 2])
    return [float(lo), float(hi)]


def _r(x: float, nd: int = 4) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(float(x), nd)


def evaluate_result(result: JudgeResult, gold: np.ndarray, primary: Sequence[str | None], *,
                    n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict[str, Any]:
    """Score a judge's result against gold labels ``[N, V]`` (bool, in ``result.values`` order).

    ``primary``: per text, the value the top-1 accuracy is checked against (None: left out of top-1).
    Returns the dict described in the module notes (without the ``judge``/``split`` keys).
    """
    names = [v.name for v in result.values]
    gold = np.asarray(gold, dtype=bool)
    n, k = gold.shape
    if result.labels.shape != (n, k):
        raise ConfigError(f"judge result is {result.labels.shape}, gold labels are {gold.shape}")
    if len(primary) != n:
        raise ConfigError(f"{len(primary)} primary labels for {n} texts")
    valid = result.valid.astype(bool)
    pred = result.labels.astype(bool) & valid
    g = gold & valid
    scores = np.where(valid, result.scores, np.nan)

    rng = np.random.default_rng(seed)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64) if n_boot > 0 else None

    # Binary labels: per-value counts, then macro figures; the bootstrap reweights answers.
    tp, pp, gp = (pred & g).sum(0).astype(float), pred.sum(0).astype(float), g.sum(0).astype(float)
    prec, rec, f1, mf, off = _macro(tp, pp, gp)
    nv = valid.sum(0).astype(float)
    p_rate = np.divide(gp, nv, out=np.zeros_like(gp), where=nv > 0)
    q_rate = np.divide(pp, nv, out=np.zeros_like(pp), where=nv > 0)
    has = gp > 0
    chance_f1 = np.divide(2 * p_rate * q_rate, p_rate + q_rate, out=np.zeros_like(p_rate),
                          where=(p_rate + q_rate) > 0)
    ones_f1 = 2 * p_rate / (1 + p_rate)
    per_value: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        per_value[name] = {"precision": _r(prec[j]) if has[j] else None, "recall": _r(rec[j]) if has[j] else None,
                           "f1": _r(f1[j]) if has[j] else None, "support": int(gp[j]),
                           "predicted": int(pp[j]), "yes_rate": _r(q_rate[j]), "gold_rate": _r(p_rate[j]),
                           "auc": _r(_auc(scores[valid[:, j], j], gold[valid[:, j], j])),
                           "n": int(nv[j])}
    aucs = [v["auc"] for v in per_value.values() if v["auc"] is not None]
    out: dict[str, Any] = {
        "n": n,
        "in_domain_macro_f1": _r(float(mf)),
        "in_domain_official_f1": _r(float(off)),
        "macro_precision": _r(float((prec * has).sum() / max(has.sum(), 1))),
        "macro_recall": _r(float((rec * has).sum() / max(has.sum(), 1))),
        "chance_macro_f1": _r(float(chance_f1[has].mean()) if has.any() else math.nan),
        "all_ones_macro_f1": _r(float(ones_f1[has].mean()) if has.any() else math.nan),
        "macro_auc": _r(float(np.mean(aucs)) if aucs else math.nan),
        "coverage": _r(float(valid.mean()) if valid.size else math.nan),
        "yes_rate": _r(float(pred.sum() / max(valid.sum(), 1))),
        "gold_rate": _r(float(g.sum() / max(valid.sum(), 1))),
        "per_value": per_value,
    }
    if w is not None:
        bt = w @ (pred & g).astype(float)
        bp = w @ pred.astype(float)
        bg = w @ g.astype(float)
        _, _, _, bmf, boff = _macro(bt, bp, bg)
        out["in_domain_macro_f1_ci"] = [_r(x) for x in _ci(bmf, level)]
        out["in_domain_official_f1_ci"] = [_r(x) for x in _ci(boff, level)]

    # Top-1 of the primary value, over the texts that have one.
    rows = np.array([i for i, p in enumerate(primary) if p is not None], dtype=np.int64)
    col = {nm: j for j, nm in enumerate(names)}
    unknown = sorted({p for p in primary if p is not None and p not in col})
    if unknown:
        raise ConfigError(f"primary value(s) {', '.join(unknown)} are not among the judged values")
    out.update(_top1_block(scores, rows, np.array([col[primary[i]] for i in rows], dtype=np.int64), names, w,
                           level, prefix="in_domain_top1"))
    return out


def _top1_block(scores: np.ndarray, rows: np.ndarray, target: np.ndarray, names: Sequence[str],
                w: np.ndarray | None, level: float, prefix: str) -> dict[str, Any]:
    """Top-1 accuracy (tie-aware) of ``target`` over ``rows`` of ``scores``, chance levels, CI, per value."""
    k = len(names)
    out: dict[str, Any] = {"n_top1": len(rows), "chance_top1": _r(1.0 / k),
                           "majority_top1": None, prefix: None, f"{prefix}_ci": [None, None],
                           "better_than_chance": None}
    if not len(rows):
        return out
    credit = tie_aware_top1(scores[rows], target)
    counts = np.bincount(target, minlength=k)
    out["majority_top1"] = _r(counts.max() / len(rows))
    out[prefix] = _r(float(credit.mean()))
    if w is not None:
        full = np.zeros(scores.shape[0])
        full[rows] = credit
        mask = np.zeros(scores.shape[0])
        mask[rows] = 1.0
        den = w @ mask
        b = np.divide(w @ full, den, out=np.full(len(den), np.nan), where=den > 0)
        ci = _ci(b, level)
        out[f"{prefix}_ci"] = [_r(x) for x in ci]
        out["better_than_chance"] = bool(not math.isnan(ci[0]) and ci[0] > 1.0 / k)
    # Which value the judge puts first, per labelled value: the diagonal is the per-value top-1.
    out[f"{prefix}_per_value"] = {names[j]: _r(float(credit[target == j].mean())) if (target == j).any() else None
                                  for j in range(k)}
    s = np.where(np.isnan(scores[rows]), -np.inf, scores[rows])
    top_share = (s == s.max(1, keepdims=True)) & np.isfinite(s)
    share = top_share / np.maximum(top_share.sum(1, keepdims=True), 1)
    out["top1_pick_rate"] = {names[j]: _r(float(share[:, j].mean())) for j in range(k)}
    return out


def _judge_texts(judge: Judge, texts: Sequence[str], values: Sequence[SchwartzValue],
                 contexts: Sequence[str] | None, batch: int) -> JudgeResult:
    """Judge in slices (bounded memory and LLM batch size), concatenated into one result."""
    parts = [judge.judge(list(texts[s:s + batch]), [v.name for v in values],
                         contexts=None if contexts is None else list(contexts[s:s + batch]))
             for s in range(0, len(texts), batch)]
    if not parts:
        raise DataError("no texts to judge")
    vals = parts[0].values
    return JudgeResult(values=vals, labels=np.concatenate([p.labels for p in parts]),
                       scores=np.concatenate([p.scores for p in parts]).astype(np.float64),
                       valid=np.concatenate([p.valid for p in parts]),
                       raw=[r for p in parts for r in p.raw])


def evaluate_judge(judge: Judge, split: str = "test", *, answers: Sequence[ChatAnswer] | None = None,
                   use_context: bool = False, n_boot: int = 2000, seed: int = 0, level: float = 0.95,
                   batch: int = 256) -> dict[str, Any]:
    """Measure ``judge`` on the labelled chat answers (see the module notes for every key).

    ``split``: ``"test"`` (default; the dev split is for tuning), ``"dev"`` or ``"all"``. ``answers``: your
    own labelled answers instead of the shipped ones. ``use_context``: pass each question as the judge's
    context. Keys include ``in_domain_macro_f1``, ``in_domain_top1``, ``chance_top1``, ``n`` and ``*_ci``.
    """
    items = list(answers) if answers is not None else load_chat_answers(split)
    if not items:
        raise DataError("no chat answers to evaluate on")
    values = resolve_values(None)
    res = _judge_texts(judge, [a.answer for a in items], values,
                       [a.question for a in items] if use_context else None, batch)
    gold = np.array([[v.name in a.values for v in res.values] for a in items], dtype=bool)
    out = {"judge": judge.describe(), "split": split if answers is None else "custom",
           "use_context": use_context, "n_boot": n_boot, "seed": seed}
    out.update(evaluate_result(res, gold, [a.primary for a in items], n_boot=n_boot, seed=seed, level=level))
    by_len = {}
    credit = None
    rows = [i for i, a in enumerate(items) if a.primary is not None]
    if rows:
        col = {v.name: j for j, v in enumerate(res.values)}
        scores = np.where(res.valid, res.scores, np.nan)
        credit = tie_aware_top1(scores[rows], np.array([col[items[i].primary] for i in rows]))  # type: ignore[index]
        for length in LENGTHS:
            sel = [c for i, c in zip(rows, credit, strict=True) if items[i].length == length]
            by_len[length] = {"n": len(sel), "top1": _r(float(np.mean(sel))) if sel else None}
    out["in_domain_top1_by_length"] = by_len
    return out


# ----------------------------------------------------------------------------------------------------------------
# Threshold recalibration


def _best_threshold(score: np.ndarray, gold: np.ndarray, default: float = 0.5) -> float:
    """The threshold on ``score`` maximising F1 of ``score >= t``; midpoints between observed scores.

    Among equally good thresholds the one closest to ``default`` wins (the judge's own boundary), so a value
    with no signal keeps it. Without a gold positive, ``default``.
    """
    ok = np.isfinite(score)
    s, g = score[ok], gold[ok]
    if not g.any() or not len(s):
        return default
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2, [u[-1] + 1e-6]])
    pred = s[:, None] >= cands[None, :]
    tp = (pred & g[:, None]).sum(0)
    f1 = 2 * tp / (pred.sum(0) + g.sum())
    best = np.flatnonzero(np.isclose(f1, f1.max()))
    return float(cands[best[np.argmin(np.abs(cands[best] - default))]])


def _dev_pass(judge: Judge, split: str, answers: Sequence[ChatAnswer] | None, use_context: bool, default: float,
              batch: int) -> tuple[dict[str, float], dict[str, list[float]]]:
    """One judging pass over ``split``: F1-optimal thresholds and the sorted finite scores, per value."""
    items = list(answers) if answers is not None else load_chat_answers(split)
    res = _judge_texts(judge, [a.answer for a in items], resolve_values(None),
                       [a.question for a in items] if use_context else None, batch)
    thresholds: dict[str, float] = {}
    reference: dict[str, list[float]] = {}
    for j, v in enumerate(res.values):
        gold = np.array([v.name in a.values for a in items], dtype=bool)
        sc = np.where(res.valid[:, j], res.scores[:, j], np.nan)
        thresholds[v.name] = round(_best_threshold(sc, gold, default), 6)
        reference[v.name] = [round(float(x), 6) for x in np.sort(sc[np.isfinite(sc)])]
    return thresholds, reference


def tune_thresholds(judge: Judge, split: str = "dev", *, answers: Sequence[ChatAnswer] | None = None,
                    use_context: bool = False, default: float = 0.5, batch: int = 256) -> dict[str, float]:
    """Per-value score thresholds that maximise each value's F1 on the chat answers of ``split`` (dev).

    Apply them with :class:`ThresholdedJudge`; score the result on the *test* split. A judge without scores
    (NaN) keeps ``default``.
    """
    return _dev_pass(judge, split, answers, use_context, default, batch)[0]


def calibrate_judge(judge: Judge, split: str = "dev", *, answers: Sequence[ChatAnswer] | None = None,
                    use_context: bool = False, default: float = 0.5, batch: int = 256) -> ThresholdedJudge:
    """``judge`` recalibrated for chat text on ``split`` (dev): tuned thresholds *and* percentile scores.

    Labels: value s is expressed when the base score ≥ the dev-tuned threshold (:func:`tune_thresholds`).
    Scores: the base score's percentile among the dev answers' scores for s, so that scores of different
    values become comparable — a judge whose raw scores are higher for one value on all chat text (the
    detector and Universalism) no longer names that value first for every answer. One judging pass.
    """
    th, ref = _dev_pass(judge, split, answers, use_context, default, batch)
    return ThresholdedJudge(judge, th, reference=ref)


def _percentile(ref: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Mid-rank percentile of each ``s`` within the sorted ``ref`` (0 below all, 1 above all, NaN stays NaN)."""
    lo = np.searchsorted(ref, s, side="left")
    hi = np.searchsorted(ref, s, side="right")
    return np.where(np.isnan(s), np.nan, (lo + hi) / (2.0 * len(ref)))


class ThresholdedJudge(Judge):
    """Any judge with its binary labels recalibrated: value s is expressed when its score ≥ ``thresholds[s]``.

    Scores: with ``reference`` (per value, the base judge's scores on reference texts — the dev answers, see
    :func:`calibrate_judge`), the percentile of the base score among them; without, a piecewise-linear map
    that puts the threshold at 0.5 (as the detector judge does for its own). Both keep each value's ranking.
    Values without a threshold keep the base judge's labels and scores. :meth:`to_dict` / :meth:`from_dict`
    store the calibration as plain JSON.
    """

    def __init__(self, base: Judge, thresholds: Mapping[str, float],
                 reference: Mapping[str, Sequence[float]] | None = None) -> None:
        self.base = base
        self.thresholds = {get_value(k).name: float(t) for k, t in thresholds.items()}
        self.reference = {get_value(k).name: np.sort(np.asarray(r, dtype=np.float64))
                          for k, r in (reference or {}).items() if len(r)}
        self.name = f"{getattr(base, 'name', 'judge')}+{'calibrated' if self.reference else 'thresholds'}"

    def judge_batch(self, texts: Sequence[str], values: Sequence[SchwartzValue],
                    contexts: Sequence[str] | None = None) -> JudgeResult:
        res = self.base.judge_batch(texts, values, contexts)
        labels, scores = res.labels.copy(), res.scores.astype(np.float64).copy()
        for j, v in enumerate(res.values):
            if v.name not in self.thresholds:
                continue
            t = self.thresholds[v.name]
            s = scores[:, j]
            lab = s >= t
            if v.name in self.reference:
                scores[:, j] = _percentile(self.reference[v.name], s)
            else:
                tc = min(max(t, 1e-6), 1 - 1e-6)
                sc = np.clip(s, 0.0, 1.0)  # scores outside [0, 1] (none of ours) are clipped first
                mapped = np.where(sc < tc, sc / (2 * tc), 0.5 + (sc - tc) / (2 * (1 - tc)))
                # A threshold outside (0, 1) would let the map disagree with the label at the edge: label wins.
                mapped = np.where(lab, np.maximum(mapped, 0.5), np.minimum(mapped, 0.5 - 1e-9))
                scores[:, j] = np.where(np.isnan(s), np.nan, mapped)
            labels[:, j] = np.where(np.isnan(s), labels[:, j], lab)
        return JudgeResult(values=res.values, labels=labels.astype(bool), scores=scores, valid=res.valid,
                           raw=res.raw)

    def to_dict(self) -> dict[str, Any]:
        return {"thresholds": dict(self.thresholds),
                "reference": {k: [float(x) for x in r] for k, r in self.reference.items()}}

    @classmethod
    def from_dict(cls, base: Judge, d: Mapping[str, Any]) -> ThresholdedJudge:
        if not isinstance(d, Mapping) or not isinstance(d.get("thresholds"), Mapping):
            raise DataError("a judge calibration needs a 'thresholds' object (value name → threshold)")
        try:
            return cls(base, d["thresholds"], d.get("reference") or None)
        except ConfigError as exc:
            raise DataError(f"judge calibration: {exc}") from None

    def describe(self) -> dict[str, Any]:
        import hashlib

        ref = json.dumps(self.to_dict()["reference"], sort_keys=True).encode()
        return {"name": self.name, "base": self.base.describe(), "thresholds": dict(self.thresholds),
                "scores": "dev percentile" if self.reference else "piecewise-linear, 0.5 = threshold",
                "reference_n": {k: len(r) for k, r in self.reference.items()},
                "reference_sha256": hashlib.sha256(ref).hexdigest() if self.reference else None}


# ----------------------------------------------------------------------------------------------------------------
# Prompted responses of a run


def _load_prompted(run: Path) -> list[dict[str, Any]]:
    from ..runio import read_jsonl

    files = sorted((run / "responses").glob("*.jsonl"))
    if not files:
        raise DataError(f"{run}: no responses/*.jsonl; run `valuelens extract --out {run}` first")
    by_id: dict[str, dict[str, Any]] = {}
    for f in files:
        for r in read_jsonl(f):
            by_id[r["id"]] = r
    rows = [r for r in by_id.values() if r.get("condition") == "prompted" and r.get("target_value")]
    if not rows:
        raise DataError(f"{run}: no prompted responses in responses/*.jsonl")
    return sorted(rows, key=lambda r: r["id"])


def prompted_top1(run_dir: str | Path, judge: Judge | None = None, *, n_boot: int = 2000, seed: int = 0,
                  level: float = 0.95, batch: int = 256) -> dict[str, Any]:
    """Top-1 of the prompted value on a run's prompted responses (weak label = the value the prompt asked for).

    ``judge=None`` reads the run's own judgments (``judgments.jsonl``); a judge re-labels the responses. Ranks
    the values the run judged (all 10 by default), so ``chance_top1`` = 1 / that number. Also reports
    ``prompted_label_gap``: the judge's "expresses s" rate on responses prompted for s minus its rate on
    responses prompted for other values, averaged over values (0 = the labels ignore the prompt).
    """
    run = Path(run_dir).expanduser()
    if not run.is_dir():
        raise DataError(f"{run}: no such run folder")
    every = _load_prompted(run)
    rows = [r for r in every if str(r.get("response", "")).strip()]
    n_empty = len(every) - len(rows)
    targets = sorted({get_value(r["target_value"]).name for r in rows}, key=VALUE_NAMES.index)
    if judge is None:
        from ..runio import read_jsonl

        jpath = run / "judgments.jsonl"
        judged = {r["id"]: r for r in read_jsonl(jpath)}
        if not judged:
            raise DataError(f"{run}: stage 'judge' has not run (no judgments.jsonl)")
        missing = [r["id"] for r in rows if r["id"] not in judged]
        if missing:
            raise DataError(f"{jpath}: {len(missing)} prompted responses have no judgment (first: {missing[0]})")
        names = [v for v in VALUE_NAMES if v in judged[rows[0]["id"]].get("scores", {})]
        if len(names) < 2:
            raise DataError(f"{jpath}: judgments cover {len(names)} value(s); top-1 needs at least two")
        vals = [get_value(v) for v in names]

        def cell(d: dict[str, Any] | None, v: str) -> float:
            x = (d or {}).get(v)
            return math.nan if x is None else float(x)

        scores = np.array([[cell(judged[r["id"]].get("scores"), v) for v in names] for r in rows])
        lab = np.array([[cell(judged[r["id"]].get("labels"), v) for v in names] for r in rows])
        valid = ~np.isnan(lab)
        res = JudgeResult(values=vals, labels=np.nan_to_num(lab) > 0.5, scores=scores, valid=valid)
        ident: dict[str, Any] = {"source": "judgments.jsonl"}
        jj = run / "judge.json"
        if jj.is_file():
            ident["judge"] = json.loads(jj.read_text(encoding="utf-8"))
    else:
        res = _judge_texts(judge, [r["response"] for r in rows], resolve_values(None),
                           [r.get("prompt", {}).get("user", "") for r in rows], batch)
        ident = {"source": "rejudged", "judge": judge.describe()}
    names = [v.name for v in res.values]
    col = {nm: j for j, nm in enumerate(names)}
    absent = [t for t in targets if t not in col]
    if absent:
        raise DataError(f"{run}: prompted value(s) {', '.join(absent)} were not judged")
    target = np.array([col[get_value(r["target_value"]).name] for r in rows], dtype=np.int64)
    scores = np.where(res.valid, res.scores, np.nan)
    rng = np.random.default_rng(seed)
    n = len(rows)
    w = rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot).astype(np.float64) if n_boot > 0 else None
    out: dict[str, Any] = {"run": str(run), **ident, "n": n, "n_empty": n_empty, "values_ranked": names}
    blk = _top1_block(scores, np.arange(n), target, names, w, level, prefix="prompted_top1")
    out.update(blk)
    # The label gap behind the "+0.016": P(label s | prompted s) − P(label s | prompted other).
    gaps: dict[str, float | None] = {}
    lab = res.labels.astype(bool)
    for t in targets:
        j = col[t]
        ok = res.valid[:, j].astype(bool)
        on, off = ok & (target == j), ok & (target != j)
        gaps[t] = _r(float(lab[on, j].mean() - lab[off, j].mean())) if on.any() and off.any() else None
    vals_gap = [g for g in gaps.values() if g is not None]
    out["prompted_label_gap"] = _r(float(np.mean(vals_gap))) if vals_gap else None
    out["prompted_label_gap_per_value"] = gaps
    counts = Counter(names[t] for t in target)
    out["n_per_value"] = {v: counts.get(v, 0) for v in names}
    return out


# ----------------------------------------------------------------------------------------------------------------
# Command line


def _make_judge(name: str, model: str | None) -> Judge:
    from .base import get_judge

    if name == "detector":
        return get_judge("detector", **({"model": model} if model else {}))
    if name == "llm":
        return get_judge("llm", **({"backend_spec": model} if model else {}))
    if model:
        raise ConfigError(f"--model does not apply to the {name} judge")
    return get_judge(name)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m valuelens.judges.indomain``: measure one judge, print JSON (see the module notes)."""
    from ..errors import ValuelensError
    from ..runio import atomic_write_json

    ap = argparse.ArgumentParser(prog="python -m valuelens.judges.indomain", description=__doc__.split("\n")[0])
    ap.add_argument("--judge", default="lexicon", help="lexicon, detector, llm (or any registered judge)")
    ap.add_argument("--model", help="detector folder, or the LLM judge's backend spec (local:smollm2, openai:URL#m)")
    ap.add_argument("--split", default="test", choices=["dev", "test", "all"])
    ap.add_argument("--tune", action="store_true",
                    help="also calibrate on dev (thresholds; percentile scores) and score that on test")
    ap.add_argument("--run", help="a run folder: also the prompted top-1 (its own judgments, and this judge's)")
    ap.add_argument("--context", action="store_true", help="give the judge each question as context")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="write the JSON here (atomically) as well")
    args = ap.parse_args(argv)
    try:
        judge = _make_judge(args.judge, args.model)
        report: dict[str, Any] = {"in_domain": evaluate_judge(judge, args.split, use_context=args.context,
                                                              n_boot=args.n_boot, seed=args.seed)}
        if args.tune:
            cal = calibrate_judge(judge, "dev", use_context=args.context)
            report["thresholds"] = cal.thresholds
            # Thresholds alone (scores mapped piecewise), then thresholds + dev-percentile scores.
            report["in_domain_tuned"] = evaluate_judge(ThresholdedJudge(judge, cal.thresholds), args.split,
                                                       use_context=args.context, n_boot=args.n_boot,
                                                       seed=args.seed)
            report["in_domain_calibrated"] = evaluate_judge(cal, args.split, use_context=args.context,
                                                            n_boot=args.n_boot, seed=args.seed)
        if args.run:
            if (Path(args.run).expanduser() / "judgments.jsonl").is_file():  # the run's own judge, if it ran
                report["prompted_run_judge"] = prompted_top1(args.run, n_boot=args.n_boot, seed=args.seed)
            report["prompted"] = prompted_top1(args.run, judge, n_boot=args.n_boot, seed=args.seed)
            if args.tune:
                report["prompted_calibrated"] = prompted_top1(args.run, cal, n_boot=args.n_boot, seed=args.seed)
    except ValuelensError as exc:
        print(f"valuelens: {exc}", file=sys.stderr)
        return 2
    text = json.dumps(report, indent=2, ensure_ascii=False)
    print(text)
    if args.out:
        atomic_write_json(args.out, report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
