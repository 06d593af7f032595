"""Smoke test: benchmarks/bench_hooks.py runs end to end on the tiny random model and prints its tables.

No timing assertions (the machine is shared); only that every part runs, the numbers check out and the ratio
tables are printed.
"""

from __future__ import annotations

import json

import pytest


def _check_report(out: str, res: dict) -> None:
    assert "## Capture" in out and "ratio vs output_hidden_states fp32" in out
    assert "## Steered generation" in out and "ratio vs plain (same dtype)" in out
    assert "## Memory" in out and "flat: yes" in out
    assert "absolute seconds depend on the machine's load" in out
    rows = {(r["method"], r["dtype"]): r for r in res["capture"]["rows"]}
    assert rows[("valuelens forward_capture", "fp32")]["max_abs_diff_vs_baseline"] < 1e-5
    assert rows[("valuelens forward_capture bf16", "bf16 autocast")]["min_cosine_vs_fp32"] > 0.99
    gen = {(r["method"], r["dtype"]): r for r in res["generate"]["rows"]}
    steered = gen[("valuelens add_vectors", "fp32")]
    assert steered["new_tokens"] == res["generate"]["max_new_tokens"]
    assert steered["steered_differs_from_plain"]


def test_bench_hooks_tiny_without_peers(tmp_path, capsys, load_benchmark):
    bench = load_benchmark("bench_hooks")
    out_json = tmp_path / "bench.json"
    res = bench.main(["--tiny", "--repeats", "1", "--peers", "none", "--json", str(out_json)])
    out = capsys.readouterr().out
    _check_report(out, res)
    assert json.loads(out_json.read_text())["capture"]["rows"]
    assert "nnsight" not in out


@pytest.mark.slow
def test_bench_hooks_tiny_with_peers(capsys, load_benchmark):
    pytest.importorskip("nnsight")
    pytest.importorskip("transformer_lens")
    bench = load_benchmark("bench_hooks")
    res = bench.main(["--tiny", "--repeats", "1", "--parts", "capture,generate,memory"])
    out = capsys.readouterr().out
    _check_report(out, res)
    assert "nnsight trace" in out and "TransformerLens run_with_cache" in out
    cap = {r["method"]: r for r in res["capture"]["rows"] if r["dtype"] == "fp32"}
    assert cap["nnsight trace"]["max_abs_diff_vs_baseline"] < 1e-5
    assert cap["TransformerLens run_with_cache"]["max_abs_diff_vs_baseline"] < 1e-5
    gen = {(r["method"], r["dtype"]): r for r in res["generate"]["rows"]}
    # all three steering implementations produce the same greedy tokens in fp32
    assert gen[("nnsight steering", "fp32")]["same_tokens_as_valuelens"]
    assert gen[("TransformerLens steering", "fp32")]["same_tokens_as_valuelens"]


def test_bench_scoring_tiny(tmp_path, capsys, load_benchmark):
    bench = load_benchmark("bench_scoring")
    res = bench.main(["--tiny", "--repeats", "1", "--json", str(tmp_path / "s.json")])
    rows = {r["method"]: r for r in res["rows"]}
    assert set(rows) == {"padded, batch 8", "tree, batch 8", "tree, batch 32"}
    assert all(r["max_abs_diff"] < 1e-4 for r in rows.values())  # the layouts agree
    assert rows["padded, batch 8"]["ratio_vs_padded8"] == 1.0
    assert "ratio vs padded/8" in capsys.readouterr().out
