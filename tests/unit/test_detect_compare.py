"""compare(): table files, manifest, resumability, unknown methods, LLM guard (baselines only: fast)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from valuelens.detect.compare import compare
from valuelens.errors import ConfigError

DATA = Path(__file__).resolve().parents[2].parent / "shared/data/valueeval23"


def test_compare_baselines_writes_table_and_resumes(tmp_path: Path) -> None:
    md = compare(["all-ones", "tfidf"], "validation", tmp_path, data_dir=DATA, max_train=600, max_eval=200)
    for name in ("results.csv", "results.md", "results.png", "manifest.json"):
        assert (tmp_path / name).exists(), name
    assert "| all-ones |" in md and "Per-category F1" in md
    ones = json.loads((tmp_path / "all-ones" / "result.json").read_text())
    assert ones["recall"] == 1.0 and ones["n_eval"] == 200
    tfidf = json.loads((tmp_path / "tfidf" / "result.json").read_text())
    assert tfidf["train_seconds"] > 0 and set(tfidf["per_category_f1"]) and tfidf["inference_per_second"] > 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["stage"] == "detect-compare" and manifest["config"]["n_eval"] == 200
    logs: list[str] = []
    compare(["all-ones", "tfidf"], "validation", tmp_path, data_dir=DATA, max_train=600, max_eval=200,
            log=logs.append)
    assert any("tfidf: already finished" in m for m in logs)
    assert (tmp_path / "results.csv").read_text().count("\n") == 3


def test_unknown_method_and_llm_without_backend(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown method"):
        compare(["magic"], "validation", tmp_path, data_dir=DATA)
    with pytest.raises(ConfigError, match="needs --llm"):
        compare(["llm-zero"], "validation", tmp_path, data_dir=DATA, max_eval=5)
