"""The whole analysis on a tiny random model: extract (lexicon judge) then every section, findings with statistics,
resumability, --findings-only, the report from files alone, and a user's own section."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from valuelens.analysis import AnalyzeConfig, derive_findings, registry, run_analyze, unregister_section
from valuelens.extract import ExtractConfig, run_extract
from valuelens.report import build_report
from valuelens.stats import STATUSES
from valuelens.testing import tiny_chat_lm

FIELDS = ("id", "claim", "paper", "effect", "ci_low", "ci_high", "p_value", "n", "mde", "control", "status", "unit")


@pytest.fixture(scope="module")
def lm():  # type: ignore[no-untyped-def]
    return tiny_chat_lm()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, lm) -> Path:  # type: ignore[no-untyped-def]
    run = tmp_path_factory.mktemp("tiny") / "run"
    cfg = ExtractConfig.quick(model="tiny", judge="lexicon", n_intrinsic=16, n_prompted_per_value=6,
                              max_new_tokens=8, values=["Benevolence", "Power", "Tradition", "Achievement"],
                              gen_bf16=False)
    run_extract(run, cfg, lm=lm)
    acfg = AnalyzeConfig.quick(alpha=0.2, n_free=2, free_max_new_tokens=6, n_instructions=3,
                               instr_max_new_tokens=6, vector_resamples=40, agreement_judges=[],
                               gen_bf16=False, languages=["zh"], crosslingual_conditions=["prompted", "random"])
    run_analyze(run, acfg, lm=lm, log=None)
    return run


def test_every_finding_has_its_statistics(tiny_run: Path) -> None:
    doc = json.loads((tiny_run / "findings.json").read_text())
    assert doc["schema"] == 2 and doc["alpha"] == 0.2
    ids = [f["id"] for f in doc["findings"]]
    assert len(ids) == len(set(ids)) >= 15
    for f in doc["findings"]:
        for k in FIELDS:
            assert k in f, (f["id"], k)
        assert f["status"] in STATUSES
        if f["status"] != "untestable":
            assert isinstance(f["effect"], float) and isinstance(f["n"], int) and f["n"] > 0, f["id"]
            assert f["ci_low"] <= f["effect"] <= f["ci_high"] or f["id"].startswith("circumplex"), f["id"]
            assert 0 < f["p_value"] <= 1 and f["mde"] >= 0, f["id"]
        else:
            assert f["reason"], f["id"]
    by = {f["id"]: f for f in doc["findings"]}
    assert by["steer-prompted"]["unit"].startswith("items") and by["steer-prompted"]["n"] == 4 * 2
    assert by["capability-guard"]["status"] == "untestable"  # α fixed by config: nothing to guard
    assert by["cross-lingual"]["status"] != "untestable" and by["cross-lingual"]["n"] == 4 * 2
    assert sum(doc["counts"].values()) == len(ids)


def test_rerun_is_cached_and_findings_rederive_from_files(tiny_run: Path, lm, tmp_path: Path) -> None:
    run = tmp_path / "copy"
    shutil.copytree(tiny_run, run)
    stamp = {p: p.stat().st_mtime_ns for p in (run / "analyze").rglob("summary.json")}
    acfg = AnalyzeConfig.quick(alpha=0.2, n_free=2, free_max_new_tokens=6, n_instructions=3,
                               instr_max_new_tokens=6, vector_resamples=40, agreement_judges=[],
                               gen_bf16=False, languages=["zh"], crosslingual_conditions=["prompted", "random"])
    run_analyze(run, acfg, lm=lm, log=None)
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp  # nothing recomputed
    before = json.loads((run / "findings.json").read_text())["findings"]
    assert derive_findings(run) == before  # from files alone, no model


def test_report_renders_findings_and_sections_from_files(tiny_run: Path) -> None:
    html = build_report(tiny_run).read_text()
    assert "effect [95 % CI], p, n, MDE" in html and "steer-prompted" in html
    index = json.loads((tiny_run / "analyze" / "index.json").read_text())
    assert [s["name"] for s in index["sections"]][:3] == ["capability", "vectors", "neurons"]
    assert "Value vectors: intrinsic vs prompted" in html
    # Every per-value cosine lies inside its interval (the resampling bias is corrected).
    tab = pd.read_csv(tiny_run / "analyze" / "vectors" / "tables" / "cos_int_prompt.csv").dropna()
    assert len(tab) and ((tab["ci_low"] <= tab["cos"] + 1e-9) & (tab["cos"] <= tab["ci_high"] + 1e-9)).all()


def _docs_example() -> str:
    text = (Path(__file__).resolve().parents[2] / "docs" / "extending.md").read_text()
    start = text.index("```python\n# my_sections.py") + len("```python\n")
    return text[start:text.index("```", start)]


def test_the_extending_example_section_runs(tiny_run: Path, lm, tmp_path: Path) -> None:
    run = tmp_path / "ext"
    shutil.copytree(tiny_run, run)
    ns: dict = {}
    exec(compile(_docs_example(), "docs/extending.md", "exec"), ns)  # defines and registers the section
    try:
        assert "norm_ratio" in registry()
        cfg = AnalyzeConfig.from_dict({"sections": ["norm_ratio"], "alpha": 0.2, "norm_ratio_resamples": 200})
        findings = {f["id"]: f for f in run_analyze(run, cfg, lm=lm, log=None)}
        f = findings["prompted-larger-than-intrinsic"]
        assert f["status"] in STATUSES and f["n"] == 4 and f["unit"] == "values"
        assert (run / "analyze" / "norm_ratio" / "tables" / "norms.csv").is_file()
        index = json.loads((run / "analyze" / "index.json").read_text())
        assert "norm_ratio" in [s["name"] for s in index["sections"]]
        assert "Norms of the value vectors" in build_report(run).read_text()
    finally:
        unregister_section("norm_ratio")


def test_capability_guard_sweeps_alpha_with_continuous_costs(tiny_run: Path, lm, tmp_path: Path) -> None:
    import pandas as pd

    run = tmp_path / "guard"
    shutil.copytree(tiny_run, run)
    cfg = AnalyzeConfig.from_dict({"sections": ["capability"], "alphas": [0.01, 0.1, 1.0, 4.0], "mc_items": 12,
                                   "ppl_tokens": 256, "guard_values": 1})
    findings = {f["id"]: f for f in run_analyze(run, cfg, lm=lm, log=None)}
    s = json.loads((run / "analyze" / "capability" / "summary.json").read_text())
    curves = pd.read_csv(run / "analyze" / "capability" / "tables" / "guard.csv")
    first = s["guard_values"][0]  # the first value with both vectors, in circumplex order
    assert set(curves["direction"]) == {f"{first}/prompted", f"{first}/intrinsic", "random"}
    # The sweep stops once the choice is made: a prefix of the grid, written in the summary.
    evaluated = sorted(curves["alpha"].unique())
    assert evaluated == s["alphas_evaluated"] == [0.01, 0.1, 1.0, 4.0][: len(evaluated)] and len(evaluated) >= 2
    for col in ("mc_loss", "ppl_increase"):
        assert (curves[f"{col}_ci_low"] <= curves[col] + 1e-12).all() and (curves[col] <= curves[f"{col}_ci_high"]
                                                                            + 1e-12).all()
    # The effect on capability grows with α (a random model may even get better: the size, not the sign).
    for _d, g in curves.groupby("direction"):
        g = g.set_index("alpha")
        assert abs(g.loc[evaluated[-1], "ppl_increase"]) > abs(g.loc[0.01, "ppl_increase"])
        assert abs(g.loc[0.01, "ppl_increase"]) < 0.01  # a 1 % push barely changes anything
    # The chosen α follows the rule on the written curves: every guarded direction within both limits at it and
    # at every smaller α, and (unless it is the largest) some guarded direction outside them at the next one.
    guarded = curves[curves["direction"] != "random"]
    ok = guarded.groupby("alpha").apply(lambda g: bool((g["mc_loss"] <= s["max_loss"] + 1e-12).all() and (
        g["ppl_increase"] <= s["max_ppl_increase"] + 1e-12).all()))
    grid = sorted(ok.index)
    if s["guard_exceeded"]:  # none passes: the smallest α, flagged
        assert s["alpha"] == grid[0] and not ok[grid[0]]
    else:
        assert s["alpha"] in grid and all(ok[a] for a in grid if a <= s["alpha"])
        nxt = [a for a in grid if a > s["alpha"]]
        assert not nxt or not ok[nxt[0]]
    assert findings["capability-guard"]["status"] in STATUSES and findings["capability-guard"]["n"] == 12
    assert (run / "analyze" / "capability" / "figures" / "guard.png").stat().st_size > 1000
    # The full sweep draws the whole curve and makes the same choice; the shared α have the same costs.
    full = tmp_path / "guard-full"
    shutil.copytree(tiny_run, full)
    run_analyze(full, AnalyzeConfig.from_dict({**cfg.to_dict(), "guard_full_sweep": True}), lm=lm, log=None)
    sf = json.loads((full / "analyze" / "capability" / "summary.json").read_text())
    cf = pd.read_csv(full / "analyze" / "capability" / "tables" / "guard.csv")
    assert sf["alphas_evaluated"] == [0.01, 0.1, 1.0, 4.0] and sf["alpha"] == s["alpha"]
    shared = cf[cf["alpha"].isin(evaluated)].set_index(["direction", "alpha"])["mc_loss"]
    assert np.allclose(shared.sort_index(), curves.set_index(["direction", "alpha"])["mc_loss"].sort_index(),
                       atol=1e-6)
