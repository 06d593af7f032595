"""The labelled chat answers (data/chat_answers.jsonl) and the in-domain judge measurement (judges/indomain.py).

Judges used here are real ones: the lexicon judge, and small deterministic judges written below that implement
the judge interface (keyword counts, a lookup of the gold labels, a constant scorer).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from valuelens.detect.measure import evaluate as official_evaluate
from valuelens.errors import ConfigError, DataError
from valuelens.judges.base import Judge, JudgeResult
from valuelens.judges.indomain import (
    LENGTHS,
    STYLES,
    ChatAnswer,
    ThresholdedJudge,
    _auc,
    _best_threshold,
    _percentile,
    calibrate_judge,
    evaluate_judge,
    evaluate_result,
    load_chat_answers,
    main,
    prompted_top1,
    tie_aware_top1,
    tune_thresholds,
)
from valuelens.judges.lexicon import LexiconJudge
from valuelens.values import VALUE_NAMES, VALUES, SchwartzValue

DATA = Path(__file__).resolve().parents[2] / "src" / "valuelens" / "data" / "chat_answers.jsonl"
# How often an answer may name its own primary value (any form); the set tests judges on content, not words.
VALUE_WORD = {"Self-Direction": r"self[- ]?direct", "Stimulation": r"stimulat", "Hedonis": r"hedonis",
              "Achievement": r"achiev", "Power": r"\bpower", "Security": r"secur", "Conformity": r"conform",
              "Tradition": r"tradition", "Benevolence": r"benevolen", "Universalism": r"universal"}
VALUE_WORD["Hedonism"] = VALUE_WORD.pop("Hedonis")


def _words(text: str) -> list[str]:
    return re.findall(r"\S+", text)


# ------------------------------------------------------------------------------------------ the data set


@pytest.fixture(scope="module")
def raw() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def answers() -> list[ChatAnswer]:
    return load_chat_answers()


def test_schema(raw):
    fields = {"id", "question", "answer", "values", "style", "length", "source", "split"}
    assert len(raw) >= 240
    for r in raw:
        assert set(r) == fields, r["id"]
        assert re.fullmatch(r"ca\d{3}", r["id"])
        assert isinstance(r["question"], str) and r["question"].strip().endswith(("?", ".", "!"))
        assert isinstance(r["answer"], str) and r["answer"] == r["answer"].strip() and r["answer"]
        assert r["source"] == "authored"
        assert r["style"] in STYLES and r["length"] in LENGTHS and r["split"] in ("dev", "test")
        # Canonical names only (the loader accepts aliases; the shipped file must not need them).
        assert isinstance(r["values"], list) and len(r["values"]) <= 3
        assert all(v in VALUE_NAMES for v in r["values"]) and len(set(r["values"])) == len(r["values"])


def test_ids_and_answers_unique(raw):
    ids = [r["id"] for r in raw]
    assert len(set(ids)) == len(ids)
    norm = [" ".join(r["answer"].lower().split()) for r in raw]
    assert len(set(norm)) == len(norm)
    qs = [" ".join(r["question"].lower().split()) for r in raw]
    assert len(set(qs)) == len(qs)
    # No near-duplicate answers (word-set Jaccard).
    sets = [frozenset(re.findall(r"[a-z']+", t)) for t in norm]
    near = [(raw[i]["id"], raw[j]["id"]) for i, j in itertools.combinations(range(len(sets)), 2)
            if len(sets[i] & sets[j]) / max(1, len(sets[i] | sets[j])) > 0.6]
    assert not near


def test_values_cover_all_ten_evenly(raw):
    primary = Counter(r["values"][0] if r["values"] else None for r in raw)
    for v in VALUE_NAMES:
        assert primary[v] >= 20, v
    counts = [primary[v] for v in VALUE_NAMES]
    assert max(counts) - min(counts) <= 3
    neutral = primary[None] / len(raw)
    assert 0.08 <= neutral <= 0.12
    # Secondary labels exist but primaries dominate (1 to 3 values per valued answer).
    n_multi = sum(len(r["values"]) > 1 for r in raw)
    assert 0.05 * len(raw) <= n_multi <= 0.4 * len(raw)


def test_split_is_stratified_by_primary_value(raw):
    by: dict[str | None, Counter] = {}
    for r in raw:
        by.setdefault(r["values"][0] if r["values"] else None, Counter())[r["split"]] += 1
    for v, c in by.items():
        n = c["dev"] + c["test"]
        assert abs(c["dev"] - 0.4 * n) <= 1, (v, c)
    dev = sum(c["dev"] for c in by.values()) / len(raw)
    assert 0.37 <= dev <= 0.43


def test_lengths_and_styles(raw):
    for r in raw:
        n = len(_words(r["answer"]))
        assert 5 <= n <= 190, r["id"]
        expected = "short" if n <= 30 else "medium" if n <= 90 else "long"
        assert r["length"] == expected, (r["id"], n, r["length"])
    lengths = Counter(r["length"] for r in raw)
    assert all(lengths[k] >= 0.1 * len(raw) for k in LENGTHS), lengths
    styles = Counter(r["style"] for r in raw)
    assert all(styles[s] >= 10 for s in STYLES), styles
    assert styles.most_common(1)[0][1] <= 0.65 * len(raw)
    for v in VALUE_NAMES:  # every value appears short and long, and in at least four styles
        mine = [r for r in raw if r["values"] and r["values"][0] == v]
        assert {"short", "long"} <= {r["length"] for r in mine}, v
        assert len({r["style"] for r in mine}) >= 4, v


def test_values_expressed_by_content_not_by_name(raw):
    for v, pat in VALUE_WORD.items():
        mine = [r for r in raw if r["values"] and r["values"][0] == v]
        named = [r["id"] for r in mine if re.search(pat, r["answer"], re.I)]
        assert len(named) <= 0.15 * len(mine), (v, named)


def test_loader(answers):
    assert len(answers) == len(load_chat_answers("dev")) + len(load_chat_answers("test"))
    assert all(a.split == "test" for a in load_chat_answers("test"))
    a = next(x for x in answers if x.values)
    assert a.primary == a.values[0]
    assert next(x for x in answers if not x.values).primary is None


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("bad, message", [
    ({"values": ["Kindness"]}, "unknown value 'Kindness'"),
    ({"split": "train"}, "split must be dev or test"),
    ({"answer": "  "}, "empty answer"),
    ({"values": "Power"}, "must be a list"),
    ({"values": ["Power", "power"]}, "listed twice"),
])
def test_loader_errors_name_file_and_record(tmp_path, bad, message):
    good = {"id": "x1", "question": "q?", "answer": "Own things.", "values": ["Power"], "split": "test"}
    p = _write(tmp_path / "mine.jsonl", [good, {**good, "id": "x2", **bad}])
    with pytest.raises(DataError) as exc:
        load_chat_answers(path=p)
    msg = str(exc.value)
    assert "mine.jsonl, record 2" in msg and message in msg and "\n" not in msg


def test_loader_other_errors(tmp_path):
    good = {"id": "x1", "question": "q?", "answer": "a", "values": [], "split": "dev"}
    with pytest.raises(DataError, match="missing field"):
        load_chat_answers(path=_write(tmp_path / "m.jsonl", [{"id": "x1", "answer": "a"}]))
    with pytest.raises(DataError, match="duplicate id"):
        load_chat_answers(path=_write(tmp_path / "d.jsonl", [good, good]))
    with pytest.raises(DataError, match="no answers in split 'test'"):
        load_chat_answers("test", path=_write(tmp_path / "o.jsonl", [good]))
    with pytest.raises(DataError, match="no such file"):
        load_chat_answers(path=tmp_path / "absent.jsonl")
    with pytest.raises(ConfigError, match="unknown split"):
        load_chat_answers("validation")
    # Aliases are resolved to canonical names.
    rows = load_chat_answers(path=_write(tmp_path / "a.jsonl", [{**good, "values": ["self direction"]}]))
    assert rows[0].values == ("Self-Direction",)


# ------------------------------------------------------------------------------------------ judges for the tests


class KeywordJudge(Judge):
    """Scores value s by how many of its keywords occur (a tiny, transparent judge); expressed at ≥ 1 hit."""

    name = "keywords"
    KEYWORDS: ClassVar[dict[str, tuple[str, ...]]] = {"Self-Direction": ("your own", "yourself", "decide"), "Stimulation": ("new", "adventure"),
                "Hedonism": ("enjoy", "pleasure"), "Achievement": ("goal", "target"),
                "Power": ("control", "status"), "Security": ("safe", "insurance"),
                "Conformity": ("rule", "polite"), "Tradition": ("generations", "custom"),
                "Benevolence": ("friend", "family"), "Universalism": ("planet", "fair")}

    def judge_batch(self, texts: Sequence[str], values: Sequence[SchwartzValue],
                    contexts: Sequence[str] | None = None) -> JudgeResult:
        hits = np.array([[sum(k in t.lower() for k in self.KEYWORDS[v.name]) for v in values] for t in texts],
                        dtype=float)
        return JudgeResult(values=list(values), labels=hits >= 1, scores=hits / (hits + 1),
                           valid=np.ones(hits.shape, dtype=bool))


class LookupJudge(Judge):
    """Knows the gold labels of given answers; ``shift`` relabels value i as value i+shift (0 = perfect)."""

    name = "lookup"

    def __init__(self, items: Sequence[ChatAnswer], shift: int = 0) -> None:
        self.table = {a.answer: a.values for a in items}
        self.shift = shift

    def judge_batch(self, texts, values, contexts=None):
        names = [v.name for v in values]
        lab = np.zeros((len(texts), len(values)), dtype=bool)
        sc = np.zeros((len(texts), len(values)))
        for i, t in enumerate(texts):
            for rank, v in enumerate(self.table[t]):
                j = (VALUE_NAMES.index(v) + self.shift) % 10
                if VALUE_NAMES[j] in names:
                    col = names.index(VALUE_NAMES[j])
                    lab[i, col] = True
                    sc[i, col] = 1.0 - 0.1 * rank  # the primary value scores highest
        return JudgeResult(values=list(values), labels=lab, scores=sc, valid=np.ones_like(lab))


class ConstantJudge(Judge):
    """Gives every value of every text the same score and labels nothing."""

    name = "constant"

    def judge_batch(self, texts, values, contexts=None):
        sc = np.full((len(texts), len(values)), 0.3)
        return JudgeResult(values=list(values), labels=np.zeros(sc.shape, dtype=bool), scores=sc,
                           valid=np.ones(sc.shape, dtype=bool))


class BiasedJudge(KeywordJudge):
    """The keyword judge with Universalism's score raised for every text (as the detector's is on chat text)."""

    name = "biased"

    def judge_batch(self, texts, values, contexts=None):
        res = super().judge_batch(texts, values, contexts)
        j = [v.name for v in values].index("Universalism") if any(v.name == "Universalism" for v in values) else None
        if j is not None:
            res.scores[:, j] = 0.8 + 0.2 * res.scores[:, j]  # above any other value's (at most 0.75)
            res.labels[:, j] = True
        return res


class ContextJudge(Judge):
    """Labels value s when the *question* (context) contains one of its keywords; records what it was given."""

    name = "context"

    def __init__(self) -> None:
        self.seen_contexts: list[str | None] = []

    def judge_batch(self, texts, values, contexts=None):
        ctx = list(contexts) if contexts is not None else [None] * len(texts)
        self.seen_contexts += ctx
        return KeywordJudge().judge_batch([c or "" for c in ctx], values)


# ------------------------------------------------------------------------------------------ metrics


def test_tie_aware_top1():
    s = np.array([[0.9, 0.1, 0.1], [0.5, 0.5, 0.1], [0.5, 0.5, 0.5], [np.nan, 0.2, 0.1], [np.nan] * 3])
    got = tie_aware_top1(s, np.array([0, 1, 2, 0, 0]))
    assert got.tolist() == pytest.approx([1.0, 0.5, 1 / 3, 0.0, 0.0])


def test_auc_matches_pair_counting():
    rng = np.random.default_rng(3)
    score = rng.integers(0, 4, 40).astype(float)  # many ties
    gold = rng.random(40) < 0.3
    pairs = [(1.0 if p > q else 0.5 if p == q else 0.0) for p in score[gold] for q in score[~gold]]
    assert _auc(score, gold) == pytest.approx(np.mean(pairs))
    assert math.isnan(_auc(score, np.zeros(40, dtype=bool)))


def test_evaluate_result_matches_official_measure():
    rng = np.random.default_rng(0)
    gold = rng.random((60, 10)) < 0.2
    gold[:, 3] = False  # a value without positives is left out of the macro figures
    pred = rng.random((60, 10)) < 0.3
    res = JudgeResult(values=list(VALUES), labels=pred, scores=pred.astype(float), valid=np.ones_like(pred))
    out = evaluate_result(res, gold, [None] * 60, n_boot=0)
    ref = official_evaluate(gold.astype(int), pred.astype(int), list(VALUE_NAMES))
    assert out["in_domain_official_f1"] == pytest.approx(ref.f1, abs=1e-4)
    assert out["macro_precision"] == pytest.approx(ref.precision, abs=1e-4)
    f1s = [ref.per_category[v]["f1"] for v in VALUE_NAMES if ref.per_category[v]["support"]]
    assert out["in_domain_macro_f1"] == pytest.approx(np.mean(f1s), abs=1e-4)
    assert out["per_value"]["Achievement"]["f1"] is None and out["per_value"]["Achievement"]["support"] == 0
    assert out["in_domain_top1"] is None and out["n_top1"] == 0
    # A labeller that says yes at the judge's rate without reading: 2pq/(p+q) per value.
    p, q = gold.mean(0), pred.mean(0)
    has = gold.any(0)
    assert out["chance_macro_f1"] == pytest.approx(np.mean((2 * p * q / (p + q))[has]), abs=1e-4)


def test_invalid_cells_are_left_out():
    gold = np.array([[True, False], [False, True], [True, False]])
    lab = np.array([[True, False], [False, False], [False, False]])
    valid = np.array([[True, True], [True, False], [True, True]])  # the missed positive of value 2 is invalid
    res = JudgeResult(values=list(VALUES[:2]), labels=lab, scores=lab.astype(float), valid=valid)
    out = evaluate_result(res, gold, [None] * 3, n_boot=0)
    assert out["per_value"]["Stimulation"]["support"] == 0 and out["per_value"]["Stimulation"]["n"] == 2
    assert out["per_value"]["Self-Direction"]["recall"] == 0.5
    assert out["coverage"] == pytest.approx(5 / 6, abs=1e-4)


def test_perfect_judge_scores_one(answers):
    out = evaluate_judge(LookupJudge(answers), "test", n_boot=200)
    assert out["in_domain_macro_f1"] == 1.0 and out["in_domain_official_f1"] == 1.0
    assert out["in_domain_top1"] == 1.0 and out["in_domain_top1_ci"] == [1.0, 1.0]
    assert out["macro_auc"] == 1.0 and out["better_than_chance"] is True
    test = load_chat_answers("test")
    assert out["n"] == len(test) and out["n_top1"] == sum(a.primary is not None for a in test)
    assert out["chance_top1"] == 0.1
    prim = Counter(a.primary for a in test if a.primary)
    assert out["majority_top1"] == pytest.approx(max(prim.values()) / out["n_top1"], abs=1e-4)
    assert out["judge"] == {"name": "lookup"} and out["split"] == "test"


def test_wrong_judge_scores_zero(answers):
    out = evaluate_judge(LookupJudge(answers, shift=5), "test", n_boot=100)  # every value → its opposite
    assert out["in_domain_top1"] == 0.0 and out["better_than_chance"] is False
    # Only answers labelled with a value and its opposite (one: Self-Direction and Security) get any credit.
    assert 0 < out["in_domain_macro_f1"] < 0.02


def test_constant_judge_is_exactly_at_chance():
    out = evaluate_judge(ConstantJudge(), "test", n_boot=100)
    assert out["in_domain_top1"] == 0.1 and out["better_than_chance"] is False
    assert out["in_domain_macro_f1"] == 0.0 and out["yes_rate"] == 0.0
    assert all(v == 0.1 for v in out["top1_pick_rate"].values())
    assert out["macro_auc"] == 0.5


def test_keyword_judge_numbers_by_hand():
    items = load_chat_answers("test")
    out = evaluate_judge(KeywordJudge(), "test", n_boot=0)
    # Recompute top-1 and Benevolence's precision/recall independently of the module.
    credit, tp = [], [0, 0, 0]
    for a in items:
        text = a.answer.lower()
        hits = [sum(k in text for k in KeywordJudge.KEYWORDS[v]) for v in VALUE_NAMES]
        if a.primary:
            top = [v for v, h in zip(VALUE_NAMES, hits, strict=True) if h == max(hits)]
            credit.append(1 / len(top) if a.primary in top else 0.0)
        said, gold = hits[VALUE_NAMES.index("Benevolence")] >= 1, "Benevolence" in a.values
        tp[0] += said and gold
        tp[1] += said
        tp[2] += gold
    assert out["in_domain_top1"] == pytest.approx(np.mean(credit), abs=1e-4)
    assert out["per_value"]["Benevolence"]["precision"] == pytest.approx(tp[0] / tp[1], abs=1e-4)
    assert out["per_value"]["Benevolence"]["recall"] == pytest.approx(tp[0] / tp[2], abs=1e-4)
    assert "in_domain_macro_f1_ci" not in out and out["in_domain_top1_ci"] == [None, None]


def test_bootstrap_ci_is_seeded_and_brackets_the_estimate():
    a = evaluate_judge(KeywordJudge(), "test", n_boot=300, seed=1)
    b = evaluate_judge(KeywordJudge(), "test", n_boot=300, seed=1)
    c = evaluate_judge(KeywordJudge(), "test", n_boot=300, seed=2)
    assert a["in_domain_top1_ci"] == b["in_domain_top1_ci"] and a["in_domain_top1_ci"] != c["in_domain_top1_ci"]
    for key in ("in_domain_top1", "in_domain_macro_f1", "in_domain_official_f1"):
        lo, hi = a[f"{key}_ci"]
        assert lo < a[key] < hi and hi - lo < 0.3


def test_use_context_passes_the_questions():
    j = ContextJudge()
    out = evaluate_judge(j, "dev", use_context=True, n_boot=0)
    dev = load_chat_answers("dev")
    assert j.seen_contexts == [a.question for a in dev] and out["use_context"] is True
    j2 = ContextJudge()
    evaluate_judge(j2, "dev", n_boot=0)
    assert set(j2.seen_contexts) == {None}


def test_lexicon_judge_in_domain():
    """The lexicon judge ranks the labelled value first far above chance, and dev-tuned thresholds help on test."""
    lex = LexiconJudge()
    base = evaluate_judge(lex, "test", n_boot=500)
    assert base["better_than_chance"] is True
    assert base["in_domain_top1_ci"][0] > base["majority_top1"]
    assert base["in_domain_macro_f1"] > base["chance_macro_f1"]
    th = tune_thresholds(lex, "dev")
    assert set(th) == set(VALUE_NAMES)
    tuned = evaluate_judge(ThresholdedJudge(lex, th), "test", n_boot=500)
    assert tuned["in_domain_macro_f1"] > base["in_domain_macro_f1"]
    assert tuned["judge"]["thresholds"] == th and tuned["judge"]["base"]["name"] == "lexicon"


# ------------------------------------------------------------------------------------------ thresholds


def test_best_threshold():
    s = np.array([0.1, 0.2, 0.3, 0.6, 0.7, 0.8])
    g = np.array([False, False, False, True, True, True])
    assert 0.3 < _best_threshold(s, g) <= 0.6
    assert _best_threshold(s, np.zeros(6, dtype=bool)) == 0.5  # nothing to tune on
    flat = np.full(6, 0.4)
    # No signal: "yes to all" (F1 2/3) beats "no to all" (F1 0).
    assert _best_threshold(flat, g) < 0.4
    assert _best_threshold(np.array([np.nan, 0.9]), np.array([True, True])) <= 0.9


def test_tune_thresholds_and_thresholded_judge(tmp_path):
    words = ["", "safe", "safe insurance"]  # KeywordJudge scores 0, 1/2, 2/3 for Security
    rows = [{"id": f"x{i}", "question": "q?", "answer": f"text {i} {words[i % 3]}",
             "values": ["Security"] if i % 3 == 2 else [], "split": "dev"} for i in range(24)]
    items = load_chat_answers(path=_write(tmp_path / "t.jsonl", rows))
    th = tune_thresholds(KeywordJudge(), answers=items)
    assert th["Security"] == pytest.approx((1 / 2 + 2 / 3) / 2, abs=1e-6)  # the midpoint that separates them
    assert th["Power"] == 0.5  # no positive: the default stays
    tj = ThresholdedJudge(KeywordJudge(), {"Security": 0.3})
    base = KeywordJudge().judge(["safe and sound", "nothing here", "safe insurance"])
    res = tj.judge(["safe and sound", "nothing here", "safe insurance"])
    j = [v.name for v in res.values].index("Security")
    assert res.labels[:, j].tolist() == (base.scores[:, j] >= 0.3).tolist()
    assert ((res.scores[:, j] >= 0.5) == res.labels[:, j]).all()
    # The map is monotone: the order of texts by score is kept.
    assert (np.argsort(res.scores[:, j], kind="stable") == np.argsort(base.scores[:, j], kind="stable")).all()
    # Values without a threshold are untouched.
    k = [v.name for v in res.values].index("Power")
    assert (res.scores[:, k] == base.scores[:, k]).all() and (res.labels[:, k] == base.labels[:, k]).all()


def test_thresholded_judge_edges():
    tj = ThresholdedJudge(ConstantJudge(), {"power": 1.5})
    res = tj.judge(["x"], "Power")
    assert res.labels.tolist() == [[False]] and res.scores[0, 0] < 0.5
    assert tj.describe()["thresholds"] == {"Power": 1.5}


def test_percentile():
    ref = np.array([0.0, 0.0, 0.2, 0.4])
    got = _percentile(ref, np.array([-1.0, 0.0, 0.1, 0.4, 0.9, np.nan]))
    assert got[:5].tolist() == pytest.approx([0.0, 0.25, 0.5, 0.875, 1.0]) and np.isnan(got[5])


def test_calibration_makes_values_comparable():
    """A judge that scores one value high on every text names it first everywhere; dev percentiles undo that."""
    raw = evaluate_judge(BiasedJudge(), "test", n_boot=0)
    n_univ = sum(a.primary == "Universalism" for a in load_chat_answers("test"))
    assert raw["top1_pick_rate"]["Universalism"] == 1.0
    assert raw["in_domain_top1"] == pytest.approx(n_univ / raw["n_top1"], abs=1e-4)
    cal = calibrate_judge(BiasedJudge(), "dev")
    assert cal.thresholds == tune_thresholds(BiasedJudge(), "dev")
    fixed = evaluate_judge(cal, "test", n_boot=0)
    plain = evaluate_judge(KeywordJudge(), "test", n_boot=0)
    assert fixed["top1_pick_rate"]["Universalism"] < 0.3
    assert fixed["in_domain_top1"] > raw["in_domain_top1"] + 0.1
    assert fixed["in_domain_top1"] >= plain["in_domain_top1"] - 0.05
    # The tuned threshold stops Universalism being said of every answer.
    assert fixed["per_value"]["Universalism"]["yes_rate"] < 0.5 < raw["per_value"]["Universalism"]["yes_rate"]
    assert fixed["judge"]["name"] == "biased+calibrated" and fixed["judge"]["scores"] == "dev percentile"


def test_calibration_round_trip(tmp_path):
    cal = calibrate_judge(KeywordJudge(), "dev")
    d = json.loads(json.dumps(cal.to_dict()))
    again = ThresholdedJudge.from_dict(KeywordJudge(), d)
    texts = [a.answer for a in load_chat_answers("test")[:40]]
    a, b = cal.judge(texts), again.judge(texts)
    assert (a.labels == b.labels).all() and np.allclose(a.scores, b.scores)
    assert len(d["reference"]["Power"]) == len(load_chat_answers("dev"))
    with pytest.raises(DataError, match="needs a 'thresholds' object"):
        ThresholdedJudge.from_dict(KeywordJudge(), {"reference": {}})
    with pytest.raises(DataError, match="judge calibration: unknown value 'Kindness'"):
        ThresholdedJudge.from_dict(KeywordJudge(), {"thresholds": {"Kindness": 0.5}})


# ------------------------------------------------------------------------------------------ prompted responses


def _make_run(tmp_path: Path, per_value: int = 4, hit: int = 2, values: Sequence[str] = VALUE_NAMES) -> Path:
    """A run folder in the layout of `valuelens extract`: the first ``hit`` responses of each value carry that
    value's keyword (and the judgment favours it); the rest carry the next value's keyword."""
    run = tmp_path / "run"
    (run / "responses").mkdir(parents=True)
    resp, judg = [], []
    for vi, v in enumerate(values):
        for i in range(per_value):
            shown = v if i < hit else values[(vi + 1) % len(values)]
            rid = f"prompted/{v}/{i:04d}"
            resp.append({"id": rid, "condition": "prompted", "target_value": v, "query_id": "q1",
                         "template_id": "t", "prompt": {"user": "What should I do?"},
                         "response": f"Think about {KeywordJudge.KEYWORDS[shown][0]}."})
            scores = {u: (0.9 if u == shown else 0.1) for u in values}
            judg.append({"id": rid, "labels": {u: int(u == shown) for u in values}, "scores": scores})
    resp.append({"id": "intrinsic/q1", "condition": "intrinsic", "target_value": None, "response": "Hello."})
    judg.append({"id": "intrinsic/q1", "labels": {u: 0 for u in values}, "scores": {u: 0.1 for u in values}})
    (run / "responses" / "responses.shard-0-of-1.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in resp), encoding="utf-8")
    (run / "judgments.jsonl").write_text("".join(json.dumps(r) + "\n" for r in judg), encoding="utf-8")
    (run / "judge.json").write_text(json.dumps({"name": "fake-run-judge"}), encoding="utf-8")
    return run


def test_prompted_top1_from_the_runs_judgments(tmp_path):
    run = _make_run(tmp_path, per_value=4, hit=3)
    out = prompted_top1(run, n_boot=200)
    assert out["n"] == 40 and out["n_empty"] == 0 and out["source"] == "judgments.jsonl"
    assert out["prompted_top1"] == 0.75 and out["chance_top1"] == 0.1 and out["majority_top1"] == 0.1
    lo, hi = out["prompted_top1_ci"]
    assert lo < 0.75 < hi and out["better_than_chance"] is True
    assert out["judge"] == {"name": "fake-run-judge"}
    # Label gap: P(yes | prompted s) = 3/4; P(yes | prompted other) = 1/36 (one response of the previous value).
    assert out["prompted_label_gap"] == pytest.approx(0.75 - 1 / 36, abs=1e-4)
    assert out["n_per_value"] == {v: 4 for v in VALUE_NAMES}


def test_prompted_top1_rejudged_and_subset_of_values(tmp_path):
    vals = ["Power", "Benevolence", "Universalism", "Security"]
    run = _make_run(tmp_path, per_value=5, hit=1, values=vals)
    own = prompted_top1(run, n_boot=0)
    assert own["values_ranked"] == ["Power", "Security", "Benevolence", "Universalism"]
    assert own["chance_top1"] == 0.25 and own["prompted_top1"] == 0.2
    rej = prompted_top1(run, KeywordJudge(), n_boot=0)
    assert rej["source"] == "rejudged" and rej["chance_top1"] == 0.1 and rej["prompted_top1"] == 0.2


def test_prompted_top1_errors(tmp_path):
    with pytest.raises(DataError, match="no such run folder"):
        prompted_top1(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no responses"):
        prompted_top1(tmp_path / "empty")
    run = _make_run(tmp_path)
    (run / "judgments.jsonl").unlink()
    with pytest.raises(DataError, match="stage 'judge' has not run"):
        prompted_top1(run)
    (run / "judgments.jsonl").write_text(json.dumps({"id": "intrinsic/q1", "labels": {}, "scores": {}}) + "\n")
    with pytest.raises(DataError, match="have no judgment"):
        prompted_top1(run)


# ------------------------------------------------------------------------------------------ command line


def test_cli(tmp_path, capsys):
    out = tmp_path / "lex.json"
    assert main(["--judge", "lexicon", "--tune", "--n-boot", "50", "--out", str(out)]) == 0
    rep = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == rep
    assert set(rep) == {"in_domain", "thresholds", "in_domain_tuned", "in_domain_calibrated"}
    assert main(["--judge", "nosuch"]) == 2
    assert "unknown judge 'nosuch'" in capsys.readouterr().err
    assert main(["--judge", "lexicon", "--model", "x"]) == 2
    assert main(["--judge", "lexicon", "--run", str(tmp_path / "none"), "--n-boot", "0"]) == 2
    assert "no such run folder" in capsys.readouterr().err


def test_cli_with_a_run(tmp_path, capsys):
    run = _make_run(tmp_path)
    assert main(["--judge", "lexicon", "--tune", "--run", str(run), "--n-boot", "0"]) == 0
    rep = json.loads(capsys.readouterr().out)
    assert {"prompted_run_judge", "prompted", "prompted_calibrated"} <= set(rep)
    assert rep["prompted_run_judge"]["prompted_top1"] == 0.5 and rep["prompted"]["source"] == "rejudged"
    (run / "judgments.jsonl").unlink()  # the judge stage has not run: the re-judged figures only
    assert main(["--judge", "lexicon", "--run", str(run), "--n-boot", "0"]) == 0
    assert set(json.loads(capsys.readouterr().out)) == {"in_domain", "prompted"}
