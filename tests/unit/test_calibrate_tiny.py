"""The instrument check on a tiny random model: exact recovery of a planted direction, the organism pipeline
(LoRA context distillation, adapters that load only on their base), monitoring, calibration.json and the report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from valuelens.calibrate import CalibrateConfig, run_calibrate
from valuelens.calibrate.planted import PlantData, machinery_check, planted_recovery, random_unit
from valuelens.errors import ConfigError, ModelError
from valuelens.extract import ExtractConfig, run_extract
from valuelens.models import apply_adapter, split_adapter
from valuelens.report import build_report
from valuelens.testing import tiny_chat_lm


@pytest.fixture(scope="module")
def lm():  # type: ignore[no-untyped-def]
    return tiny_chat_lm()


@pytest.fixture(scope="module")
def cal_run(tmp_path_factory, lm) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    run = tmp_path_factory.mktemp("cal") / "run"
    run_extract(run, ExtractConfig.quick(model="tiny", judge="lexicon", n_intrinsic=24, n_prompted_per_value=8,
                                         max_new_tokens=8, values=["Benevolence", "Power", "Tradition"],
                                         gen_bf16=False), lm=lm)
    cfg = CalibrateConfig.quick(organism_train=12, organism_epochs=2, organism_eval_queries=4,
                                organism_shift_responses=8, plant_boot=40, ceiling_templates=1,
                                plant_strengths=[0.0, 0.5, 5.0], plant_fractions=[0.5, 1.0])
    return run, run_calibrate(run, cfg, lm=lm)


def _synthetic(n: int = 60, d: int = 16, noise: float = 1.0, seed: int = 0) -> PlantData:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, noise, (2 * n, d))
    half = n // 2
    groups = {("A", "intrinsic"): (np.arange(half), np.arange(half, n)),
              ("A", "prompted"): (np.arange(n, n + half), np.arange(n + half, 2 * n))}
    strata = np.array(["intrinsic"] * n + ["prompted/A"] * n, dtype=object)
    return PlantData(x=x, groups=groups, strata=strata, values=["A"], norm=1.0)


def test_a_strong_plant_is_recovered_exactly_and_a_null_is_not() -> None:
    data = _synthetic(noise=1e-6)  # no natural structure: v_prompt − v_int is the plant itself
    strong = planted_recovery(data, strength=1.0, n_boot=50)
    assert strong["cos"] == pytest.approx(1.0, abs=1e-6) and strong["ci"][0] > 0.999
    noisy = _synthetic(noise=1.0)
    zero = planted_recovery(noisy, strength=0.0, n_boot=50)
    assert abs(zero["cos"]) < zero["null_p95"] + 0.2 and zero["null_p95"] < 0.9
    # Recovery grows with strength and with the number of responses.
    weak, mid = (planted_recovery(noisy, strength=s, n_boot=50) for s in (0.05, 1.0))
    assert mid["cos"] > weak["cos"]
    # Resampling lowers a cosine; the interval is corrected for that bias, so it holds the point estimate.
    for r in (weak, mid):
        assert r["ci"][0] <= r["cos"] <= r["ci"][1]
    assert mid["bootstrap_bias"] < 0
    inter = planted_recovery(noisy, path="intrinsic", strength=3.0, n_boot=50)
    assert inter["cos"] > 0.8


def test_the_hook_plant_is_exactly_additive_at_its_layer(lm) -> None:
    recs = []
    for q in ("Hello there", "Should I go?", "Tell me more about it"):
        p = lm.chat.render(q)
        recs.append({"id": q, "prompt_ids": lm.tokenizer(p.text, add_special_tokens=False).input_ids,
                     "response_ids": [100, 101, 102, 103]})
    res = machinery_check(lm, recs, 1, random_unit(lm.spec.d_model, 0), 2.5, batch_size=2)
    assert res["max_abs_diff"] < 1e-4  # captured mean = natural mean + planted vector
    assert -1 <= res["last_layer_cos"] <= 1


def test_calibration_json_has_the_issue_keys(cal_run, lm) -> None:
    run, doc = cal_run
    p = doc["planted"]
    for k in ("recovery_cos", "recovery_ci", "null_cos_p95", "intrinsic_cos", "machinery"):
        assert k in p
    assert p["machinery"]["max_abs_diff"] < 1e-4
    o = doc["organism"]
    for k in ("questionnaire_delta", "expression_delta", "p_value", "shift_cos_target", "shift_rank",
              "monitor_rank", "control"):
        assert k in o, k
    assert o["results"]["Benevolence"]["train"]["steps"] >= 2
    # The value organism is tested against the control organism, the control against a placebo (another seed).
    assert set(o["organisms"]) == {"Benevolence", "control", "placebo"}
    for m in ("questionnaire", "activation"):
        assert {"delta", "ci", "p_value", "n"} <= set(o["vs_control"]["Benevolence"][m])
        assert o["control_vs_placebo"][m]["n"] == o["vs_control"]["Benevolence"][m]["n"]
    assert isinstance(o["detected"], bool) and isinstance(o["control_detected"], bool)
    # Best-of-k: each query's kept answer is the judge's favourite among its k sampled answers.
    gens = [json.loads(x) for x in (run / "calibrate/organisms/benevolence/train_generations.jsonl").open()]
    assert len(gens) == 3 * len({g["query_index"] for g in gens})
    from valuelens.extract import ExtractConfig as _E
    from valuelens.extract import make_judge
    judge = make_judge(_E.from_dict(json.loads((run / "config.json").read_text())["extract"]))
    tok = lm.tokenizer  # the judge scores the whole answer: the opener and the model's continuation
    texts = [tok.decode(tok(g["opener"], add_special_tokens=False).input_ids + g["response_ids"],
                        skip_special_tokens=True).strip() for g in gens]
    sc = np.nan_to_num(judge.judge(texts, ["Benevolence"]).scores[:, 0])
    best: dict[str, float] = {}
    for g, x in zip(gens, sc, strict=True):
        if g["response_ids"]:
            best[g["query"]] = max(best.get(g["query"], -1.0), float(x))
    kept = [json.loads(x) for x in (run / "calibrate/organisms/benevolence/train.jsonl").open()]
    assert len(kept) == len(best) == o["results"]["Benevolence"]["train"]["n_examples"]
    for k in kept:
        assert k["score"] == pytest.approx(best[k["query"]], abs=1e-4)
    # Openers: each kept answer starts with a shipped statement of its value, the control's with a neutral one,
    # and the tokens trained on start with the opener's tokens.
    from valuelens.calibrate.organism import load_openers
    for name, pool in (("benevolence", load_openers("Benevolence")), ("control", load_openers(None))):
        rows = [json.loads(x) for x in (run / f"calibrate/organisms/{name}/train.jsonl").open()]
        assert rows and all(r["opener"] in pool for r in rows)
        assert all(r["response"].startswith(tok.decode(tok(r["opener"], add_special_tokens=False).input_ids,
                                                       skip_special_tokens=True).strip()[:10]) for r in rows)
    assert not set(load_openers("Benevolence")) & set(load_openers(None))
    with pytest.raises(ConfigError, match="unknown value"):
        load_openers("Kindness")
    j = doc["judge"]
    for k in ("in_domain_macro_f1", "prompted_top1", "chance_top1"):
        assert k in j
    assert doc["checks"] and all("passed" in c for c in doc["checks"])
    assert json.loads((run / "calibration.json").read_text())["layer"] == doc["layer"]
    curve = (run / "calibrate" / "tables" / "planted_strength.csv").read_text()
    assert "strength" in curve and (run / "calibrate" / "figures" / "planted_sensitivity.png").is_file()
    html = build_report(run).read_text()
    assert html.index('id="instrument"') < html.index('id="findings"') and "planted direction" in html


def test_organism_adapter_loads_only_on_its_base(cal_run, lm) -> None:
    run, _ = cal_run
    adapter = run / "calibrate" / "organisms" / "benevolence" / "adapter"
    assert (adapter / "adapter_model.safetensors").is_file()
    olm = apply_adapter(lm, adapter)
    ids = torch.tensor([[1, 50, 60, 70]])
    with torch.no_grad():
        assert not torch.allclose(olm.model(ids).logits, lm.model(ids).logits)  # the fine-tune changed the model
    assert split_adapter(f"smollm2+{adapter}") == ("smollm2", str(adapter))
    assert split_adapter("org/model+v2") == ("org/model+v2", None) or split_adapter("org/model+v2")[1] is None
    with pytest.raises(ModelError, match="does not exist"):
        apply_adapter(lm, run / "nope")
    with pytest.raises(ModelError, match="another base model"):
        apply_adapter(tiny_chat_lm(seed=1), adapter)
    with pytest.raises(ModelError, match="not a PEFT adapter"):
        apply_adapter(lm, run)


def test_bad_calibrate_config() -> None:
    with pytest.raises(ConfigError, match="unknown calibrate part"):
        CalibrateConfig.from_dict({"parts": ["vibes"]})
    with pytest.raises(ConfigError, match="unknown calibrate config keys"):
        CalibrateConfig.from_dict({"organism_trian": 3})
    with pytest.raises(ConfigError, match="unknown value"):
        CalibrateConfig.from_dict({"organisms": ["Kindness"]})
