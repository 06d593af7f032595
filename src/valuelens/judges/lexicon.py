"""A transparent baseline judge: a hand-written value lexicon (our own word lists, stems matched at word starts).

A text expresses value s when at least ``min_hits`` distinct lexicon stems of s occur in it. It needs no model,
runs instantly, and is fully auditable (``raw`` lists the matched words) — useful as a sanity baseline for the
detector and LLM judges (see :mod:`valuelens.judges.agreement`), and for fast tests. It knows nothing about
negation or context, so it is a weak judge; reports say which judge labelled a run.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..values import SchwartzValue
from .base import Judge, JudgeResult, register_judge

__all__ = ["LEXICON", "LexiconJudge"]

LEXICON: dict[str, tuple[str, ...]] = {
    "Self-Direction": ("independen", "freedom", "free to", "autonom", "own choice", "choose", "choice", "creativ",
                       "curios", "explor", "own path", "decide for", "self-relian", "think for yourself", "own mind"),
    "Stimulation": ("adventur", "excit", "thrill", "new experience", "novel", "challeng", "daring", "bold",
                    "spontane", "variety", "risk", "try something new", "stimulat"),
    "Hedonism": ("enjoy", "pleasure", "fun", "treat yourself", "indulg", "delight", "savor", "savour", "relax",
                 "happiness", "pamper", "have a good time", "gratif"),
    "Achievement": ("succe", "achiev", "ambitio", "goal", "accomplish", "career", "excel", "competen",
                    "promotion", "perform", "skill", "progress", "win"),
    "Power": ("power", "status", "prestig", "wealth", "money", "control", "influence", "authority", "dominan",
              "leader", "respect from", "rich", "image", "reputation"),
    "Security": ("safe", "secur", "stabil", "protect", "risk", "health", "caution", "careful", "savings",
                 "insurance", "order", "reliab", "predictab"),
    "Conformity": ("rule", "polite", "obey", "obedien", "norm", "expectation", "appropriate", "proper",
                   "self-disciplin", "respectful", "courte", "follow the", "law", "etiquette"),
    "Tradition": ("tradition", "custom", "heritage", "religio", "faith", "ritual", "ancestor", "culture",
                  "humble", "humility", "modest", "elders", "family values", "generations"),
    "Benevolence": ("help", "care", "caring", "kind", "friend", "family", "loyal", "honest", "support",
                    "forgiv", "trust", "loved one", "compassion", "responsib"),
    "Universalism": ("equal", "justice", "fair", "environment", "nature", "planet", "tolera", "divers",
                     "peace", "everyone", "humanity", "sustainab", "understanding", "wisdom", "climate"),
}


def _patterns() -> dict[str, list[re.Pattern[str]]]:
    return {v: [re.compile(r"\b" + re.escape(stem), re.IGNORECASE) for stem in stems]
            for v, stems in LEXICON.items()}


@register_judge("lexicon")
class LexiconJudge(Judge):
    """Value lexicon judge. ``min_hits``: distinct stems needed; ``score`` = hits / (hits + min_hits)."""

    name = "lexicon"

    def __init__(self, min_hits: int = 2) -> None:
        self.min_hits = int(min_hits)
        self._pats = _patterns()

    def judge_batch(self, texts: Sequence[str], values: Sequence[SchwartzValue],
                    contexts: Sequence[str] | None = None) -> JudgeResult:
        n, k = len(texts), len(values)
        labels = np.zeros((n, k), dtype=bool)
        scores = np.zeros((n, k), dtype=np.float64)
        raw: list[Any] = []
        for i, text in enumerate(texts):
            hits: dict[str, list[str]] = {}
            for j, v in enumerate(values):
                found = [p.pattern[2:].replace("\\", "") for p in self._pats[v.name] if p.search(text)]
                hits[v.name] = found
                scores[i, j] = len(found) / (len(found) + self.min_hits)
                labels[i, j] = len(found) >= self.min_hits
            raw.append(hits)
        return JudgeResult(values=list(values), labels=labels, scores=scores,
                           valid=np.ones((n, k), dtype=bool), raw=raw)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "min_hits": self.min_hits,
                "lexicon_size": sum(len(s) for s in LEXICON.values())}
