"""Query pools and value system prompts: the shipped datasets and loaders for user files and conversation dumps.

Two datasets ship with the package (``valuelens/data/``, described in its ``README.md``):

* ``queries.jsonl`` — everyday user queries that invite value-laden answers (step 1 of the pipeline);
* ``system_prompts.jsonl`` — system prompts that ask the assistant to prioritise one Schwartz value
  (the *prompted* condition of step 2).

>>> qs = load_queries(limit=2)
>>> [q.id for q in qs]
['q0001', 'q0002']
>>> prompts = load_system_prompts(values=["power"])
>>> list(prompts), prompts["Power"][0].value
(['Power'], 'Power')

User data (docs/data.md) comes from a JSONL, JSON, CSV/TSV, Parquet or TXT file (by suffix; TXT is one query per
line), or from a Hugging Face dataset ``hf:owner/name`` (``hf:owner/name:config``) or a folder saved with
``datasets.save_to_disk`` (``hf:path/to/folder``); both need ``pip install datasets``. Rows are either plain
(a column of text) or conversations in the common dump formats — ShareGPT (``conversations`` of
``{"from", "value"}``), LMSYS-Chat (``conversation`` of ``{"role", "content"}``) and OpenAI ``messages`` — from
which the first user turn (or every user turn) is taken. :func:`load_query_pool` then drops empty, non-text and
over-long turns, optionally keeps one language, removes exact and near duplicates (normalised text; MinHash over
character 5-grams, verified by exact Jaccard) and draws a seeded sample, and returns a loading report (format,
column, counts dropped by each rule, duplicates, sample seed) that the run records in its manifest.

Format and column are detected when unambiguous; otherwise the error lists the candidates and the option that
chooses (``query_column`` / ``query_format``). Every error a user can cause names the file (and the line or
row when it is about one line) on one line: :class:`~valuelens.errors.DataError`, or
:class:`~valuelens.errors.ConfigError` for unknown value names and bad options.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import random
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ConfigError, DataError
from .values import VALUE_NAMES, get_value, resolve_values

__all__ = [
    "DEDUP_MODES",
    "QUERIES_FILE",
    "QUERY_FORMATS",
    "SYSTEM_PROMPTS_FILE",
    "TEXT_COLUMNS",
    "TURNS",
    "NearDuplicateFilter",
    "Query",
    "QueryOptions",
    "QueryPool",
    "SystemPrompt",
    "data_path",
    "detect_language",
    "languages",
    "load_queries",
    "load_query_pool",
    "load_system_prompts",
    "load_texts",
    "normalise_text",
    "pick_column",
    "read_table",
    "shingle_jaccard",
    "source_label",
    "stable_id",
]

QUERIES_FILE = "queries.jsonl"
SYSTEM_PROMPTS_FILE = "system_prompts.jsonl"

_JSONL_SUFFIXES = {".jsonl", ".ndjson"}
_JSON_SUFFIXES = {".json"}
_CSV_SUFFIXES = {".csv", ".tsv"}
_PARQUET_SUFFIXES = {".parquet", ".pq"}
_TXT_SUFFIXES = {".txt"}
_SUPPORTED = sorted(_JSONL_SUFFIXES | _JSON_SUFFIXES | _CSV_SUFFIXES | _PARQUET_SUFFIXES | _TXT_SUFFIXES)

#: Query formats: ``auto`` detects; ``plain`` is a column of text; the others are conversation dumps.
QUERY_FORMATS: tuple[str, ...] = ("auto", "plain", "sharegpt", "lmsys", "openai")
#: Which user turns of a conversation become queries.
TURNS: tuple[str, ...] = ("first", "all")
#: Duplicate removal: ``near`` (exact + MinHash near-duplicates), ``exact`` (normalised text), ``none``.
DEDUP_MODES: tuple[str, ...] = ("near", "exact", "none")

#: Column names read as the query text when detecting (case-insensitive); two of them in one file is ambiguous.
TEXT_COLUMNS: tuple[str, ...] = ("text", "query", "prompt", "question", "instruction", "input", "request",
                                 "message", "user", "utterance", "content")
_ID_COLUMNS = ("id", "conversation_id", "conv_id", "question_id", "prompt_id", "uid", "_id")
# Conversation formats: (default column, role key, content key).
_CONV_FORMATS = {"sharegpt": ("conversations", "from", "value"), "lmsys": ("conversation", "role", "content"),
                 "openai": ("messages", "role", "content")}
_ROLE_KEYS = ("role", "from", "speaker", "author")
_CONTENT_KEYS = ("content", "value", "text", "message")
_USER_ROLES = frozenset({"user", "human", "prompter", "usr"})
_DETECT_ROWS = 1000  # rows looked at to detect columns (files are read whole anyway)
_QUERY_HINT = "choose with --query-column NAME (or --set query_column=NAME)"
_FORMAT_HINT = "choose with --query-format FORMAT (or --set query_format=FORMAT)"


@dataclass(frozen=True)
class Query:
    """One user query.

    ``values_hint`` lists (canonical names of) the values the query most invites; it is a hint for sampling
    and reporting only, never a label — the judge decides what a response expresses. Empty for neutral
    queries and for user data without a hint column.
    """

    id: str
    text: str
    topic: str = ""
    values_hint: tuple[str, ...] = ()


@dataclass(frozen=True)
class SystemPrompt:
    """A system prompt asking the assistant to prioritise one value (canonical name in ``value``)."""

    id: str
    value: str
    text: str
    style: str = ""


# --------------------------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class _Row:
    where: str  # "path, line 12" / "path, row 3": used as the prefix of error messages
    data: dict[str, Any]


def data_path(name: str) -> Path:
    """Filesystem path of a file shipped in ``valuelens/data`` (found with :mod:`importlib.resources`).

    Raises :class:`DataError` if the package does not contain it.
    """
    ref = resources.files("valuelens").joinpath("data").joinpath(name)
    if not ref.is_file():
        raise DataError(f"shipped data file {name!r} is missing from the valuelens package (broken install?)")
    # The package is installed from a directory (wheel or editable), so the resource is a real file.
    return Path(str(ref))


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    if path.suffix.lower() not in set(_SUPPORTED):
        raise DataError(f"{path}: unsupported file type {path.suffix or '(none)'!r}; use one of {', '.join(_SUPPORTED)}")


def _read_jsonl(path: Path) -> list[_Row]:
    rows: list[_Row] = []
    with path.open(encoding="utf-8-sig") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            rows.append(_Row(where, obj))
    return rows


def _read_json(path: Path) -> list[_Row]:
    text = path.read_text(encoding="utf-8-sig")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return _read_jsonl(path)  # JSON Lines saved with a .json suffix
    if isinstance(obj, dict):
        return [_Row(f"{path}, line 1", obj)]
    if not isinstance(obj, list):
        raise DataError(f"{path}, line 1: expected a JSON array of objects, got {type(obj).__name__}")
    rows = []
    for i, item in enumerate(obj, start=1):
        if not isinstance(item, dict):
            raise DataError(f"{path}, item {i}: expected a JSON object, got {type(item).__name__}")
        rows.append(_Row(f"{path}, item {i}", item))
    return rows


def _read_csv(path: Path) -> list[_Row]:
    rows: list[_Row] = []
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        start = 2  # line 1 is the header
        try:
            for rec in reader:
                where = f"{path}, line {start}"
                start = reader.line_num + 1
                if None in rec:
                    raise DataError(f"{where}: more fields than the header has columns")
                if all(v is None or not str(v).strip() for v in rec.values()):
                    continue
                rows.append(_Row(where, {k: v for k, v in rec.items() if k is not None}))
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: invalid CSV ({_one_line(e)})") from None
    return rows


def _read_parquet(path: Path) -> list[_Row]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: cannot read Parquet file ({_one_line(e)})") from None
    return [_Row(f"{path}, row {i}", rec) for i, rec in enumerate(table.to_pylist(), start=1)]


def _read_txt(path: Path) -> list[_Row]:
    """One query per non-blank line (a query with line breaks needs JSONL, CSV or Parquet)."""
    with path.open(encoding="utf-8-sig") as f:
        return [_Row(f"{path}, line {n}", {"text": line.rstrip("\r\n")})
                for n, line in enumerate(f, start=1) if line.strip()]


def _read_rows(path: str | Path) -> list[_Row]:
    path = Path(path).expanduser()
    _check_file(path)
    suffix = path.suffix.lower()
    try:
        if suffix in _JSONL_SUFFIXES:
            rows = _read_jsonl(path)
        elif suffix in _JSON_SUFFIXES:
            rows = _read_json(path)
        elif suffix in _CSV_SUFFIXES:
            rows = _read_csv(path)
        elif suffix in _TXT_SUFFIXES:
            rows = _read_txt(path)
        else:
            rows = _read_parquet(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({_one_line(e)})") from None
    if not rows:
        raise DataError(f"{path}: no rows (empty file)")
    return rows


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL, JSON, CSV/TSV, Parquet or TXT file (chosen by suffix) into a list of row dicts.

    JSONL: one object per line, blank lines skipped. CSV: first line is the header, all values are strings,
    blank rows skipped. Parquet: one dict per row with Python values. TXT: ``{"text": line}`` per non-blank
    line. Raises :class:`DataError` naming the file (and line) for a missing file, an unsupported suffix, an
    empty file or a malformed line.
    """
    return [r.data for r in _read_rows(path)]


