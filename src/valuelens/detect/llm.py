"""Value detection by prompting an instruction-tuned LLM: zero/few-shot, with or without step-by-step reasoning.

>>> from valuelens.detect.llm import parse_categories
>>> labels, info = parse_categories("Answer: Security: personal, benevolence - caring")
>>> [i for i, v in enumerate(labels) if v], info["ok"]
([8, 14], True)

Prompt. The system prompt lists the 20 ValueEval'23 level-2 categories, numbered, each with a short description
(its level-1 values from the dataset's ``value-categories.json`` when that file is in the data folder, else the
name alone), the few-shot examples if any, and the answer format. The user message holds one argument
(conclusion, stance, premise). Keeping everything that does not depend on the argument in the system prompt lets
an OpenAI-compatible server (llama.cpp) reuse its cached prefix across arguments.

Few-shot examples (``shots=k``) come from the training split with a fixed seed, balanced over categories: the
categories are visited in a seeded random order and for each one an argument having it (preferring short
arguments with at most three labels) is drawn, so k examples cover k different categories when k ≤ 20.

Chain of thought (``cot=True``): the model is asked to reason in a few sentences and then write a final line
``Answer: <categories>``; only the text after the last ``Answer:`` marker is parsed (the last line when the
model wrote no marker, which is counted in the stats).

Parsing (:func:`parse_categories`) accepts category names in any case, with any punctuation between their words
("self direction - thought", "Security (personal)"), the reversed form ("personal security"), JSON lists,
numbered or bulleted lists, bare category numbers from the prompt's list, near-misses (difflib ratio ≥ 0.8) and
"None". A bare parent name with several sub-categories ("Security", "Universalism") is read as all of them: the
model named the value without choosing a sub-category. Answers from which nothing can be read are **unparsable**:
they predict no category, and are counted in :attr:`LLMDetector.stats` and :meth:`LLMDetector.describe` rather
than silently treated as "no values".
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..backends import ChatBackend, ChatRequest, make_backend
from ..errors import ConfigError, DataError
from ..values import VALUEEVAL_CATEGORIES
from .data import Argument, ValueEvalSplit, default_data_dir, load_split

__all__ = [
    "LLMDetector",
    "build_system_prompt",
    "category_descriptions",
    "find_data_dir",
    "make_backend",
    "parse_categories",
    "select_examples",
]

N_CAT = len(VALUEEVAL_CATEGORIES)


# --------------------------------------------------------------------------------------------------------------
# Data and prompts


def find_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path | None:
    """The ValueEval'23 folder: ``data_dir``, else ``$VALUELENS_DATA/valueeval23`` / the download cache, else
    ``../shared/data/valueeval23`` next to the working directory (as ``valuelens detect`` does); None if absent."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    for d in (default_data_dir(), Path.cwd().parent / "shared" / "data" / "valueeval23"):
        if (d / "arguments-training.tsv").exists() or (d / "value-categories.json").exists():
            return d
    return None


def category_descriptions(data_dir: str | os.PathLike[str] | None = None) -> dict[str, str]:
    """Category → short description: its level-1 values from ``value-categories.json`` ("Be creative; Be
    curious; …"), or "" for every category when the file is not available."""
    d = find_data_dir(data_dir)
    path = d / "value-categories.json" if d is not None else None
    out = dict.fromkeys(VALUEEVAL_CATEGORIES, "")
    if path is None or not path.is_file():
        return out
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    for c in VALUEEVAL_CATEGORIES:
        entry = data.get(c)
        if isinstance(entry, dict):
            out[c] = "; ".join(str(k) for k in entry)
    return out


def select_examples(train: ValueEvalSplit, k: int, seed: int = 0) -> list[int]:
    """Indices of ``k`` training arguments, balanced over categories (see the module notes)."""
    if k <= 0:
        return []
    if train.labels is None:
        raise DataError("few-shot examples need a labelled training split")
    labels = np.asarray(train.labels)
    rng = np.random.default_rng(seed)
    n_lab = labels.sum(1)
    lengths = np.array([len(a.text()) for a in train.arguments])
    short = (n_lab >= 1) & (n_lab <= 3) & (lengths <= 320)
    chosen: list[int] = []
    order = list(rng.permutation(N_CAT))
    while len(chosen) < min(k, len(train)):
        progressed = False
        for c in order:
            if len(chosen) >= k:
                break
            has = labels[:, c] == 1
            free = np.ones(len(train), dtype=bool)
            free[chosen] = False
            pool = np.flatnonzero(has & short & free)
            if pool.size == 0:
                pool = np.flatnonzero(has & free)
            if pool.size == 0:
                continue
            chosen.append(int(rng.choice(pool)))
            progressed = True
        if not progressed:  # no labelled argument left for any category: fill with any remaining ones
            rest = [i for i in rng.permutation(len(train)) if i not in chosen]
            chosen.extend(int(i) for i in rest[:k - len(chosen)])
            break
    return chosen


