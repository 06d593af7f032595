"""Touché23-ValueEval (ValueEval'23) data: strict reading of the official TSV layout, and download.

A split ``<name>`` in a folder is ``arguments-<name>.tsv`` (``Argument ID, Conclusion, Stance, Premise``) plus,
when labelled, ``labels-<name>.tsv`` (``Argument ID`` + the 20 level-2 categories) and optionally
``level1-labels-<name>.tsv`` (``Argument ID`` + 54 level-1 values). Every problem raises
:class:`~valuelens.errors.DataError` with ``file:line`` so a user can fix the file.
"""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..runio import atomic_path, atomic_write_bytes, file_sha256
from ..values import VALUEEVAL_CATEGORIES

__all__ = [
    "ARGUMENT_COLUMNS",
    "OFFICIAL_FILES",
    "ZENODO_RECORD",
    "Argument",
    "ValueEvalSplit",
    "default_data_dir",
    "download",
    "load_split",
    "read_arguments",
    "read_labels",
    "resolve_data_dir",
    "write_labels_tsv",
]

ARGUMENT_COLUMNS: tuple[str, ...] = ("Argument ID", "Conclusion", "Stance", "Premise")
STANCES: tuple[str, ...] = ("in favor of", "against")

#: Zenodo record of the newest dataset version (2024-01-24); see the data README.
ZENODO_RECORD = "10564870"
#: file name -> sha256 of the copy in ``../shared/data/valueeval23`` (the hashes listed in its README).
OFFICIAL_FILES: dict[str, str] = {
    "arguments-training.tsv": "322f06c43e2cb0f061f865dc8e6ce9805515cccb5ec18c0bca7fc3462fa0453c",
    "arguments-validation.tsv": "706e987776cbd7c5929e47b669c7de91b01f08eace10c10bb1083fd3c4f6c8ee",
    "labels-training.tsv": "87ee3c0fe6760f2a6f895ed9144ad0ed076a9a5ff543820b9683aad8fd46bf12",
    "labels-validation.tsv": "383b1dbbacfdcc7948e29619391a00f177b7708f85eb8ab1808972a76fc201b5",
    "level1-labels-training.tsv": "ff929376da68fff585d8627bc892a5a1cdfde126a460a376fa97d13bc5a3dada",
    "level1-labels-validation.tsv": "372626a12406998c4e33cc72f9051433cc21b4675108c18e61688d3fcf66732e",
    "value-categories.json": "f2847738a5cf37f18f7428441f448242b3e969061aa9d8b03df5c9ba77e749bf",
}


@dataclass(frozen=True)
class Argument:
    """One argument: a premise that argues *stance* (``in favor of`` / ``against``) a *conclusion*."""

    id: str
    conclusion: str
    stance: str
    premise: str

    def text(self) -> str:
        """Render for a model: ``"<conclusion> / <stance> / <premise>"`` (the layout the paper uses)."""
        return f"{self.conclusion} / {self.stance} / {self.premise}"

    @classmethod
    def from_text(cls, text: str, id: str = "") -> Argument:
        """Wrap free text (no conclusion/stance) as an argument whose :meth:`text` is just the text."""
        return _FreeText(id=id, conclusion="", stance="", premise=text)


@dataclass(frozen=True)
class _FreeText(Argument):
    def text(self) -> str:
        return self.premise


@dataclass
class ValueEvalSplit:
    """Arguments of one split, with labels ``[N, 20]`` (int 0/1) in :data:`VALUEEVAL_CATEGORIES` order if known."""

    name: str
    arguments: list[Argument]
    labels: np.ndarray | None = None
    level1: np.ndarray | None = None
    level1_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.arguments)

    @property
    def ids(self) -> list[str]:
        return [a.id for a in self.arguments]

    def texts(self) -> list[str]:
        return [a.text() for a in self.arguments]

    def subset(self, idx: np.ndarray | list[int]) -> ValueEvalSplit:
        idx = np.asarray(idx, dtype=np.int64)
        return ValueEvalSplit(
            name=self.name,
            arguments=[self.arguments[i] for i in idx],
            labels=None if self.labels is None else self.labels[idx],
            level1=None if self.level1 is None else self.level1[idx],
            level1_names=list(self.level1_names),
        )

    def head(self, n: int | None) -> ValueEvalSplit:
        return self if n is None or n >= len(self) else self.subset(np.arange(n))


