"""Smoke test: benchmarks/bench_extract.py runs end to end on the tiny random model and prints its tables.

No timing assertions (the machine is shared); only that every part runs and the tables and estimate are printed.
"""

from __future__ import annotations

import json

import torch


def test_bench_extract_tiny(tmp_path, capsys, load_benchmark):
    bench = load_benchmark("bench_extract")
    out_json = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        res = bench.main(["--tiny", "--json", str(out_json)])
    finally:
        torch.set_num_threads(threads)  # the benchmark sets 1 thread for itself
    out = capsys.readouterr().out
    for heading in ("## Extract generate stage", "## Generation (a)", "## Activation capture (b)", "## Memory (c)",
                    "## Estimate: default full config"):
        assert heading in out
    assert "ratio vs plain (same dtype)" in out and "absolute seconds depend on the machine's load" in out
    gen = {r["method"]: r for r in res["generation"]["rows"]}
    assert set(gen) == {"plain generate fp32", "generate_to_file fp32", "plain generate bf16", "generate_to_file bf16",
                        "plain generate sampled-fp32", "generate_to_file sampled-fp32"}
    # every method produced tokens (sampled rows stop at EOS at different places, so only > 0)
    assert all(r["new_tokens"] > 0 for r in gen.values())
    # greedy fp32: the resumable writer generates exactly the tokens plain generate does
    assert gen["generate_to_file fp32"]["new_tokens"] == gen["plain generate fp32"]["new_tokens"]
    cap = {r["dtype"]: r for r in res["capture"]["rows"]}
    assert cap["bf16"]["min_cosine_vs_fp32"] > 0.9
    mem = res["memory"]["rows"]
    assert [r["responses"] for r in mem] == [4, 8, 16] and [r["chunks"] for r in mem] == [1, 2, 4]
    assert mem[-1]["values_with_vectors"]  # rank labels + lexicon judge: vectors exist
    assert res["estimate"]["responses"] == 720 and res["estimate"]["total_s"] > 0
    assert json.loads(out_json.read_text())["estimate"]["responses"] == 720
