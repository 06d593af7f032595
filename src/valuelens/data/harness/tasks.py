"""Dataset loaders of the shipped lm-evaluation-harness tasks (``custom_dataset: !function tasks.…``).

They read JSONL files shipped inside the valuelens package (no network), whatever the working directory.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _rows(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def _dataset(rows: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def load_capability_mc(**_: Any) -> Any:
    """The 100 four-option questions of ``valuelens/data/capability_mc.jsonl`` as a ``test`` split."""
    return _dataset([{"id": r["id"], "question": r["question"], "options": list(r["options"]),
                      "answer": int(r["answer"])} for r in _rows(HERE.parent / "capability_mc.jsonl")])


def load_short_answer(**_: Any) -> Any:
    """The short-answer questions of ``short_answer.jsonl`` as a ``test`` split."""
    return _dataset(_rows(HERE / "short_answer.jsonl"))