def default_data_dir() -> Path:
    """``$VALUELENS_DATA/valueeval23`` or ``~/.cache/valuelens/data/valueeval23`` (where ``download`` writes)."""
    base = os.environ.get("VALUELENS_DATA")
    if base:
        return Path(base) / "valueeval23"
    cache = os.environ.get("VALUELENS_CACHE") or str(Path.home() / ".cache" / "valuelens")
    return Path(cache) / "data" / "valueeval23"


def resolve_data_dir(data: str | os.PathLike[str] | None = None) -> Path:
    """The ValueEval'23 folder a command uses: ``data`` if given, else :func:`default_data_dir` when it holds the
    training split, else ``../shared/data/valueeval23`` next to the working directory when present, else
    :func:`default_data_dir` (so the error names where ``valuelens detect download`` would put the files)."""
    if data:
        return Path(data).expanduser()
    d = default_data_dir()
    if (d / "arguments-training.tsv").exists():
        return d
    shared = Path.cwd().parent / "shared" / "data" / "valueeval23"
    if (shared / "arguments-training.tsv").exists():
        return shared
    return d


def _read_tsv(path: Path) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and ``(line number, fields)`` rows of a TSV.

    Plain split on tabs, no CSV quoting: the official files use none, and a stray quote in a premise must
    not swallow the following rows.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if not lines:
        raise DataError(f"{path}:1: empty file (expected a header row)")
    header = lines[0].rstrip("\r").split("\t")
    rows: list[tuple[int, list[str]]] = []
    for i, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line.strip():
            raise DataError(f"{path}:{i}: empty line")
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataError(f"{path}:{i}: expected {len(header)} tab-separated columns, got {len(fields)}")
        rows.append((i, fields))
    return header, rows


def read_arguments(path: str | os.PathLike[str]) -> list[Argument]:
    """Read an ``arguments-*.tsv`` file, checking header, empty fields, stance and duplicate IDs."""
    path = Path(path)
    header, rows = _read_tsv(path)
    if tuple(header) != ARGUMENT_COLUMNS:
        raise DataError(f"{path}:1: header must be {'|'.join(ARGUMENT_COLUMNS)} (tab-separated), "
                        f"got {'|'.join(header)}")
    out: list[Argument] = []
    seen: dict[str, int] = {}
    for line, (aid, conclusion, stance, premise) in rows:
        aid = aid.strip()
        if not aid:
            raise DataError(f"{path}:{line}: empty Argument ID")
        if aid in seen:
            raise DataError(f"{path}:{line}: duplicate Argument ID {aid!r} (first on line {seen[aid]})")
        seen[aid] = line
        if stance not in STANCES:
            raise DataError(f"{path}:{line}: Stance must be one of {STANCES}, got {stance!r}")
        if not premise.strip():
            raise DataError(f"{path}:{line}: empty Premise for {aid}")
        out.append(Argument(id=aid, conclusion=conclusion, stance=stance, premise=premise))
    return out