def _argument_block(a: Argument) -> str:
    if not a.conclusion and not a.stance:
        return f"Text: {a.premise}"
    return f"Conclusion: {a.conclusion}\nStance: {a.stance}\nPremise: {a.premise}"


def _answer_of(labels: np.ndarray) -> str:
    names = [VALUEEVAL_CATEGORIES[j] for j in np.flatnonzero(labels)]
    return ", ".join(names) if names else "None"


def build_system_prompt(descriptions: dict[str, str], examples: Sequence[tuple[Argument, np.ndarray]] = (),
                        cot: bool = False) -> str:
    lines = ["You identify the human values that an argument draws on. An argument is a premise that argues in "
             "favor of or against a conclusion. The value categories are:"]
    for i, c in enumerate(VALUEEVAL_CATEGORIES, start=1):
        d = descriptions.get(c, "")
        lines.append(f"{i}. {c}" + (f" ({d})" if d else ""))
    lines.append("")
    if cot:
        lines.append("First think step by step in at most three short sentences about what the premise appeals "
                     "to. Then write a last line that starts with 'Answer:' followed by the names of the value "
                     "categories the argument draws on, separated by commas, or 'Answer: None'.")
    else:
        lines.append("Reply with the names of the value categories the argument draws on, separated by commas "
                     "(usually one to three), or None. Write nothing else.")
    if examples:
        lines += ["", "Examples:"]
        for a, lab in examples:
            lines += ["", _argument_block(a), f"Answer: {_answer_of(lab)}"]
    return "\n".join(lines)


def build_user_prompt(a: Argument, cot: bool = False) -> str:
    tail = ("Think step by step, then give the final line 'Answer: ...'." if cot
            else "Which value categories does this argument draw on?")
    return f"{_argument_block(a)}\n\n{tail}"


# --------------------------------------------------------------------------------------------------------------
# Parsing


def _norm(s: str) -> str:
    return re.sub(r"[^a-z0-9]", "", s.lower())


def _words(c: str) -> list[str]:
    return re.findall(r"[a-z]+", c.lower())


def _name_pattern(words: Sequence[str]) -> str:
    return r"(?<![a-z])" + r"[\W_]*".join(re.escape(w) for w in words) + r"(?![a-z])"


_PATTERNS: list[tuple[int, re.Pattern[str]]] = []
for _j, _c in enumerate(VALUEEVAL_CATEGORIES):
    _w = _words(_c)
    _PATTERNS.append((_j, re.compile(_name_pattern(_w), re.I)))
    if ":" in _c:  # reversed form: "personal security", "caring benevolence"
        _parent, _sub = (_words(p) for p in _c.split(":", 1))
        _PATTERNS.append((_j, re.compile(_name_pattern(_sub + _parent), re.I)))
        _PATTERNS.append((_j, re.compile(r"(?<![a-z])" + r"[\W_]*".join(map(re.escape, _parent))
                                         + r"\W*\(\W*" + r"\W*".join(map(re.escape, _sub)) + r"\W*\)", re.I)))

_PARENTS: dict[str, list[int]] = {}
_SUBS: dict[str, list[int]] = {}
for _j, _c in enumerate(VALUEEVAL_CATEGORIES):
    if ":" in _c:
        _p, _s = _c.split(":", 1)
        _PARENTS.setdefault(_norm(_p), []).append(_j)
        _SUBS.setdefault(_norm(_s), []).append(_j)
_FULL_NORM = {_norm(c): j for j, c in enumerate(VALUEEVAL_CATEGORIES)}
_FUZZY_KEYS = {**_FULL_NORM, **{k: v[0] for k, v in _SUBS.items() if len(v) == 1}}
_PARENT_RE = re.compile(r"(?<![a-z])(" + "|".join(
    r"[\W_]*".join(map(re.escape, _words(p))) for p in ("self-direction", "power", "security", "conformity",
                                                          "benevolence", "universalism")) + r")(?![a-z])", re.I)

