"""The portrait-value questionnaire, answered by log-probability scoring (no judge), and steering effects on it.

Each item is shown as one user message — the portrait, a line break, the question ("How much like you is this
person?") — rendered with the model's chat template (``system`` chooses the system turn; default
:data:`~valuelens.models.NO_SYSTEM`). The six answer options are *not* listed in the prompt: each is scored as the
assistant's complete reply (:func:`valuelens.evals.scoring.option_logprobs`, summed log-probability including the
end-of-turn token), so the answer distribution does not depend on option order. Per item we report:

* ``probs`` — softmax of the six options' log-probabilities, in scale order (most like me first);
* ``expected`` — the expected score Σ p·score with scores 6..1 (:data:`~valuelens.evals.items.PVQ_SCORES`);
* ``answer`` / ``answer_score`` — the most probable option and its score.

A value's score is the mean expected score of its items (:func:`value_scores`). The steering metric
(:func:`steering_effect`) is the paper's: the change of a value's score under steering, on the 6-point scale
(Qwen2.5-7B: +1.74 for the intrinsic vector, +2.21 for the prompted one). All our items are positively keyed, so
a steer that merely raises agreement (acquiescence) moves every value; we therefore also report the mean change
over the *other* values and the target's change minus it.

>>> expected_score([0.5, 0.5, 0, 0, 0, 0])
5.5
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..hooks import Intervention
from ..models import NO_SYSTEM, LoadedModel
from ..values import VALUE_NAMES, get_value
from .items import PVQ_SCORES, PVQItem, load_pvq, pvq_scale
from .scoring import ScoreKind, option_logprobs_conditions, softmax

__all__ = [
    "SteeringEffect",
    "administer",
    "administer_many",
    "expected_score",
    "item_prompt",
    "steering_effect",
    "value_scores",
]


def expected_score(probs: Sequence[float] | np.ndarray, scores: Sequence[int] = PVQ_SCORES) -> float:
    """Σ p·score for a distribution over the options in scale order (scores 6..1 by default)."""
    p = np.asarray(probs, dtype=np.float64)
    s = np.asarray(scores, dtype=np.float64)
    if p.shape != s.shape:
        raise ConfigError(f"{p.size} probabilities for {s.size} options")
    if np.any(p < 0) or not np.isclose(p.sum(), 1.0, atol=1e-6):
        raise ConfigError("probabilities must be non-negative and sum to 1")
    return float(p @ s)


def item_prompt(item: PVQItem, question: str) -> str:
    """The user message for one item: the portrait, a line break, the question."""
    return f"{item.text}\n{question}"


def administer(lm: LoadedModel, items: Sequence[PVQItem] | None = None, lang: str = "en",
               interventions: Sequence[Intervention] = (), system: str = NO_SYSTEM, *,
               batch_size: int = 8, score: ScoreKind = "sum") -> list[dict[str, Any]]:
    """Answer every item by option log-probability; one record per item, in item order.

    ``items``: PVQ items in ``lang`` (default: all of :func:`~valuelens.evals.items.load_pvq` for ``lang``).
    Each record: ``id, value, lang, prompt`` (the exact rendered prompt), ``options``, ``logprob_sum``,
    ``logprob_mean``, ``probs``, ``expected``, ``answer``, ``answer_score``, ``system_mode``.
    ``score`` picks which log-probability is softmaxed (``"sum"``, the default, is the probability of the whole
    reply; see :mod:`valuelens.evals.scoring`).
    """
    return administer_many(lm, items, lang, {"_": interventions}, system, batch_size=batch_size, score=score)["_"]


def administer_many(lm: LoadedModel, items: Sequence[PVQItem] | None, lang: str,
                    conditions: Mapping[str, Sequence[Intervention]], system: str = NO_SYSTEM, *,
                    batch_size: int = 8, score: ScoreKind = "sum") -> dict[str, list[dict[str, Any]]]:
    """:func:`administer` under several intervention sets (``{name: interventions}``) in one go: the unsteered
    passes are shared and every single-layer steer only reruns the layers above its layer
    (:func:`valuelens.evals.scoring.option_logprobs_conditions`). Same records as one :func:`administer` each."""
    question, options = pvq_scale(lang)
    if items is None:
        items = load_pvq(lang)
    items = list(items)
    if not items:
        raise ConfigError("no questionnaire items given")
    wrong = sorted({it.lang for it in items if it.lang != lang})
    if wrong:
        raise ConfigError(f"items are in {', '.join(wrong)} but the scale language is {lang!r}; pass lang=...")
    rendered = [lm.chat.render(item_prompt(it, question), system) for it in items]
    by_cond = option_logprobs_conditions(lm, rendered, [list(options)] * len(items), conditions,
                                         batch_size=batch_size)
    out: dict[str, list[dict[str, Any]]] = {}
    for name, lps in by_cond.items():
        recs = []
        for it, rp, lp in zip(items, rendered, lps, strict=True):
            p = softmax(lp.get(score))
            k = int(np.argmax(p))
            recs.append({
                "id": it.id, "value": it.value, "lang": it.lang, "prompt": rp.text, "system_mode": rp.system_mode,
                "options": list(options), "logprob_sum": lp.sum.tolist(), "logprob_mean": lp.mean.tolist(),
                "probs": p.tolist(), "expected": expected_score(p), "answer": options[k],
                "answer_score": int(PVQ_SCORES[k]),
            })
        out[name] = recs
    return out


def value_scores(results: Sequence[Mapping[str, Any]], *, key: str = "expected",
                 centered: bool = False) -> dict[str, float]:
    """Mean item score per value (``key``: ``"expected"`` or ``"answer_score"``), in circumplex order.

    ``centered`` subtracts the mean over all items (the PVQ's correction for acquiescence; with only positively
    keyed items it removes any shift shared by every value). Values without items are left out.
    """
    if not results:
        raise ConfigError("no questionnaire results")
    by: dict[str, list[float]] = {}
    for r in results:
        by.setdefault(r["value"], []).append(float(r[key]))
    grand = float(np.mean([float(r[key]) for r in results])) if centered else 0.0
    return {v: float(np.mean(by[v])) - grand for v in VALUE_NAMES if v in by}


@dataclass
class SteeringEffect:
    """Per condition and value: questionnaire scores with and without steering.

    ``rows``: one dict per (condition, value) with ``baseline``, ``steered``, ``delta`` (steered − baseline),
    ``delta_others`` (mean delta of the other values), ``delta_vs_others`` (delta − delta_others) and
    ``is_target``. ``results``: the per-item records of the baseline (``"baseline"``) and of every condition.
    """

    rows: list[dict[str, Any]]
    results: dict[str, list[dict[str, Any]]] = field(repr=False)
    targets: dict[str, str] = field(default_factory=dict)

    def target_rows(self) -> list[dict[str, Any]]:
        """The row of each condition's target value (conditions without a target are left out)."""
        return [r for r in self.rows if r["is_target"]]

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.rows)


