"""Loaders for the evaluation data shipped in ``valuelens/data`` (see ``data/README_evals.md``).

* :func:`load_pvq` — portrait-value questionnaire items (PVQ-style, written by the valuelens authors), in
  English, Chinese, Spanish, French and Korean; :func:`pvq_scale` — the shared question and its six answer
  options (most-like first, scored 6..1; every item is positively keyed for its value).
* :func:`load_instructions` — verifiable instructions checked by :mod:`valuelens.evals.compliance`.
* :func:`load_capability_mc` — easy four-option multiple-choice questions (a capability guard).
* :func:`load_heldout_text` — neutral held-out prose for perplexity (a capability guard).

:func:`load_pvq` and :func:`load_instructions` also read a user's own file (``source=``: JSONL, JSON, CSV/TSV or
Parquet, see docs/data.md), with the same column detection as the query loaders: the column is found when
unambiguous, else the error lists the candidates and the option that chooses.

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


def load_pvq(lang: str = "en", values: str | Iterable[str] | None = None, *, source: str | None = None,
             text_column: str = "auto", value_column: str = "auto") -> list[PVQItem]:
    """Portrait items in ``lang``, optionally only for ``values`` (names, keys or aliases; ``None`` = all).

    Items come in file order (grouped by value, circumplex order). Raises :class:`ConfigError` for an unknown
    language or value, listing the valid ones.

    ``source``: a user file of items instead of the shipped ones — a value column (``value``, …) and a text
    column (``text``, ``item``, ``portrait``, …; or ``text_column``/``value_column``), optional ``id`` and
    ``lang`` (rows of other languages are skipped; without a ``lang`` column every row is in ``lang``). Items
    must be phrased for the shipped six-point scale (:func:`pvq_scale`).
    """
    _check_lang(lang)  # the scale exists in these languages only, user items included
    wanted: set[str] | None = None
    if values is not None:
        names = [values] if isinstance(values, str) else list(values)
        wanted = {get_value(v).name for v in names}
    if source is not None:
        return _user_pvq(source, lang, wanted, text_column, value_column)
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


def load_instructions(source: str | None = None, *, prompt_column: str = "auto") -> list[InstructionItem]:
    """The verifiable-instruction items; every check type is validated against the checker registry.

    ``source``: a user file instead of the shipped items — a prompt column (``prompt``, ``instruction``,
    ``text``, …; or ``prompt_column``), ``checks`` (a list of ``{"type": …, params}``, or that list as a JSON
    string in CSV), optional ``id``. Raises :class:`DataError` naming the item for an unknown check type or a
    missing parameter.
    """
    from .compliance import validate_checks

    if source is not None:
        return _user_instructions(source, prompt_column)
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


# ------------------------------------------------------------------------------------------------ user files

_PVQ_TEXT_COLUMNS = ("text", "item", "portrait", "statement", "question")
_PROMPT_COLUMNS = ("prompt", "instruction", "text", "query", "input")


def _user_pvq(source: str, lang: str, wanted: set[str] | None, text_column: str, value_column: str
              ) -> list[PVQItem]:
    from ..datasets import PROMPT_VALUE_COLUMNS, pick_column, read_table, stable_id

    rows = read_table(source)
    vcol = pick_column(rows, value_column, PROMPT_VALUE_COLUMNS, source, what="value", fallback=False,
                       hint="choose with value_column=NAME")
    tcol = pick_column([{k: v for k, v in r.items() if k != vcol} for r in rows], text_column, _PVQ_TEXT_COLUMNS,
                       source, what="item text", hint="choose with text_column=NAME")
    out: list[PVQItem] = []
    seen: set[str] = set()
    for i, r in enumerate(rows, start=1):
        where = f"{source}, row {i}"
        row_lang = str(r.get("lang") or lang).strip()
        if row_lang != lang:
            continue
        text, value = r.get(tcol), r.get(vcol)
        if not isinstance(text, str) or not text.strip():
            raise DataError(f"{where}: empty or non-text {tcol!r}")
        try:
            name = get_value(str(value)).name
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
        iid = str(r.get("id") or stable_id(text.strip(), prefix="pvq-"))
        if iid in seen:
            raise DataError(f"{where}: duplicate id {iid!r}")
        seen.add(iid)
        if wanted is None or name in wanted:
            out.append(PVQItem(id=iid, value=name, lang=lang, text=text.strip()))
    if not out:
        raise DataError(f"{source}: no items in language {lang!r}" + ("" if wanted is None else
                                                                      f" for {', '.join(sorted(wanted))}"))
    return out


def _user_instructions(source: str, prompt_column: str) -> list[InstructionItem]:
    from ..datasets import pick_column, read_table, stable_id
    from .compliance import validate_checks

    rows = read_table(source)
    if not any("checks" in r for r in rows):
        raise DataError(f"{source}: no column 'checks' (columns: {', '.join(sorted({k for r in rows for k in r}))})")
    pcol = pick_column([{k: v for k, v in r.items() if k != "checks"} for r in rows], prompt_column, _PROMPT_COLUMNS,
                       source, what="prompt", hint="choose with prompt_column=NAME")
    out: list[InstructionItem] = []
    for i, r in enumerate(rows, start=1):
        where = f"{source}, row {i}"
        prompt, checks = r.get(pcol), r.get("checks")
        if not isinstance(prompt, str) or not prompt.strip():
            raise DataError(f"{where}: empty or non-text {pcol!r}")
        if isinstance(checks, str):
            try:
                checks = json.loads(checks)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: 'checks' is not valid JSON ({e.msg})") from None
        if not isinstance(checks, list) or not checks:
            raise DataError(f"{where}: 'checks' must be a non-empty list of {{\"type\": ...}} objects")
        iid = str(r.get("id") or stable_id(prompt.strip(), prefix="instr-"))
        validate_checks(checks, iid)
        out.append(InstructionItem(id=iid, prompt=prompt.strip(), checks=tuple(dict(c) for c in checks)))
    return out
