"""The pre-run estimate on the tiny chat model: counts equal the run's real work, a warm-up measures time on
the device, and ``--dry-run`` prints only the estimate (nothing is written, no model work beyond the warm-up)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from valuelens.estimate import WARMUP_FROM_TOKENS, estimate_extract, extract_config_for_run
from valuelens.extract import ExtractConfig, run_extract
from valuelens.runio import read_jsonl


def _cfg(folder, **kw) -> ExtractConfig:
    base = dict(model=str(folder), values=["Benevolence", "Power", "Tradition"], n_intrinsic=7,
                n_prompted_per_value=3, max_new_tokens=5, batch_size=4, judge="lexicon", gen_bf16=False)
    return ExtractConfig.from_dict({**base, **kw})


def test_counts_equal_the_real_work_and_the_warmup_measures_time(tiny_folder, tmp_path):
    cfg = _cfg(tiny_folder)
    est, lm = estimate_extract(cfg, warmup=True)
    assert (est.intrinsic, est.prompted, est.items) == (7, 9, 16)
    assert est.batches == 4 and est.tokens_to_generate == 16 * 5
    assert est.device == "cpu" and est.dtype == "float32"
    w = est.warmup
    assert w["batch"] == 4 and w["step_s"] > 0 and w["capture_s_per_response"] > 0 and w["mean_prompt_tokens"] > 10
    assert est.generate_s == pytest.approx(4 * (w["prefill_s"] + 5 * w["step_s"]))
    assert "estimate on cpu (float32)" in est.text() and "16 responses" in est.text()
    run_extract(tmp_path / "run", cfg, lm=lm, stages=["prepare", "generate"])
    items = read_jsonl(tmp_path / "run" / "items.jsonl")
    responses = [r for f in (tmp_path / "run" / "responses").glob("*.jsonl") for r in read_jsonl(f)]
    assert len(items) == len(responses) == est.items
    assert sum(len(r["response_ids"]) for r in responses) <= est.tokens_to_generate
    half = est.warmup  # the same estimate split over workers
    est2, _ = estimate_extract(cfg, lm, warmup=True, workers=2)
    assert est2.workers == 2 and half and est2.generate_s is not None


def test_short_runs_skip_the_warmup_unless_asked(tiny_folder):
    est, lm = estimate_extract(_cfg(tiny_folder), warmup=None)
    assert est.items * est.max_new_tokens < WARMUP_FROM_TOKENS
    assert lm is None and est.generate_s is None and "not measured" in est.text()
    quick = extract_config_for_run(True, str(tiny_folder), None)
    assert quick.n_intrinsic == ExtractConfig.quick().n_intrinsic and quick.judge == "lexicon"
    full = extract_config_for_run(False, None, {"n_intrinsic": 5})
    assert full.label_mode == "rank" and full.n_intrinsic == 5


def test_cli_dry_run_prints_the_estimate_and_writes_nothing(tiny_folder, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "valuelens.cli", "extract", "--out", str(out), "--model", str(tiny_folder),
           "--set", "n_intrinsic=7", "--set", "n_prompted_per_value=3", "--set", "max_new_tokens=5",
           "--set", "gen_bf16=false", "--values", "Benevolence,Power", "--judge", "lexicon", "--dry-run"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "estimate: 13 responses (7 intrinsic + 6 prompted)" in proc.stdout
    assert "estimate on cpu (float32)" in proc.stdout and not out.exists()
