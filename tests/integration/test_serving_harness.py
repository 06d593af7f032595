"""lm-evaluation-harness with the ``valuelens`` model on the embedded SmolLM2: the shipped offline tasks
(log-likelihood multiple choice and generate_until) run unsteered and steered through ``lm_eval.simple_evaluate``;
α = 0 of a sweep reproduces the unsteered scores exactly; the steered log-probabilities move; and the real
``lm_eval`` command line runs the shipped task (slow: lm-eval indexes its ~10,000 built-in tasks)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vectors(smollm2, tmp_path_factory) -> Path:
    from valuelens.evals.capability import residual_norms
    from valuelens.evals.items import load_heldout_text
    from valuelens.serving.quick import quick_vectors

    paras = [p for p in load_heldout_text().split("\n\n") if p.strip()][:4]
    norms = [float(x) for x in residual_norms(smollm2, paras, max_length=64)]
    art = quick_vectors(smollm2, ("Benevolence",), n_queries=4, layers=[15], default_layer=15, norms=norms)
    return art.save_pretrained(tmp_path_factory.mktemp("harness") / "vectors")


def test_shipped_tasks_unsteered_and_steered(smollm2, vectors: Path) -> None:
    pytest.importorskip("lm_eval")
    from valuelens.serving.harness import harness_score, harness_sweep, register

    acc, se = harness_score(smollm2, [], "valuelens_capability_mc", limit=20)
    assert 0.25 < acc <= 1.0 and 0 < se < 0.2  # SmolLM2 beats chance on the easy set; lm-eval's stderr
    sweep = harness_sweep(smollm2, str(vectors), "Benevolence", [0.0, 0.6], limit=20)
    r0, r1 = sweep["rows"]
    assert r0["acc"] == pytest.approx(acc) and r0["acc_stderr"] == pytest.approx(se, rel=1e-6)
    assert abs(r1["mean_gold_logprob"] - r0["mean_gold_logprob"]) > 1e-3  # the steer moves the scores
    assert sweep["lm_eval"]["acc,none"] == pytest.approx(acc)  # lm-eval's own table reports the first α
    s = sweep["slope"]
    assert s["n_docs"] == 20 and 0.0 <= s["anti_steerable_fraction"] <= 1.0
    assert s["ci_low"] <= s["mean"] <= s["ci_high"] and sweep["layer"] == 15
    # generate_until, steered through model_args strings as the command line passes them
    cls = register()
    import lm_eval

    from valuelens.serving.harness import _task_manager

    for args in ({}, {"vectors": str(vectors), "value": "Benevolence", "alpha": "0.3"}):
        model = cls(lm=smollm2, batch_size=4, **args)
        res = lm_eval.simple_evaluate(model=model, tasks=["valuelens_short_answer"], limit=6,
                                      task_manager=_task_manager(["valuelens_short_answer"]), log_samples=True)
        row = res["results"]["valuelens_short_answer"]
        em = row["exact_match,first_line"]
        assert 0.0 <= em <= 1.0 and math.isfinite(row["exact_match_stderr,first_line"])
        answers = [s["filtered_resps"][0] for s in res["samples"]["valuelens_short_answer"]]
        assert len(answers) == 6 and any(a.strip() for a in answers)


@pytest.mark.slow
def test_lm_eval_command_line_runs_the_shipped_task(tmp_path: Path, vectors: Path) -> None:
    pytest.importorskip("lm_eval")
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "valuelens.cli", "lm-eval", "--model", "valuelens", "--model_args",
           f"pretrained=smollm2,vectors={vectors},value=Benevolence,alpha=0.2", "--tasks",
           "valuelens_capability_mc", "--limit", "8", "--output_path", str(out)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-2000:]
    results = json.loads(next(out.rglob("results_*.json")).read_text())
    assert 0.0 <= results["results"]["valuelens_capability_mc"]["acc,none"] <= 1.0
    assert "valuelens_capability_mc" in p.stdout
