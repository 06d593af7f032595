"""Run folders: atomic writes, resumable JSONL, hashing, manifests.

One run = one folder. Every file is written atomically (temporary file in the same folder, fsync,
``os.replace``), so an interrupted run never leaves a half-written table or tensor file behind. Per-sample
JSONL files are the exception by design: they are appended one complete line at a time and flushed, and
:func:`read_jsonl` drops a torn last line, so a killed run resumes from its last whole record.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from .errors import DataError

__all__ = [
    "JsonlWriter",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_sha256",
    "package_versions",
    "parse_shard",
    "read_jsonl",
    "shard_slice",
    "write_manifest",
]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it into place atomically.

    Use it for writers that want a filename (``safetensors.torch.save_file``, ``savefig``).
    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600 files; run outputs are meant to be shared, so use the umask's default mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False, default=str) + "\n")


def read_jsonl(path: str | os.PathLike[str], *, allow_torn_tail: bool = True) -> list[dict[str, Any]]:
    """Read a JSONL file. A torn *last* line (an interrupted append) is dropped; any other bad line is an error."""
    path = Path(path)
    if not path.exists():
        return []
    rows: list[dict[str, Any]] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    # A complete file ends with "\n", so its last element is "".
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            if allow_torn_tail and i == len(lines):
                break
            raise DataError(f"{path}:{i}: not valid JSON ({exc.msg})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{i}: expected a JSON object, got {type(obj).__name__}")
        rows.append(obj)
    return rows


class JsonlWriter:
    """Append-only JSONL writer that makes each record durable before returning.

    Opening repairs a torn tail left by a killed process, so appends always start on a fresh line.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            rows = read_jsonl(self.path)
            raw = self.path.read_bytes()
            if raw and not raw.endswith(b"\n"):
                # Rewrite only the whole records (drops the torn line).
                atomic_write_text(
                    self.path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
                )
        self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()

    def write(self, record: dict[str, Any]) -> None:
        self._fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def write_many(self, records: Iterable[dict[str, Any]]) -> None:
        for r in records:
            self._fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> JsonlWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def file_sha256(path: str | os.PathLike[str], *, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions(names: Iterable[str] = ()) -> dict[str, str]:
    """Versions of the packages that determine a run's numbers (plus any extra ``names``)."""
    base = ["valuelens", "torch", "transformers", "tokenizers", "safetensors", "gguf", "numpy", "peft",
            "scikit-learn", "accelerate"]
    out: dict[str, str] = {"python": platform.python_version()}
    for name in [*base, *names]:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def write_manifest(folder: str | os.PathLike[str], *, stage: str, config: dict[str, Any],
                   extra: dict[str, Any] | None = None, name: str | None = None) -> Path:
    """Write ``<folder>/manifest.json`` (or ``manifest-<stage>.json`` via ``name``) describing a stage run."""
    folder = Path(folder)
    manifest = {
        "stage": stage,
        "created_unix": time.time(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": shlex.join(sys.argv),
        "config": config,
        "versions": package_versions(),
        "platform": {"machine": platform.machine(), "system": platform.system(),
                     "cpu_count": os.cpu_count()},
        **(extra or {}),
    }
    path = folder / (name or "manifest.json")
    atomic_write_json(path, manifest)
    return path


def parse_shard(spec: str | None) -> tuple[int, int]:
    """Parse ``"i/n"`` (0-based shard i of n). ``None`` means the whole input, ``(0, 1)``."""
    if spec is None or spec == "":
        return (0, 1)
    try:
        i_s, n_s = spec.split("/")
        i, n = int(i_s), int(n_s)
    except ValueError:
        raise DataError(f"--shard must look like i/n (e.g. 0/4), got {spec!r}") from None
    if n < 1 or not 0 <= i < n:
        raise DataError(f"--shard {spec!r}: need 0 <= i < n and n >= 1")
    return (i, n)


def shard_slice(items: list[Any], shard: tuple[int, int]) -> list[Any]:
    """Items of shard ``(i, n)``: a strided slice, so shards stay balanced when items are sorted by size."""
    i, n = shard
    return items[i::n]