def read_labels(path: str | os.PathLike[str], expected: list[str] | tuple[str, ...] | None = None,
                ids: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    """Read a labels TSV: ``(column names, int8 matrix [N, C])``.

    ``expected``: the exact label columns required (order may differ; the result is returned in
    ``expected`` order). ``ids``: the argument IDs the rows must match one to one, in order.
    """
    path = Path(path)
    header, rows = _read_tsv(path)
    if not header or header[0] != "Argument ID":
        raise DataError(f"{path}:1: first column must be 'Argument ID', got {header[0] if header else ''!r}")
    cols = header[1:]
    dup = {c for c in cols if cols.count(c) > 1}
    if dup:
        raise DataError(f"{path}:1: duplicate label column(s): {', '.join(sorted(dup))}")
    order = list(range(len(cols)))
    if expected is not None:
        unknown = [c for c in cols if c not in expected]
        if unknown:
            raise DataError(f"{path}:1: unknown label column(s): {', '.join(unknown)}")
        missing = [c for c in expected if c not in cols]
        if missing:
            raise DataError(f"{path}:1: missing label column(s): {', '.join(missing)}")
        order = [cols.index(c) for c in expected]
        cols = list(expected)
    if ids is not None and len(rows) != len(ids):
        raise DataError(f"{path}: {len(rows)} label rows but {len(ids)} arguments")
    mat = np.zeros((len(rows), len(cols)), dtype=np.int8)
    for r, (line, fields) in enumerate(rows):
        if ids is not None and fields[0].strip() != ids[r]:
            raise DataError(f"{path}:{line}: Argument ID {fields[0]!r} does not match the arguments file "
                            f"(expected {ids[r]!r} in row {r + 1})")
        for j, src in enumerate(order):
            v = fields[1 + src].strip()
            if v not in ("0", "1"):
                raise DataError(f"{path}:{line}: label {cols[j]!r} must be 0 or 1, got {v!r}")
            mat[r, j] = 1 if v == "1" else 0
    return cols, mat


def load_split(folder: str | os.PathLike[str], split: str, *, level1: bool = False,
               require_labels: bool = True) -> ValueEvalSplit:
    """Load split ``split`` (``training``, ``validation``, ``test``) from an official-layout folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: data folder not found (run `valuelens detect download` or pass --data)")
    args = read_arguments(folder / f"arguments-{split}.tsv")
    ids = [a.id for a in args]
    labels_path = folder / f"labels-{split}.tsv"
    labels = None
    if labels_path.exists():
        _, labels = read_labels(labels_path, VALUEEVAL_CATEGORIES, ids)
    elif require_labels:
        raise DataError(f"{labels_path}: file not found (split {split!r} has no labels)")
    lv1, names = None, []
    lv1_path = folder / f"level1-labels-{split}.tsv"
    if level1 and lv1_path.exists():
        names, lv1 = read_labels(lv1_path, None, ids)
    return ValueEvalSplit(name=split, arguments=args, labels=labels, level1=lv1, level1_names=list(names))


def _zenodo_url(name: str) -> str:
    return f"https://zenodo.org/records/{ZENODO_RECORD}/files/{name}?download=1"


def download(dest: str | os.PathLike[str] | None = None, *, timeout: float = 30.0,
             files: dict[str, str] | None = None) -> Path:
    """Fetch the official training/validation files from Zenodo into ``dest`` and verify their sha256.

    Files already present with the right hash are kept. Offline, raises one :class:`DataError` line.
    """
    dest = Path(dest) if dest is not None else default_data_dir()
    dest.mkdir(parents=True, exist_ok=True)
    for name, sha in (files or OFFICIAL_FILES).items():
        target = dest / name
        if target.exists() and file_sha256(target) == sha:
            continue
        url = _zenodo_url(name)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                data = resp.read()
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise DataError(f"cannot download {url}: {reason} (offline? copy the ValueEval'23 TSV files into "
                            f"{dest} by hand or pass --data to a folder that has them)") from None
        import hashlib

        got = hashlib.sha256(data).hexdigest()
        if got != sha:
            raise DataError(f"{url}: sha256 {got} does not match the expected {sha}; not saved")
        atomic_write_bytes(target, data)
    return dest


def write_tsv(path: str | os.PathLike[str], header: list[str], rows: list[list[str]]) -> None:
    """Write a TSV the way the official files are (tab, LF, no quoting), atomically."""
    from ..runio import atomic_write_text

    lines = ["\t".join(header), *("\t".join(r) for r in rows)]
    atomic_write_text(path, "\n".join(lines) + "\n")


def write_labels_tsv(output: str | os.PathLike[str], ids: list[str], labels: np.ndarray) -> None:
    """Write ``Argument ID`` + 20 columns of 0/1 (the official run-file and labels layout), atomically."""
    lines = ["\t".join(["Argument ID", *VALUEEVAL_CATEGORIES])]
    lines += ["\t".join([i, *(str(int(v)) for v in row)]) for i, row in zip(ids, labels, strict=True)]
    with atomic_path(output) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8")
