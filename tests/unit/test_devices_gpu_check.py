"""Smoke test: benchmarks/gpu_check.py runs its checks and tables on the tiny model, whole and split.

No timing assertions (the machine is shared): only that every hook check passes with its numbers and that the
throughput and memory tables, with ratios to plain ``generate``, are printed.
"""

from __future__ import annotations

import json

import pytest


@pytest.mark.parametrize("split", [False, True])
def test_gpu_check_tiny(tmp_path, capsys, load_benchmark, split):
    bench = load_benchmark("gpu_check")
    out_json = tmp_path / "check.json"
    # The throughput tables once (on the split model); the whole model runs the hook checks only.
    res = bench.main(["--tiny", "--repeats", "1", "--json", str(out_json), *(["--split"] if split else ["--no-bench"])])
    out = capsys.readouterr().out
    assert res["all_passed"], [r for r in res["hooks"] if not r["pass"]]
    assert res["placement"] == ({"cpu": 6, "disk": 2} if split else {"cpu": "whole model"})
    if not split:
        assert "bench" not in res and "all checks passed" in out
        return
    names = {r["check"] for r in res["hooks"]}
    assert {"capture = output_hidden_states (all layers, mean over tokens)", "steering α=0 = plain generate (tokens)",
            "steered batch (left-padded) = one prompt at a time",
            "neuron scaling β=0 zeroes exactly those neurons"} <= names
    assert "ratio vs plain generate" in out and "ratio vs output_hidden_states" in out and "all checks passed" in out
    gen = {r["method"]: r for r in res["bench"]["generate"]}
    assert gen["plain generate"]["ratio_vs_plain"] == 1.0 and gen["steered (add_vectors, 1 layer)"]["tokens_per_s"] > 0
    assert json.loads(out_json.read_text())["all_passed"]
