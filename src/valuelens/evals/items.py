"""Loaders for the evaluation data shipped in ``valuelens/data`` (see ``data/README_evals.md``).

* :func:`load_pvq` — portrait-value questionnaire items (PVQ-style, written by the valuelens authors), in
  English, Chinese, Spanish, French and Korean; :func:`pvq_scale` — the shared question and its six answer
  options (most-like first, scored 6..1; every item is positively keyed for its value).
* :func:`load_instructions` — verifiable instructions checked by :mod:`valuelens.evals.compliance`.
* :func:`load_capability_mc` — easy four-option multiple-choice questions (a capability guard).
* :func:`load_heldout_text` — neutral held-out prose for perplexity (a capability guard).

>>> items = load_pvq("en", values=["achievement"])
>>> items[0].value, items[0].lang
('Achievement', 'en')
>>> question, options = pvq_scale("en")
>>> len(options), PVQ_SCORES[0]
(6, 6)
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from ..errors import ConfigError, DataError
from ..values import VALUE_NAMES, get_value

__all__ = [
    "PVQ_LANGUAGES",
    "PVQ_SCORES",
    "InstructionItem",
    "MCItem",
    "PVQItem",
    "load_capability_mc",
    "load_heldout_text",
    "load_instructions",
    "load_pvq",
    "pvq_scale",
]

#: Languages every PVQ item and the scale are available in.
PVQ_LANGUAGES: tuple[str, ...] = ("en", "zh", "es", "fr", "ko")
#: Score of each answer option, in the order :func:`pvq_scale` returns them (most like me first).
PVQ_SCORES: tuple[int, ...] = (6, 5, 4, 3, 2, 1)

_PVQ_FILE = "pvq.jsonl"
_INSTR_FILE = "instructions.jsonl"
_MC_FILE = "capability_mc.jsonl"
_HELDOUT_FILE = "heldout.txt"
_SCALE_ID = "_scale"


@dataclass(frozen=True)
class PVQItem:
    """One portrait item in one language. ``value`` is the canonical Schwartz value name it measures."""

    id: str
    value: str
    lang: str
    text: str


@dataclass(frozen=True)
class InstructionItem:
    """A user prompt with code-checkable instructions (each a dict with a ``type`` and its parameters)."""

    id: str
    prompt: str
    checks: tuple[dict[str, Any], ...] = field(default_factory=tuple)

    @property
    def check_types(self) -> tuple[str, ...]:
        return tuple(c["type"] for c in self.checks)


@dataclass(frozen=True)
class MCItem:
    """A four-option multiple-choice question; ``answer`` is the 0-based index of the correct option."""

    id: str
    question: str
    options: tuple[str, ...]
    answer: int

    @property
    def answer_letter(self) -> str:
        return "ABCD"[self.answer]

    @property
    def answer_text(self) -> str:
        return self.options[self.answer]


# ------------------------------------------------------------------------------------------------ file access


def _read_text(name: str) -> str:
    try:
        return resources.files("valuelens").joinpath("data", name).read_text(encoding="utf-8")
    except FileNotFoundError as e:  # pragma: no cover - packaging error
        raise DataError(f"bundled data file valuelens/data/{name} is missing") from e


@functools.cache
def _read_jsonl(name: str) -> tuple[dict[str, Any], ...]:
    rows: list[dict[str, Any]] = []
    for lineno, line in enumerate(_read_text(name).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"valuelens/data/{name}:{lineno}: invalid JSON ({e.msg})") from e
        if not isinstance(row, dict) or "id" not in row:
            raise DataError(f"valuelens/data/{name}:{lineno}: expected a JSON object with an 'id'")
        rows.append(row)
    ids = [r["id"] for r in rows]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"valuelens/data/{name}: duplicate ids {dup[:5]}")
    return tuple(rows)


def _check_lang(lang: str) -> str:
    if lang not in PVQ_LANGUAGES:
        raise ConfigError(f"unknown questionnaire language {lang!r}; valid languages: {', '.join(PVQ_LANGUAGES)}")
    return lang


# ------------------------------------------------------------------------------------------------------- PVQ


def pvq_scale(lang: str = "en") -> tuple[str, tuple[str, ...]]:
    """The questionnaire's question and its six answer options in ``lang`` (most like me first, 6..1).

    Raises :class:`ConfigError` for a language not in :data:`PVQ_LANGUAGES`.
    """
    _check_lang(lang)
    rows = [r for r in _read_jsonl(_PVQ_FILE) if r["id"] == _SCALE_ID]
    if not rows:
        raise DataError(f"valuelens/data/{_PVQ_FILE}: no '{_SCALE_ID}' line with the question and options")
    scale = rows[0]
    try:
        question = scale["question"][lang]
        options = tuple(scale["options"][lang])
    except KeyError as e:
        raise DataError(f"valuelens/data/{_PVQ_FILE}: scale has no {lang!r} translation") from e
    if len(options) != len(PVQ_SCORES):
        raise DataError(f"valuelens/data/{_PVQ_FILE}: scale for {lang!r} has {len(options)} options, expected 6")
    return question, options


def load_pvq(lang: str = "en", values: str | Iterable[str] | None = None) -> list[PVQItem]:
    """Portrait items in ``lang``, optionally only for ``values`` (names, keys or aliases; ``None`` = all).

    Items come in file order (grouped by value, circumplex order). Raises :class:`ConfigError` for an unknown
    language or value, listing the valid ones.
    """
    _check_lang(lang)
    wanted: set[str] | None = None
    if values is not None:
        names = [values] if isinstance(values, str) else list(values)
        wanted = {get_value(v).name for v in names}
    out: list[PVQItem] = []
    for row in _read_jsonl(_PVQ_FILE):
        if row["id"] == _SCALE_ID:
            continue
        value = row.get("value")
        if value not in VALUE_NAMES:
            raise DataError(f"valuelens/data/{_PVQ_FILE}: item {row['id']!r} has unknown value {value!r}")
        if wanted is not None and value not in wanted:
            continue
        text = row.get("text", {}).get(lang)
        if not text:
            raise DataError(f"valuelens/data/{_PVQ_FILE}: item {row['id']!r} has no {lang!r} text")
        out.append(PVQItem(id=row["id"], value=value, lang=lang, text=text))
    return out


# ------------------------------------------------------------------------------------------- instructions


def load_instructions() -> list[InstructionItem]:
    """The verifiable-instruction items; every check type is validated against the checker registry.

    Raises :class:`DataError` naming the item for an unknown check type or a missing parameter.
    """
    from .compliance import validate_checks

    out: list[InstructionItem] = []
    for row in _read_jsonl(_INSTR_FILE):
        if not isinstance(row.get("prompt"), str) or not isinstance(row.get("checks"), list) or not row["checks"]:
            raise DataError(f"valuelens/data/{_INSTR_FILE}: item {row['id']!r} needs a 'prompt' and 'checks'")
        validate_checks(row["checks"], row["id"])
        out.append(InstructionItem(id=row["id"], prompt=row["prompt"], checks=tuple(dict(c) for c in row["checks"])))
    return out


# -------------------------------------------------------------------------------------------- capability MC


def load_capability_mc() -> list[MCItem]:
    """The four-option multiple-choice capability questions (answer indices roughly balanced over A–D)."""
    out: list[MCItem] = []
    for row in _read_jsonl(_MC_FILE):
        opts = row.get("options")
        ans = row.get("answer")
        if not isinstance(opts, list) or len(opts) != 4 or not isinstance(ans, int) or not 0 <= ans < 4:
            raise DataError(f"valuelens/data/{_MC_FILE}: item {row['id']!r} needs 4 options and an answer 0..3")
        if len(set(opts)) != 4:
            raise DataError(f"valuelens/data/{_MC_FILE}: item {row['id']!r} has duplicate options")
        out.append(MCItem(id=row["id"], question=row["question"], options=tuple(opts), answer=ans))
    return out


def load_heldout_text() -> str:
    """Held-out neutral English prose (about 3000 words) for perplexity; paragraphs separated by blank lines."""
    return _read_text(_HELDOUT_FILE).strip() + "\n"