def _hf_rows(spec: str, split: str, limit: int | None) -> tuple[str, list[_Row], dict[str, Any]]:
    """Rows of ``hf:owner/name[:config]`` (the Hub, or its cache) or ``hf:FOLDER`` (``save_to_disk`` output,
    or a folder of data files)."""
    target = spec[3:].strip()
    if not target:
        raise ConfigError(f"{spec!r}: give a Hugging Face dataset as hf:owner/name (or hf:owner/name:config), "
                          "or hf:FOLDER for a dataset saved with save_to_disk")
    try:
        import datasets as hf_datasets
    except ImportError:
        raise ConfigError(
            f"{spec}: reading a Hugging Face dataset needs the 'datasets' library; run `pip install datasets`"
        ) from None
    folder = Path(target).expanduser()
    info: dict[str, Any] = {}
    try:
        if folder.is_dir():
            info["hf_source"] = "folder"
            try:
                ds = hf_datasets.load_from_disk(str(folder))
            except FileNotFoundError:  # not a save_to_disk folder: a folder of data files
                ds = hf_datasets.load_dataset(str(folder), split=split)
            if isinstance(ds, hf_datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"{spec}: no split {split!r} (splits: {', '.join(ds)}); "
                                    "choose with --set query_split=NAME")
                ds = ds[split]
        else:
            if target.startswith((".", "/", "~")):
                raise DataError(f"{spec}: folder not found")
            name, _, config = target.partition(":")
            info["hf_source"] = "hub"
            ds = hf_datasets.load_dataset(name, config or None, split=split)
    except DataError:
        raise
    except Exception as e:  # network, missing dataset, missing split, bad config: all user-facing
        raise DataError(f"{spec} (split {split!r}): cannot load Hugging Face dataset ({_one_line(e)})") from None
    info["fingerprint"] = getattr(ds, "_fingerprint", None)
    info["split"] = split
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    rows = [_Row(f"{spec} [{split}], row {i}", dict(rec)) for i, rec in enumerate(ds, start=1)]
    if not rows:
        raise DataError(f"{spec} (split {split!r}): no rows (empty dataset)")
    return spec, rows, info


