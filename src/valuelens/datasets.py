"""Query pools and value system prompts: the shipped datasets and loaders for user files.

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

User data is accepted in the same shape from a JSONL, CSV or Parquet file (by suffix), or from a Hugging Face
dataset named ``hf:owner/name`` (optionally ``hf:owner/name:config``; needs ``pip install datasets``).
:func:`read_table` is the generic reader every loader here uses; other modules reuse it.

Errors a user can cause — a missing or empty file, a bad JSON line, a missing column, an empty text, an
unknown value name — raise :class:`~valuelens.errors.DataError` (or :class:`~valuelens.errors.ConfigError`
for unknown value names and bad options) with one line that names the file and the line (or Parquet row).
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from .errors import ConfigError, DataError
from .values import VALUE_NAMES, get_value, resolve_values

__all__ = [
    "QUERIES_FILE",
    "SYSTEM_PROMPTS_FILE",
    "Query",
    "SystemPrompt",
    "data_path",
    "load_queries",
    "load_system_prompts",
    "read_table",
    "stable_id",
]

QUERIES_FILE = "queries.jsonl"
SYSTEM_PROMPTS_FILE = "system_prompts.jsonl"

_JSONL_SUFFIXES = {".jsonl", ".ndjson"}
_JSON_SUFFIXES = {".json"}
_CSV_SUFFIXES = {".csv", ".tsv"}
_PARQUET_SUFFIXES = {".parquet", ".pq"}
_SUPPORTED = sorted(_JSONL_SUFFIXES | _JSON_SUFFIXES | _CSV_SUFFIXES | _PARQUET_SUFFIXES)


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
        else:
            rows = _read_parquet(path)
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({_one_line(e)})") from None
    if not rows:
        raise DataError(f"{path}: no rows (empty file)")
    return rows


def read_table(path: str | Path) -> list[dict[str, Any]]:
    """Read a JSONL, JSON, CSV/TSV or Parquet file (chosen by suffix) into a list of row dicts.

    JSONL: one object per line, blank lines skipped. CSV: first line is the header, all values are strings,
    blank rows skipped. Parquet: one dict per row with Python values. Raises :class:`DataError` naming the file
    (and line) for a missing file, an unsupported suffix, an empty file or a malformed line.
    """
    return [r.data for r in _read_rows(path)]


# --------------------------------------------------------------------------------------------- helpers


def stable_id(text: str, prefix: str = "q-") -> str:
    """A deterministic id for a text: ``prefix`` + the first 12 hex digits of its SHA-1 (UTF-8)."""
    return prefix + hashlib.sha1(text.encode("utf-8")).hexdigest()[:12]


def _is_missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def _require_column(rows: Sequence[_Row], column: str, source: str) -> None:
    """A column is missing when no row has it (CSV and Parquet rows all share the header)."""
    if not any(column in r.data for r in rows):
        cols = sorted({k for r in rows[:50] for k in r.data})
        raise DataError(f"{source}: no column {column!r} (columns: {', '.join(map(str, cols)) or 'none'})")


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


def _check_limit(limit: int | None) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"limit must be a positive integer or None, got {limit!r}")


# --------------------------------------------------------------------------------------------- queries


def _hf_rows(spec: str, split: str, limit: int | None) -> tuple[str, list[_Row]]:
    name = spec[3:].strip()
    config = None
    if ":" in name:
        name, config = name.split(":", 1)
    if not name:
        raise ConfigError(f"{spec!r}: give a Hugging Face dataset as hf:owner/name (or hf:owner/name:config)")
    try:
        import datasets as hf_datasets
    except ImportError:
        raise ConfigError(
            f"{spec}: reading a Hugging Face dataset needs the 'datasets' library; run `pip install datasets`"
        ) from None
    try:
        ds = hf_datasets.load_dataset(name, config, split=split)
    except Exception as e:  # network, missing dataset, missing split, bad config: all user-facing
        raise DataError(f"{spec} (split {split!r}): cannot load Hugging Face dataset ({_one_line(e)})") from None
    if limit is not None:
        ds = ds.select(range(min(limit, len(ds))))
    rows = [_Row(f"{spec} [{split}], row {i}", dict(rec)) for i, rec in enumerate(ds, start=1)]
    if not rows:
        raise DataError(f"{spec} (split {split!r}): no rows (empty dataset)")
    return spec, rows


def load_queries(
    source: str | Path | None = None,
    *,
    column: str = "text",
    split: str = "train",
    limit: int | None = None,
    id_column: str = "id",
) -> list[Query]:
    """Load a pool of user queries.

    Args:
        source: ``None`` for the shipped pool (``valuelens/data/queries.jsonl``); a path to a JSONL, JSON, CSV
            or Parquet file; or ``"hf:owner/name"`` (``"hf:owner/name:config"``) for a Hugging Face dataset,
            which needs the optional ``datasets`` library.
        column: the column that holds the query text.
        split: the split of a Hugging Face dataset (ignored for files).
        limit: keep only the first ``limit`` queries (in file order).
        id_column: the column with query ids. Rows without one get a stable id from the hash of their text
            (``q-`` + 12 hex digits; ``-2``, ``-3`` … appended for repeated texts).

    Optional columns ``topic`` (string) and ``values_hint`` (list, JSON list string, or names separated by
    ``;``/``|``/``,``) are read when present; hint names are canonicalised with
    :func:`valuelens.values.get_value`.

    Raises:
        DataError: missing/empty file, malformed line, missing column, empty text, duplicate ids.
        ConfigError: unknown value name in ``values_hint``, bad ``limit``, ``datasets`` not installed.
    """
    _check_limit(limit)
    if isinstance(source, str) and source.startswith("hf:"):
        label, rows = _hf_rows(source, split, limit)
    else:
        path = data_path(QUERIES_FILE) if source is None else Path(source).expanduser()
        if (
            isinstance(source, str)
            and not path.exists()
            and source.count("/") == 1
            and path.suffix.lower() not in _SUPPORTED
        ):
            raise DataError(f"{path}: file not found (for a Hugging Face dataset write hf:{source})")
        label, rows = str(path), _read_rows(path)
    _require_column(rows, column, label)
    if limit is not None:
        rows = rows[:limit]

    queries: list[Query] = []
    seen_ids: dict[str, str] = {}
    hashed: dict[str, int] = {}
    for row in rows:
        text = _text(row, column)
        qid = _optional_str(row, id_column) if id_column else ""
        if not qid:
            base = stable_id(text)
            hashed[base] = hashed.get(base, 0) + 1
            qid = base if hashed[base] == 1 else f"{base}-{hashed[base]}"
        if qid in seen_ids:
            raise DataError(f"{row.where}: duplicate id {qid!r} (first at {seen_ids[qid]})")
        seen_ids[qid] = row.where
        queries.append(Query(id=qid, text=text, topic=_optional_str(row, "topic"), values_hint=_values_hint(row)))
    return queries


# --------------------------------------------------------------------------------------------- prompts


def load_system_prompts(
    source: str | Path | None = None,
    values: str | Iterable[str] | None = None,
) -> dict[str, list[SystemPrompt]]:
    """Load value system prompts, grouped by value.

    Args:
        source: ``None`` for the shipped set (``valuelens/data/system_prompts.jsonl``) or a path to a JSONL,
            JSON, CSV or Parquet file with columns ``value`` and ``text`` (``id`` and ``style`` optional; a
            missing id becomes ``sp-<value key>-`` + hash of the text).
        values: which values to return (names in any spelling :func:`valuelens.values.get_value` accepts, a
            comma-separated string, or ``None``/``"all"`` for all ten).

    Returns:
        ``{canonical value name: [SystemPrompt, ...]}`` in circumplex order, prompts in file order. Every
        requested value is present with at least one prompt.

    Raises:
        DataError: missing/empty file, malformed line, missing column, empty text, duplicate ids, or no
            prompt for a requested value.
        ConfigError: an unknown value name in ``values`` or in the file (the message names file and line).
    """
    wanted = [v.name for v in resolve_values(values if values is None or isinstance(values, str) else list(values))]
    path = data_path(SYSTEM_PROMPTS_FILE) if source is None else Path(source)
    rows = _read_rows(path)
    for col in ("value", "text"):
        _require_column(rows, col, str(path))

    grouped: dict[str, list[SystemPrompt]] = {name: [] for name in VALUE_NAMES}
    seen_ids: dict[str, str] = {}
    for row in rows:
        value_name = _text(row, "value")
        value = get_value(_canonical(value_name, row.where))
        text = _text(row, "text")
        pid = _optional_str(row, "id") or stable_id(text, prefix=f"sp-{value.key}-")
        if pid in seen_ids:
            raise DataError(f"{row.where}: duplicate id {pid!r} (first at {seen_ids[pid]})")
        seen_ids[pid] = row.where
        grouped[value.name].append(SystemPrompt(id=pid, value=value.name, text=text, style=_optional_str(row, "style")))

    missing = [name for name in wanted if not grouped[name]]
    if missing:
        raise DataError(f"{path}: no system prompts for {', '.join(map(repr, missing))}")
    return {name: grouped[name] for name in VALUE_NAMES if name in wanted}