_NONE_RE = re.compile(r"^\W*(none|no values?|no categor(y|ies)|nothing|n/?a|\[\s*\])\W*$", re.I)
_MARKER_RE = re.compile(r"(?:final\s+answer|answer|categories|values?)\s*(?:is|are)?\s*[:=]", re.I)
_BULLET_RE = re.compile(r"^\s*(?:[-*•]+|\(?\d{1,2}[.)]|\d{1,2}\s*[-:])\s*")


def _answer_section(text: str, cot: bool) -> tuple[str, bool]:
    """The part of ``text`` that holds the answer, and whether an explicit marker was found."""
    marks = list(_MARKER_RE.finditer(text))
    if marks:
        return text[marks[-1].end():].strip(), True
    if cot:
        lines = [ln for ln in text.strip().splitlines() if ln.strip()]
        return (lines[-1] if lines else ""), False
    return text.strip(), False


def _from_json(section: str) -> list[int] | None:
    m = re.search(r"\[[^\[\]]*\]", section, re.S)
    if not m:
        return None
    try:
        items = json.loads(m.group(0))
    except json.JSONDecodeError:
        return None
    if not isinstance(items, list):
        return None
    found: list[int] = []
    for it in items:
        if isinstance(it, int) and not isinstance(it, bool) and 1 <= it <= N_CAT:
            found.append(it - 1)
        elif isinstance(it, str):
            found.extend(_match_item(it))
    return found


def _match_item(item: str) -> list[int]:
    """Categories named by one short list item (a name, sub-name, parent, number or near-miss)."""
    hits = [j for j, p in _PATTERNS if p.search(item)]
    if hits:
        return sorted(set(hits))
    key = _norm(_BULLET_RE.sub("", item))
    if not key:
        return []
    if key.isdigit():
        n = int(key)
        return [n - 1] if 1 <= n <= N_CAT else []
    if key in _FUZZY_KEYS:
        return [_FUZZY_KEYS[key]]
    if key in _PARENTS:
        return list(_PARENTS[key])
    close = difflib.get_close_matches(key, list(_FUZZY_KEYS), n=1, cutoff=0.8)
    if close:
        return [_FUZZY_KEYS[close[0]]]
    close = difflib.get_close_matches(key, list(_PARENTS), n=1, cutoff=0.85)
    if close:
        return list(_PARENTS[close[0]])
    return []


def parse_categories(text: str, cot: bool = False) -> tuple[np.ndarray, dict[str, Any]]:
    """Read the categories named in an LLM answer: ``(labels int [20], info)``.

    ``info``: ``ok`` (something was read, or an explicit None), ``none`` (the model said None), ``marker``
    (an ``Answer:`` marker was found), ``unmatched`` (list items that named no category).
    """
    labels = np.zeros(N_CAT, dtype=np.int64)
    info: dict[str, Any] = {"ok": False, "none": False, "marker": False, "unmatched": []}
    if not isinstance(text, str) or not text.strip():
        return labels, info
    section, info["marker"] = _answer_section(text, cot)
    # Stop at a blank line after the answer (models sometimes add an explanation after it).
    section = re.split(r"\n\s*\n", section.strip(), maxsplit=1)[0] if section.strip() else section
    if _NONE_RE.match(section) or re.match(r"^\W*none\b", section, re.I):
        info["ok"] = info["none"] = True
        return labels, info
    found: list[int] = []
    js = _from_json(section)
    if js is not None:
        found.extend(js)
    # Full names anywhere in the section (prose or list), then short leftover items one by one.
    rest = section
    for j, p in _PATTERNS:
        if p.search(rest):
            found.append(j)
            rest = p.sub(" ; ", rest)
    items = [s.strip() for s in re.split(r"[,;\n]|\band\b|\bor\b|/", rest)]
    items = [s for s in items if _norm(s)]
    numbers: list[int] = []
    for it in items:
        bare = _BULLET_RE.sub("", it).strip()
        if not _norm(bare):
            continue  # only a bullet or a list number remained
        if _norm(bare).isdigit():
            numbers.extend(_match_item(bare))
            continue
        if len(bare.split()) > 4:
            # Prose: only parent names count (e.g. "it appeals to security").
            found.extend(j for m in _PARENT_RE.finditer(bare) for j in _PARENTS[_norm(m.group(1))])
            continue
        got = _match_item(bare)
        if got:
            found.extend(got)
        else:
            info["unmatched"].append(bare[:60])
    if not found and numbers:  # bare numbers only count when no name was given (they may be list numbering)
        found = numbers
    for j in set(found):
        labels[j] = 1
    info["ok"] = bool(found)
    return labels, info