def source_label(source: str | Path | None) -> str:
    """How a query source is named in messages and reports."""
    if source is None:
        return f"shipped {QUERIES_FILE}"
    return str(source)


def _source_rows(source: str | Path | None, split: str, limit: int | None,
                 default: str = QUERIES_FILE) -> tuple[str, list[_Row], dict[str, Any]]:
    """Read every row of a source: the shipped file ``default`` (``None``), ``hf:…`` or a file path."""
    if isinstance(source, str) and source.startswith("hf:"):
        return _hf_rows(source, split, limit)
    path = data_path(default) if source is None else Path(source).expanduser()
    if (isinstance(source, str) and not path.exists() and source.count("/") == 1
            and path.suffix.lower() not in _SUPPORTED):
        raise DataError(f"{path}: file not found (for a Hugging Face dataset write hf:{source})")
    rows = _read_rows(path)
    if limit is not None:
        rows = rows[:limit]
    info = {"file_type": path.suffix.lower().lstrip("."), "sha256": _sha256(path), "bytes": path.stat().st_size}
    return str(path), rows, info


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            h.update(block)
    return h.hexdigest()


# --------------------------------------------------------------------------------------------- helpers


def stable_id(text: str, prefix: str = "q-") -> str:
    """A deterministic id for a text: ``prefix`` + the first 12 hex digits of its SHA-1 (UTF-8)."""
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _columns(rows: Sequence[_Row]) -> list[str]:
    """Column names in first-seen order (CSV and Parquet rows all share the header)."""
    seen: dict[str, None] = {}
    for r in rows[:_DETECT_ROWS]:
        for k in r.data:
            seen.setdefault(str(k), None)
    return list(seen)


def _first_value(rows: Sequence[_Row], column: str) -> Any:
    for r in rows[:_DETECT_ROWS]:
        v = r.data.get(column)
        if not _is_missing(v) and v != "":
            return v
    return None


def _require_column(rows: Sequence[_Row], column: str, source: str, hint: str = "") -> None:
    """A column is missing when no row has it."""
    if not any(column in r.data for r in rows):
        cols = _columns(rows)
        raise DataError(f"{source}: no column {column!r} (columns: {', '.join(map(str, cols)) or 'none'})"
                        + (f"; {hint}" if hint else ""))


def pick_column(rows: Sequence[dict[str, Any]] | Sequence[_Row], column: str, candidates: Sequence[str],
                source: str, *, what: str = "text", hint: str = "", fallback: bool = True) -> str:
    """The column of ``rows`` to read ``what`` from: ``column`` itself (which must exist) or, for ``"auto"``,
    the one column among ``candidates`` (case-insensitive) that holds strings.

    No candidate falls back (``fallback``) to the only string column that is not an id; none or several is a
    :class:`DataError` listing the columns or the candidates, with ``hint`` (how to choose).
    """
    rws = [r if isinstance(r, _Row) else _Row(source, r) for r in rows]
    if column != "auto":
        _require_column(rws, column, source, hint)
        return column
    cols = _columns(rws)
    lower = {c.lower() for c in candidates}
    found = [c for c in cols if c.lower() in lower and isinstance(_first_value(rws, c), str)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DataError(f"{source}: ambiguous {what} column, candidates: {', '.join(found)}; {hint}")
    strings = [c for c in cols if c.lower() not in _ID_COLUMNS and isinstance(_first_value(rws, c), str)]
    if fallback and len(strings) == 1:
        return strings[0]
    raise DataError(f"{source}: no {what} column (columns: {', '.join(cols) or 'none'}); {hint}")


def _text(row: _Row, column: str) -> str:
    if column not in row.data:
        raise DataError(f"{row.where}: missing {column!r}")
    v = row.data[column]
    if _is_missing(v):
        raise DataError(f"{row.where}: empty {column!r}")
    if not isinstance(v, str):
        raise DataError(f"{row.where}: {column!r} must be a string, got {type(v).__name__}")
    v = v.strip()
    if not v:
        raise DataError(f"{row.where}: empty {column!r}")
    return v


def _optional_str(row: _Row, key: str) -> str:
    v = row.data.get(key)
    if _is_missing(v):
        return ""
    if isinstance(v, bool) or not isinstance(v, str | int):
        raise DataError(f"{row.where}: {key!r} must be a string, got {type(v).__name__}")
    return str(v).strip()


def _canonical(name: str, where: str) -> str:
    try:
        return get_value(name).name
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def _values_hint(row: _Row) -> tuple[str, ...]:
    """``values_hint`` as a list, a JSON list string, or a string separated by ``;``, ``|`` or ``,``."""
    v = row.data.get("values_hint")
    if _is_missing(v):
        return ()
    if isinstance(v, str):
        s = v.strip()
        if s.startswith("["):
            try:
                v = json.loads(s)
            except json.JSONDecodeError:
                raise DataError(f"{row.where}: 'values_hint' is not a valid JSON list: {_one_line(s)}") from None
        else:
            for sep in (";", "|", ","):
                if sep in s:
                    v = s.split(sep)
                    break
            else:
                v = [s] if s else []
    if not isinstance(v, list | tuple) or not all(isinstance(x, str) for x in v):
        raise DataError(f"{row.where}: 'values_hint' must be a list of value names")
    out: list[str] = []
    for name in v:
        if name.strip():
            c = _canonical(name.strip(), row.where)
            if c not in out:
                out.append(c)
    return tuple(out)


def _check_limit(limit: int | None, name: str = "limit") -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"{name} must be a positive integer or None, got {limit!r}")


