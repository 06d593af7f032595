"""Smoke test: benchmarks/bench_serve.py runs end to end on the tiny random model through a real HTTP server and
prints its ratios. No timing assertions (the machine is shared): only that every scenario generated the same
fixed number of tokens and the report has its rows and ratios."""

from __future__ import annotations

import json


def test_bench_serve_tiny(tmp_path, capsys, load_benchmark) -> None:
    bench = load_benchmark("bench_serve")
    out_json = tmp_path / "serve.json"
    res = bench.main(["--tiny", "--repeats", "1", "--max-tokens", "8", "--threads", "1", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert "steered / unsteered (goal ≥ 0.95)" in out and "concurrent / sequential" in out
    rows = {r["scenario"]: r for r in res["rows"]}
    assert rows["8 concurrent, unsteered"]["ratio_vs_unsteered_concurrent"] == 1.0
    for k in ("8 concurrent, steered", "8 concurrent, mixed", "8 sequential, unsteered"):
        assert rows[k]["tokens"] == 64 and rows[k]["tokens_per_s"] > 0
    assert json.loads(out_json.read_text())["steered_over_unsteered"] > 0