# --------------------------------------------------------------------------------------------------------------
# Detector


class LLMDetector:
    """Detect the 20 ValueEval categories by prompting a chat backend.

    ``backend``: a :class:`~valuelens.backends.ChatBackend` or a spec (``local:smollm2``,
    ``openai:URL#model``). ``shots``: number of training examples in the prompt. ``cot``: reason first.
    ``train``: a labelled split (or it is loaded from ``data_dir`` / the default data folder when
    ``shots > 0``). ``max_tokens`` defaults to 48 (direct) or 160 (CoT).
    """

    def __init__(self, backend: ChatBackend | str, shots: int = 0, cot: bool = False, *,
                 train: ValueEvalSplit | None = None, data_dir: str | os.PathLike[str] | None = None,
                 seed: int = 0, max_tokens: int | None = None, temperature: float = 0.0) -> None:
        if shots < 0:
            raise ConfigError("shots must be >= 0")
        self.backend = make_backend(backend) if isinstance(backend, str) else backend
        self.shots = shots
        self.cot = cot
        self.seed = seed
        self.temperature = temperature
        self.max_tokens = max_tokens or (160 if cot else 48)
        folder = find_data_dir(data_dir)
        self.descriptions = category_descriptions(folder)
        self.example_ids: list[str] = []
        examples: list[tuple[Argument, np.ndarray]] = []
        if shots > 0:
            if train is None:
                if folder is None:
                    raise DataError("few-shot prompting needs the ValueEval'23 training split: pass data_dir= or "
                                    "run `valuelens detect download`")
                train = load_split(folder, "training")
            assert train.labels is not None
            idx = select_examples(train, shots, seed)
            examples = [(train.arguments[i], train.labels[i]) for i in idx]
            self.example_ids = [train.arguments[i].id for i in idx]
        self.system_prompt = build_system_prompt(self.descriptions, examples, cot=cot)
        self.stats: dict[str, int] = {"n": 0, "unparsable": 0, "none": 0, "no_marker": 0, "length_cut": 0,
                                      "unmatched_items": 0, "labels": 0}
        self.last_raw: list[dict[str, Any]] = []

    def requests(self, arguments: Sequence[Argument]) -> list[ChatRequest]:
        return [ChatRequest(user=build_user_prompt(a, self.cot), system=self.system_prompt,
                            max_tokens=self.max_tokens, temperature=self.temperature, seed=self.seed)
                for a in arguments]

    def predict(self, arguments: Sequence[Argument]) -> np.ndarray:
        """0/1 predictions ``[N, 20]`` (int64). Unparsable answers give a zero row and are counted in ``stats``;
        the raw answers of the last call are in ``last_raw``."""
        args = list(arguments)
        if not args:
            return np.zeros((0, N_CAT), dtype=np.int64)
        responses = self.backend.complete(self.requests(args))
        out = np.zeros((len(args), N_CAT), dtype=np.int64)
        self.last_raw = []
        for i, (a, r) in enumerate(zip(args, responses, strict=True)):
            labels, info = parse_categories(r.text, cot=self.cot)
            out[i] = labels
            self.stats["n"] += 1
            self.stats["unparsable"] += int(not info["ok"])
            self.stats["none"] += int(info["none"])
            self.stats["no_marker"] += int(self.cot and not info["marker"])
            self.stats["length_cut"] += int(r.finish_reason == "length")
            self.stats["unmatched_items"] += len(info["unmatched"])
            self.stats["labels"] += int(labels.sum())
            self.last_raw.append({"id": a.id, "text": r.text, "finish_reason": r.finish_reason, "ok": info["ok"],
                                  "unmatched": info["unmatched"]})
        return out

    def parse_stats(self) -> dict[str, Any]:
        n = max(self.stats["n"], 1)
        return {**self.stats, "unparsable_rate": self.stats["unparsable"] / n,
                "mean_labels": self.stats["labels"] / n}

    def describe(self) -> dict[str, Any]:
        return {"method": "llm", "backend": self.backend.describe(), "shots": self.shots, "cot": self.cot,
                "seed": self.seed, "max_tokens": self.max_tokens, "temperature": self.temperature,
                "example_ids": self.example_ids,
                "descriptions": "value-categories.json" if any(self.descriptions.values()) else "names only",
                "system_prompt_sha256": hashlib.sha256(self.system_prompt.encode()).hexdigest(),
                "parse": self.parse_stats()}