# --------------------------------------------------------------------------------------------- text filters


def normalise_text(text: str) -> str:
    """The key of exact deduplication: NFKC, case-folded, every run of punctuation/space/underscore → one space.

    "How do I plan a wedding?" and "how do i plan a  wedding" have the same key.
    """
    t = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[\W_]+", " ", t).split())


_MERSENNE = (1 << 31) - 1
_BASE = 1_000_003  # polynomial hash of k code points, mod the Mersenne prime


def _shingles(text: str, k: int) -> np.ndarray:
    """Character k-grams of the normalised text as sorted unique 31-bit hashes (a polynomial rolling hash over
    code points, vectorised; the same in every process). A text shorter than k is one gram."""
    t = normalise_text(text)
    cp = np.frombuffer(t.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
    n = max(1, len(cp) - k + 1)
    h = np.zeros(n, dtype=np.uint64)
    for j in range(min(k, len(cp))):  # code points < 2^21 and h < 2^31: no uint64 overflow
        h = (h * _BASE + cp[j:j + n]) % _MERSENNE
    return np.unique(h)


def _jaccard(a: np.ndarray, b: np.ndarray) -> float:
    inter = len(np.intersect1d(a, b, assume_unique=True))
    return inter / max(1, len(a) + len(b) - inter)


def shingle_jaccard(a: str, b: str, k: int = 5) -> float:
    """Jaccard similarity of two texts' character k-gram sets (after :func:`normalise_text`)."""
    return _jaccard(_shingles(a, k), _shingles(b, k))




class NearDuplicateFilter:
    """Greedy near-duplicate removal in input order: MinHash LSH finds candidates, exact Jaccard decides.

    Each text is shingled into character ``k``-grams of its normalised form (works for any script, robust to
    case, punctuation and small edits). Its MinHash signature (``bands × rows`` universal hash functions, fixed
    seed, multiply-shift) is cut into ``bands`` bands; texts sharing a band with an earlier *kept* text are candidates, and a
    candidate whose exact shingle Jaccard is ≥ ``threshold`` makes the new text a duplicate. With 20 bands of 5
    rows a pair at Jaccard 0.8 becomes a candidate with probability 1 − (1 − 0.8⁵)²⁰ ≈ 0.9996 (0.975 at 0.7), so
    misses are rare; there are no false positives (every removal is verified). Memory: the signature bands of
    the kept texts and their texts (signatures are not stored whole; candidates are re-shingled).

    >>> f = NearDuplicateFilter(threshold=0.8)
    >>> f.add("How do I plan a wedding on a budget?"), f.add("how do I plan a wedding on a budget??")
    (None, 0)
    """

    def __init__(self, threshold: float = 0.8, *, k: int = 5, bands: int = 20, rows: int = 5, seed: int = 1) -> None:
        if not 0 < threshold <= 1:
            raise ConfigError(f"near-duplicate threshold must be in (0, 1], got {threshold!r}")
        self.threshold, self.k, self.bands, self.rows = threshold, k, bands, rows
        rng = np.random.default_rng(seed)
        n = bands * rows
        # Multiply-shift hashing (a odd): h(x) = (a·x + b mod 2^64) >> 32, no modulo needed.
        self._a = rng.integers(0, 1 << 63, size=(n, 1), dtype=np.uint64) * np.uint64(2) + np.uint64(1)
        self._b = rng.integers(0, 1 << 63, size=(n, 1), dtype=np.uint64)
        self._buckets: dict[bytes, list[int]] = {}
        self.kept: list[str] = []

    def signature(self, shingles: np.ndarray) -> np.ndarray:
        with np.errstate(over="ignore"):  # uint64 arithmetic wraps modulo 2^64 by design here
            return ((self._a * shingles[None, :] + self._b) >> np.uint64(32)).min(axis=1).astype(np.uint32)

    def add(self, text: str) -> int | None:
        """Keep ``text`` and return None, or return the index (in :attr:`kept`) of the kept text it duplicates."""
        sh = _shingles(text, self.k)
        sig = self.signature(sh)
        keys = [bytes([b % 256, b // 256]) + sig[b * self.rows:(b + 1) * self.rows].tobytes()
                for b in range(self.bands)]
        seen: set[int] = set()
        for key in keys:
            for j in self._buckets.get(key, ()):
                if j in seen:
                    continue
                seen.add(j)
                if _jaccard(sh, _shingles(self.kept[j], self.k)) >= self.threshold:
                    return j
        idx = len(self.kept)
        self.kept.append(text)
        for key in keys:
            self._buckets.setdefault(key, []).append(idx)
        return None


def _language_module() -> Any:
    # The instruction checker's heuristic (valuelens.evals.compliance): one language guess in the package.
    from .evals import compliance

    return compliance


def languages() -> tuple[str, ...]:
    """Languages :func:`detect_language` can return (besides ``"und"``, undetermined)."""
    c = _language_module()
    return ("ja", "ko", "zh", *sorted(c.LANGUAGE_STOPWORDS))


def detect_language(text: str) -> str:
    """A light language guess (:func:`valuelens.evals.compliance.detect_language`): ISO 639-1 code or ``"und"``.

    Hangul → ko, kana → ja, Han → zh when those scripts make up ≥ 30 % of the letters; otherwise a vote of
    function words for en, fr, es, de, it, pt (ties go to the first of that order). Limits (docs/data.md): other
    languages are "und" or mistaken for a listed one (Cyrillic or Arabic text without Latin function words is
    "und"); short texts without function words ("Hello!", code) are "und".
    """
    return _language_module().detect_language(text) or "und"


def _script_of(lang: str) -> str:
    return lang if lang in ("ja", "ko", "zh") else "latin"


# --------------------------------------------------------------------------------------------- query pools


@dataclass
class QueryOptions:
    """How :func:`load_query_pool` reads, filters, deduplicates and samples a query source.

    The run's config holds the same options with a ``query_`` prefix (``query_column``, ``query_turns``, …).
    """

    column: str = "auto"  # the text (or conversation) column; auto: detected
    format: str = "auto"  # auto | plain | sharegpt | lmsys | openai
    split: str = "train"  # split of a Hugging Face dataset
    turns: str = "first"  # first | all user turns of a conversation
    max_chars: int | None = 2000  # longer turns are dropped (None: no limit)
    dedup: str = "near"  # near | exact | none
    near_threshold: float = 0.8  # character 5-gram Jaccard at or above which a text is a near-duplicate
    language: str | None = None  # keep only this language (detect_language), None: all
    sample: int | None = None  # keep a seeded random sample of this many queries (after filters), None: all
    seed: int = 0
    limit: int | None = None  # read only the first `limit` rows of the source
    id_column: str = "auto"  # auto: the first of id, conversation_id, conv_id, … present; "" for hashes
    text_columns: tuple[str, ...] = TEXT_COLUMNS  # names detection looks for

    def validate(self) -> None:
        if self.format not in QUERY_FORMATS:
            raise ConfigError(f"query_format must be one of {', '.join(QUERY_FORMATS)}, got {self.format!r}")
        if self.turns not in TURNS:
            raise ConfigError(f"query_turns must be one of {', '.join(TURNS)}, got {self.turns!r}")
        if self.dedup not in DEDUP_MODES:
            raise ConfigError(f"query_dedup must be one of {', '.join(DEDUP_MODES)}, got {self.dedup!r}")
        if self.max_chars is not None and (isinstance(self.max_chars, bool) or not isinstance(self.max_chars, int)
                                           or self.max_chars < 1):
            raise ConfigError(f"query_max_chars must be a positive integer or null, got {self.max_chars!r}")
        if isinstance(self.near_threshold, bool) or not isinstance(self.near_threshold, int | float) \
                or not 0 < self.near_threshold <= 1:
            raise ConfigError(f"query_near_threshold must be in (0, 1], got {self.near_threshold!r}")
        if self.language is not None and self.language not in languages():
            raise ConfigError(f"query_language {self.language!r} is not one the heuristic detects; use one of "
                              f"{', '.join(languages())} or null")
        _check_limit(self.sample, "query_sample")
        _check_limit(self.limit, "query_limit")
        if not isinstance(self.column, str) or not self.column:
            raise ConfigError(f"query_column must be a column name or 'auto', got {self.column!r}")
        if not isinstance(self.split, str) or not self.split:
            raise ConfigError(f"query_split must be a split name, got {self.split!r}")


@dataclass
class QueryPool:
    """Loaded queries and the loading report (what was read, how, and what each rule removed)."""

    queries: list[Query]
    report: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Layout:
    format: str  # plain | sharegpt | lmsys | openai | conversation
    column: str
    role_key: str | None = None
    content_key: str | None = None


def _as_list(v: Any) -> Any:
    """A conversation stored as a JSON string (CSV cells) becomes a list; anything else passes through."""
    if isinstance(v, str) and v.lstrip().startswith("["):
        try:
            return json.loads(v)
        except json.JSONDecodeError:
            return v
    if isinstance(v, tuple):
        return list(v)
    return v


def _conversation_keys(v: Any) -> tuple[str, str] | None:
    """(role key, content key) when ``v`` looks like a list of chat messages."""
    v = _as_list(v)
    if not isinstance(v, list) or not v or not all(isinstance(m, dict) for m in v[:5]):
        return None
    keys = set().union(*(m.keys() for m in v[:5]))
    role = next((k for k in _ROLE_KEYS if k in keys), None)
    content = next((k for k in _CONTENT_KEYS if k in keys), None)
    return (role, content) if role and content else None


def _conversation_format(column: str, role: str, content: str) -> str:
    if (role, content) == ("from", "value"):
        return "sharegpt"
    if (role, content) == ("role", "content"):
        return {"conversation": "lmsys", "messages": "openai"}.get(column, "conversation")
    return "conversation"


def _detect_layout(rows: Sequence[_Row], opts: QueryOptions, source: str, file_type: str) -> _Layout:
    cols = _columns(rows)
    if file_type == "txt":
        if opts.column not in ("auto", "text") or opts.format not in ("auto", "plain"):
            raise ConfigError(f"{source}: a .txt file is one query per line; query_column and query_format "
                              "do not apply (use JSONL, CSV or Parquet for columns)")
        return _Layout("plain", "text")
    if opts.format in _CONV_FORMATS:
        default, role, content = _CONV_FORMATS[opts.format]
        column = default if opts.column == "auto" else opts.column
        _require_column(rows, column, source, _QUERY_HINT)
        keys = _conversation_keys(_first_value(rows, column))
        if keys != (role, content):
            found = "not a list of messages" if keys is None else f"messages with keys {keys[0]!r}/{keys[1]!r}"
            raise DataError(f"{source}: query_format {opts.format} expects {column!r} to hold messages with "
                            f"{role!r}/{content!r}, found {found}; {_FORMAT_HINT}")
        return _Layout(opts.format, column, role, content)
    if opts.column != "auto":
        _require_column(rows, opts.column, source, _QUERY_HINT)
        keys = None if opts.format == "plain" else _conversation_keys(_first_value(rows, opts.column))
        if keys is None:
            return _Layout("plain", opts.column)
        return _Layout(_conversation_format(opts.column, *keys), opts.column, *keys)
    conv = [] if opts.format == "plain" else [c for c in cols if _conversation_keys(_first_value(rows, c))]
    lower = {c.lower() for c in opts.text_columns}
    text = [c for c in cols if c.lower() in lower and isinstance(_first_value(rows, c), str)]
    cands = [(c, "conversation") for c in conv] + [(c, "text") for c in text]
    if not cands:
        strings = [c for c in cols if c.lower() not in _ID_COLUMNS and isinstance(_first_value(rows, c), str)]
        if len(strings) == 1:
            return _Layout("plain", strings[0])
        raise DataError(f"{source}: no query column found (columns: {', '.join(cols) or 'none'}); {_QUERY_HINT}")
    if len(cands) > 1:
        listed = ", ".join(f"{c} ({kind})" for c, kind in cands)
        raise DataError(f"{source}: ambiguous query column, candidates: {listed}; {_QUERY_HINT}")
    column, kind = cands[0]
    if kind == "text":
        return _Layout("plain", column)
    keys = _conversation_keys(_first_value(rows, column))
    assert keys is not None
    return _Layout(_conversation_format(column, *keys), column, *keys)


def _content_text(v: Any) -> tuple[str | None, str]:
    """(text, "") or (None, drop reason) for one turn's content."""
    if _is_missing(v):
        return None, "empty"
    if isinstance(v, str):
        return (v.strip(), "") if v.strip() else (None, "empty")
    # OpenAI content parts: text only when every part is text.
    if isinstance(v, list) and v and all(isinstance(p, dict) and p.get("type") in ("text", "input_text")
                                         and isinstance(p.get("text"), str) for p in v):
        t = "\n".join(p["text"] for p in v).strip()
        return (t, "") if t else (None, "empty")
    return None, "non_text"


def _row_turns(row: _Row, layout: _Layout, turns: str) -> tuple[list[tuple[int, Any]], str]:
    """The raw contents of the user turns to use, numbered from 1, or ([], reason)."""
    v = row.data.get(layout.column)
    if layout.format == "plain":
        return [(1, v)], ""
    conv = _as_list(v)
    if _is_missing(conv):
        return [], "empty"
    if not isinstance(conv, list):
        return [], "non_text"
    users = [m.get(layout.content_key) for m in conv
             if isinstance(m, dict) and str(m.get(layout.role_key, "")).strip().casefold() in _USER_ROLES]
    if not users:
        return [], "no_user_turn"
    numbered = list(enumerate(users, start=1))
    return (numbered[:1] if turns == "first" else numbered), ""


def _id_column(rows: Sequence[_Row], opts: QueryOptions, source: str) -> str:
    if opts.id_column != "auto":
        return opts.id_column  # "" disables ids from the file; a named column may be missing on some rows
    cols = {c.lower(): c for c in _columns(rows)}
    return next((cols[c] for c in _ID_COLUMNS if c in cols), "")


def load_query_pool(source: str | Path | None = None, options: QueryOptions | None = None,
                    **overrides: Any) -> QueryPool:
    """Load a pool of user queries with the loading report.

    Args:
        source: ``None`` for the shipped pool (``valuelens/data/queries.jsonl``); a JSONL, JSON, CSV/TSV,
            Parquet or TXT file; ``"hf:owner/name"`` (``"hf:owner/name:config"``) for a Hugging Face dataset,
            or ``"hf:FOLDER"`` for one saved with ``save_to_disk`` (both need the ``datasets`` library).
        options: :class:`QueryOptions`; ``overrides`` replace single fields (``column="prompt"``, ``sample=500``).

    Steps, each counted in ``report``: read rows (``limit``) → take the text column or the user turn(s) of each
    conversation → drop empty, non-text, conversations without a user turn, and turns over ``max_chars`` →
    language filter → exact duplicates (:func:`normalise_text`) → near duplicates
    (:class:`NearDuplicateFilter`) → seeded sample. Ids come from the id column (``<id>/<turn>`` for
    ``turns="all"``), else a stable hash of the text. Optional columns ``topic`` and ``values_hint`` are read
    for plain rows.

    Raises:
        DataError: missing/empty file, malformed line, no or ambiguous column (listing the candidates and the
            option that chooses), duplicate ids with different texts, nothing left after the filters.
        ConfigError: bad option, unknown value name in ``values_hint``, ``datasets`` not installed.
    """
    opts = replace(options or QueryOptions(), **overrides)
    opts.validate()
    label, rows, info = _source_rows(source, opts.split, opts.limit)
    file_type = info.get("file_type", "hf")
    layout = _detect_layout(rows, opts, label, file_type)
    id_col = _id_column(rows, opts, label)
    dropped = {"no_user_turn": 0, "empty": 0, "non_text": 0, "too_long": 0, "language": 0}
    lang_seen: dict[str, int] = {}
    undetermined_kept = 0
    cands: list[tuple[_Row, int, str]] = []  # (row, turn number, text)
    n_turns = 0
    for row in rows:
        turns, reason = _row_turns(row, layout, opts.turns)
        if reason:
            dropped[reason] += 1
            continue
        for k, raw in turns:
            n_turns += 1
            text, why = _content_text(raw)
            if text is None:
                dropped[why] += 1
                continue
            if opts.max_chars is not None and len(text) > opts.max_chars:
                dropped["too_long"] += 1
                continue
            if opts.language is not None:
                lang = detect_language(text)
                if lang == "und" and _script_of(opts.language) == "latin":
                    undetermined_kept += 1
                elif lang != opts.language:
                    dropped["language"] += 1
                    lang_seen[lang] = lang_seen.get(lang, 0) + 1
                    continue
            cands.append((row, k, text))

    n_exact = n_near = 0
    if opts.dedup != "none":
        first: dict[str, int] = {}
        unique = []
        for c in cands:
            key = normalise_text(c[2])
            if key in first:
                n_exact += 1
                continue
            first[key] = len(unique)
            unique.append(c)
        cands = unique
    if opts.dedup == "near":
        nd = NearDuplicateFilter(opts.near_threshold)
        kept = []
        for c in cands:
            if nd.add(c[2]) is None:
                kept.append(c)
            else:
                n_near += 1
        cands = kept

    queries: list[Query] = []
    seen_ids: dict[str, tuple[str, str]] = {}
    hashed: dict[str, int] = {}
    for row, k, text in cands:
        base = _optional_str(row, id_col) if id_col else ""
        if base and layout.format != "plain" and opts.turns == "all":
            base = f"{base}/{k}"
        qid = base
        if not qid:
            h = stable_id(text)
            hashed[h] = hashed.get(h, 0) + 1
            qid = h if hashed[h] == 1 else f"{h}-{hashed[h]}"
        if qid in seen_ids:
            raise DataError(f"{row.where}: duplicate id {qid!r} (first at {seen_ids[qid][0]})")
        seen_ids[qid] = (row.where, text)
        if layout.format == "plain":
            queries.append(Query(id=qid, text=text, topic=_optional_str(row, "topic"), values_hint=_values_hint(row)))
        else:
            queries.append(Query(id=qid, text=text))

    if not queries:
        what = ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in dropped.items() if n) or "nothing usable"
        raise DataError(f"{label}: no usable queries in column {layout.column!r} (dropped: {what})")
    sample = None
    if opts.sample is not None:
        n_before = len(queries)
        if opts.sample < n_before:
            idx = sorted(random.Random(f"{opts.seed}/query-sample").sample(range(n_before), opts.sample))
            queries = [queries[i] for i in idx]
        sample = {"n": opts.sample, "seed": opts.seed, "from": n_before, "kept": len(queries)}

    report: dict[str, Any] = {
        "source": label, **info, "format": layout.format, "column": layout.column, "id_column": id_col or None,
        "rows": len(rows)}
    if layout.format != "plain":
        report.update(turns=opts.turns, roles={"role_key": layout.role_key, "content_key": layout.content_key,
                                               "user_roles": sorted(_USER_ROLES)}, user_turns=n_turns)
    report.update(dropped=dropped, max_chars=opts.max_chars,
                  language=None if opts.language is None else {
                      "keep": opts.language, "dropped_by_detected": dict(sorted(lang_seen.items())),
                      "undetermined_kept": undetermined_kept, "method": "script + function-word heuristic"},
                  duplicates={"mode": opts.dedup, "exact": n_exact, "near": n_near,
                              **({"threshold": opts.near_threshold, "method": "MinHash LSH (20x5) over character "
                                  "5-grams, verified by exact Jaccard"} if opts.dedup == "near" else {})},
                  sample=sample, kept=len(queries))
    return QueryPool(queries, report)


def load_queries(
    source: str | Path | None = None,
    *,
    column: str = "auto",
    split: str = "train",
    limit: int | None = None,
    id_column: str = "auto",
    **options: Any,
) -> list[Query]:
    """Load a pool of user queries (:func:`load_query_pool` without the report).

    Args:
        source: ``None`` for the shipped pool; a JSONL, JSON, CSV/TSV, Parquet or TXT file; ``"hf:owner/name"``
            or ``"hf:FOLDER"``.
        column: the column that holds the query text or the conversation; ``"auto"`` detects it.
        split: the split of a Hugging Face dataset (ignored for files).
        limit: read only the first ``limit`` rows.
        id_column: the column with query ids (``"auto"``: ``id``, ``conversation_id``, … if present).
        options: other :class:`QueryOptions` fields (``format``, ``turns``, ``dedup``, ``sample``, …).
    """
    known = {f.name for f in fields(QueryOptions)}
    bad = sorted(set(options) - known)
    if bad:
        raise ConfigError(f"unknown query option(s) {', '.join(bad)}; known: {', '.join(sorted(known))}")
    return load_query_pool(source, column=column, split=split, limit=limit, id_column=id_column,
                           **options).queries


def load_texts(source: str | Path, *, column: str = "auto", candidates: Sequence[str] = (),
               dedup: str = "exact") -> tuple[list[str], dict[str, Any]]:
    """Texts of a user file such as harmful requests: ``column`` or one detected among :data:`TEXT_COLUMNS`
    plus ``candidates`` (e.g. ``goal``, ``behavior``); conversations give their first user turn. Returns the
    texts and the loading report."""
    pool = load_query_pool(source, column=column, dedup=dedup, max_chars=None, id_column="",
                           text_columns=(*TEXT_COLUMNS, *candidates))
    return [q.text for q in pool.queries], pool.report


def options_dict(options: QueryOptions) -> dict[str, Any]:
    """The options as a plain dict (for manifests)."""
    d = asdict(options)
    d.pop("text_columns", None)
    return d


# --------------------------------------------------------------------------------------------- prompts

#: Column names detected as a system prompt's value and text.
PROMPT_VALUE_COLUMNS: tuple[str, ...] = ("value", "target_value", "value_name", "schwartz_value")
PROMPT_TEXT_COLUMNS: tuple[str, ...] = ("text", "prompt", "system_prompt", "system", "template", "content")


def load_system_prompts(
    source: str | Path | None = None,
    values: str | Iterable[str] | None = None,
    *,
    text_column: str = "auto",
    value_column: str = "auto",
) -> dict[str, list[SystemPrompt]]:
    """Load value system prompts, grouped by value.

    Args:
        source: ``None`` for the shipped set (``valuelens/data/system_prompts.jsonl``) or a path to a JSONL,
            JSON, CSV or Parquet file with a value column and a text column (``id`` and ``style`` optional; a
            missing id becomes ``sp-<value key>-`` + hash of the text).
        values: which values to return (names in any spelling :func:`valuelens.values.get_value` accepts, a
            comma-separated string, or ``None``/``"all"`` for all ten).
        text_column, value_column: the columns to read; ``"auto"`` detects them among
            :data:`PROMPT_TEXT_COLUMNS` / :data:`PROMPT_VALUE_COLUMNS`.

    Returns:
        ``{canonical value name: [SystemPrompt, ...]}`` in circumplex order, prompts in file order. Every
        requested value is present with at least one prompt.

    Raises:
        DataError: missing/empty file, malformed line, missing or ambiguous column, empty text, duplicate ids,
            or no prompt for a requested value.
        ConfigError: an unknown value name in ``values`` or in the file (the message names file and line).
    """
    wanted = [v.name for v in resolve_values(values if values is None or isinstance(values, str) else list(values))]
    path = data_path(SYSTEM_PROMPTS_FILE) if source is None else Path(source).expanduser()
    rows = _read_rows(path)
    vcol = pick_column(rows, value_column, PROMPT_VALUE_COLUMNS, str(path), what="value", fallback=False,
                       hint="choose with --set system_prompts_value_column=NAME")
    if text_column == "auto":
        tcol = _prompt_text_column(rows, vcol, str(path))
    else:
        _require_column(rows, text_column, str(path), "choose with --set system_prompts_column=NAME")
        tcol = text_column

    grouped: dict[str, list[SystemPrompt]] = {name: [] for name in VALUE_NAMES}
    seen_ids: dict[str, str] = {}
    for row in rows:
        value_name = _text(row, vcol)
        value = get_value(_canonical(value_name, row.where))
        text = _text(row, tcol)
        pid = _optional_str(row, "id") or stable_id(text, prefix=f"sp-{value.key}-")
        if pid in seen_ids:
            raise DataError(f"{row.where}: duplicate id {pid!r} (first at {seen_ids[pid]})")
        seen_ids[pid] = row.where
        grouped[value.name].append(SystemPrompt(id=pid, value=value.name, text=text, style=_optional_str(row, "style")))

    missing = [name for name in wanted if not grouped[name]]
    if missing:
        raise DataError(f"{path}: no system prompts for {', '.join(map(repr, missing))}")
    return {name: grouped[name] for name in VALUE_NAMES if name in wanted}


def _prompt_text_column(rows: Sequence[_Row], value_col: str, source: str) -> str:
    """The text column of a prompt file: a detected candidate other than the value column and ``style``."""
    hint = "choose with --set system_prompts_column=NAME"
    cols = _columns(rows)
    lower = set(PROMPT_TEXT_COLUMNS)
    found = [c for c in cols if c != value_col and c.lower() in lower and isinstance(_first_value(rows, c), str)]
    if len(found) == 1:
        return found[0]
    if len(found) > 1:
        raise DataError(f"{source}: ambiguous system prompt text column, candidates: {', '.join(found)}; {hint}")
    raise DataError(f"{source}: no system prompt text column (columns: {', '.join(cols) or 'none'}); {hint}")