def steering_effect(lm: LoadedModel, items: Sequence[PVQItem] | None,
                    conditions: Mapping[str, Sequence[Intervention]], baseline: Sequence[Intervention] = (),
                    lang: str = "en", *, targets: Mapping[str, str] | None = None,
                    system: str = NO_SYSTEM, batch_size: int = 8, score: ScoreKind = "sum",
                    baseline_results: Sequence[dict[str, Any]] | None = None) -> SteeringEffect:
    """Δ expected score per value for each steering condition, against ``baseline`` interventions.

    ``conditions``: ``{name: [interventions]}`` (e.g. ``{"v_int": [Steer(...)], "random": [Steer(...)]}``).
    ``targets``: optional ``{condition name: value}`` marking each condition's target value (``is_target``).
    Administer all values' items (not only the target's) so the other-values change can be measured.
    ``baseline_results``: the records of an earlier :func:`administer` of the same items under ``baseline``
    (saves re-scoring the unsteered model when effects are computed value by value).
    """
    if not conditions:
        raise ConfigError("no steering conditions given")
    if "baseline" in conditions:
        raise ConfigError("'baseline' is reserved for the unsteered run; rename that condition")
    tg = {c: get_value(v).name for c, v in (targets or {}).items()}
    unknown = sorted(set(tg) - set(conditions))
    if unknown:
        raise ConfigError(f"targets name unknown conditions: {', '.join(unknown)}")
    items = load_pvq(lang) if items is None else list(items)
    if baseline_results is None:
        base_res = administer(lm, items, lang, baseline, system, batch_size=batch_size, score=score)
    else:
        base_res = list(baseline_results)
        if [r["id"] for r in base_res] != [it.id for it in items]:
            raise ConfigError("baseline_results do not answer the given items (ids differ)")
    base = value_scores(base_res)
    results = {"baseline": base_res}
    rows: list[dict[str, Any]] = []
    many = administer_many(lm, items, lang, conditions, system, batch_size=batch_size, score=score)
    for name in conditions:
        res = many[name]
        results[name] = res
        steered = value_scores(res)
        delta = {v: steered[v] - base[v] for v in base}
        for v in base:
            others = [delta[o] for o in base if o != v]
            d_oth = float(np.mean(others)) if others else float("nan")
            rows.append({"condition": name, "value": v, "baseline": base[v], "steered": steered[v],
                         "delta": delta[v], "delta_others": d_oth, "delta_vs_others": delta[v] - d_oth,
                         "is_target": tg.get(name) == v})
    return SteeringEffect(rows=rows, results=results, targets=tg)
