"""`valuelens run --quick` on the embedded model: every stage's tables and figures, findings and the report."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from valuelens.analysis import AnalyzeConfig, run_analyze
from valuelens.errors import ConfigError, DataError
from valuelens.vectors import ValueVectors

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "quick"
    proc = subprocess.run([sys.executable, "-m", "valuelens.cli", "run", "--quick", "--out", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"report: {out / 'report.html'}" in proc.stdout
    # A log a person can read: no carriage-return progress bars, no line over 300 characters, a closing table.
    log = proc.stdout + proc.stderr
    assert "\r" not in log and max(len(line) for line in log.splitlines()) <= 300
    assert "steer-prompted" in proc.stdout and "effect [95% CI]" in proc.stdout
    (out / "run.log").write_text(log)
    return out


def test_every_stage_wrote_its_tables_and_figures(quick_run):
    run = quick_run
    for f in ["manifest.json", "manifest-analyze.json", "manifest-run.json", "vectors.safetensors",
              "tables/judge_counts.csv", "tables/vectors_by_layer.csv", "tables/compliance_by_layer.csv",
              "figures/cosine_by_layer.png", "figures/norms_by_layer.png", "figures/shared_axis_cosines.png",
              "analyze/capability/tables/residual_norms.csv", "analyze/capability/tables/guard.csv",
              "analyze/capability/figures/guard.png", "analyze/capability/tables/mc_items.csv",
              "analyze/neurons/tables/neurons.csv", "analyze/neurons/tables/neuron_counts.png",
              "analyze/questionnaire/tables/mean_effect_en.csv", "analyze/questionnaire/figures/steering_effect_en.png",
              "analyze/steering/tables/expression_rates.csv", "analyze/diversity/tables/diversity.csv",
              "analyze/diversity/tables/logit_lens.csv", "analyze/circumplex/tables/circumplex.csv",
              "analyze/circumplex/figures/circumplex_pca.png", "analyze/compliance/tables/instruction_following.csv",
              "analyze/diversity/tables/diversity_per_condition.csv", "analyze/agreement/tables/judge_agreement.csv",
              "analyze/agreement/tables/prompted_target_rates.csv",
              "analyze/agreement/figures/prompted_target_discrimination.png",
              "analyze/dose/tables/dose_response.csv", "analyze/dose/figures/dose_response.png",
              "findings.json", "report.html"]:
        assert (run / f).is_file(), f"missing {f}"
    manifest = json.loads((run / "manifest-run.json").read_text())
    assert manifest["model"]["model_hash"] and manifest["versions"]["transformers"]
    assert manifest["config"]["extract"]["seed"] == 0
    findings = {f["id"]: f for f in json.loads((run / "findings.json").read_text())["findings"]}
    assert {"distinct-mechanisms", "steer-intrinsic", "steer-prompted", "circumplex", "cross-lingual",
            "compliance-channel", "dose-response", "expression-prompted"} <= set(findings)
    assert findings["cross-lingual"]["status"] == "untestable"  # SmolLM2 is English-only, and the report says so
    assert "English-only" in findings["cross-lingual"]["reason"]
    for f in findings.values():  # every finding carries its statistics, or says why it has none
        assert f["status"] in ("reproduced", "not detected", "contradicted", "untestable")
        assert f["status"] == "untestable" or (f["n"] > 0 and f["p_value"] is not None and f["mde"] is not None)
    html = (run / "report.html").read_text()
    pngs = list(run.rglob("*.png"))
    assert len(pngs) >= 7 and html.count("data:image/png;base64,") == len(pngs) and "Findings" in html


def test_the_instrument_check_sees_a_planted_direction_and_measures_the_judge(quick_run):
    doc = json.loads((quick_run / "calibration.json").read_text())
    p = doc["planted"]
    # The headline plant (~2x the model's own value vectors) is recovered almost exactly, far above the null;
    # the sensitivity curve sees much smaller plants.
    assert p["recovery_cos"] >= 0.9 > p["null_cos_p95"] and p["intrinsic_cos"] > p["intrinsic_null_p95"]
    assert p["recovery_ci"][0] <= p["recovery_cos"] <= p["recovery_ci"][1]
    assert p["smallest_strength_recovered_prompted"] <= 0.1
    assert p["machinery"]["relative_diff"] < 1e-4  # hooks plant exactly what the activation arithmetic assumes
    j = doc["judge"]
    assert {"in_domain_macro_f1", "prompted_top1", "chance_top1"} <= set(j)
    assert j["in_domain_top1_ci"][0] > j["chance_top1"] and j["better_than_chance_in_domain"]
    assert set(doc["ceiling"]["per_value"]) == {"Benevolence", "Power", "Tradition"}
    html = (quick_run / "report.html").read_text()
    assert html.index('id="instrument"') < html.index('id="findings"')


def test_questionnaire_has_controls(quick_run):
    import pandas as pd

    df = pd.read_csv(quick_run / "analyze/questionnaire/tables/mean_effect_en.csv")
    assert {"intrinsic", "prompted", "intrinsic_orth", "prompted_orth", "shared", "combined", "random",
            "ablate_shared", "ablate_random", "neurons_shared", "neurons_random"} <= set(df["condition"])
    cap = json.loads((quick_run / "analyze/capability/summary.json").read_text())
    assert cap["alpha"] in (0.02, 0.1, 0.4) and isinstance(cap["guard_exceeded"], bool)
    sweep = pd.read_csv(quick_run / "analyze/capability/tables/guard.csv")
    # v_int and v_prompt of each guarded value, and the random control, at every α, with CIs
    assert sweep["direction"].nunique() == 2 * len(cap["guard_values"]) + 1 >= 3
    assert (sweep["mc_loss_ci_low"] <= sweep["mc_loss"]).all() and sweep["ppl_increase"].notna().all()


def test_dose_response_spans_the_guard_with_a_random_control(quick_run):
    import pandas as pd

    cap = json.loads((quick_run / "analyze/capability/summary.json").read_text())
    df = pd.read_csv(quick_run / "analyze/dose/tables/dose_response.csv")
    assert set(df["kind"]) == {"prompted", "random"} and sorted(set(df["alpha"])) == [0.02, 0.1, 0.4]  # guard grid
    assert (df["beyond_guard"] == (df["alpha"] > cap["alpha"] + 1e-12)).all()
    assert 1 <= df["target"].nunique() <= 2 and len(df) == 6 * df["target"].nunique()  # 2 kinds × 3 α
    findings = {f["id"]: f for f in json.loads((quick_run / "findings.json").read_text())["findings"]}
    assert findings["dose-response"]["status"] in ("reproduced", "not detected", "contradicted")
    assert findings["dose-response"]["n"] == 2 * df["target"].nunique()  # 2 items per value


def test_diversity_compares_equal_sized_groups_and_judges_are_compared(quick_run):
    import pandas as pd

    pg = pd.read_csv(quick_run / "analyze/diversity/tables/diversity_per_condition.csv")
    assert pg["n"].nunique() == 1 and pg["n"].iloc[0] == AnalyzeConfig.quick().n_free
    assert "baseline" in set(pg["kind"]) and "random" in set(pg["kind"])
    div = pd.read_csv(quick_run / "analyze/diversity/tables/diversity.csv").set_index("kind")
    assert div.loc["random", "distinct_2_minus_random"] == 0.0
    ag = pd.read_csv(quick_run / "analyze/agreement/tables/judge_agreement.csv")
    assert set(ag["judge_b"]) == {"lexicon"} and (ag["n"] > 0).all()
    assert ((ag["agreement"] >= 0) & (ag["agreement"] <= 1)).all()
    rates = pd.read_csv(quick_run / "analyze/agreement/tables/prompted_target_rates.csv")
    # the extract's judge is the detector recalibrated on chat answers (judge_options.chat_calibration)
    judges = set(rates["judge"])
    assert "lexicon" in judges and any(j.startswith("detector") for j in judges) and len(judges) == 2
    assert (rates["discrimination"] == rates["rate_prompted_for_value"] - rates["rate_prompted_for_other"]).all()


def test_analyze_rerun_is_resumed_and_bad_inputs(quick_run, tmp_path, smollm2):
    before = json.loads((quick_run / "analyze/neurons/summary.json").read_text())
    run_analyze(quick_run, AnalyzeConfig.quick(), lm=smollm2)  # every section cached: nothing recomputed
    assert json.loads((quick_run / "analyze/neurons/summary.json").read_text()) == before

    # A missing stage.
    with pytest.raises(DataError, match=r"no vectors\.safetensors"):
        run_analyze(tmp_path, AnalyzeConfig.quick(), lm=smollm2)
    # Vectors from another model.
    other = tmp_path / "other"
    shutil.copytree(quick_run, other, ignore=shutil.ignore_patterns("analyze", "responses", "activations"))
    vv = ValueVectors.load(other / "vectors.safetensors")
    vv.model_hash = "0" * 64
    vv.save(other / "vectors.safetensors")
    with pytest.raises(ConfigError, match="another model"):
        run_analyze(other, AnalyzeConfig.quick(), lm=smollm2)
    with pytest.raises(ConfigError, match="unknown analyze section"):
        AnalyzeConfig.from_dict({"sections": ["vibes"]})
    assert torch.isfinite(ValueVectors.load(quick_run / "vectors.safetensors").extra_vectors["compliance"]).all()


def test_export_vector_as_llama_cpp_control_vector(quick_run, tmp_path):
    import gguf

    out = tmp_path / "power.gguf"
    proc = subprocess.run([sys.executable, "-m", "valuelens.cli", "export-vector", str(quick_run), "--value",
                           "power", "--kind", "prompted", "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    reader = gguf.GGUFReader(str(out))
    names = {t.name for t in reader.tensors}
    assert "direction.15" in names and "direction.0" not in names  # llama.cpp rejects block 0
    vv = ValueVectors.load(quick_run / "vectors.safetensors")
    t = next(t for t in reader.tensors if t.name == "direction.15")
    torch.testing.assert_close(torch.as_tensor(t.data.copy()).flatten(), vv.get("Power", "prompted")[15])


def test_crosslingual_section_runs_the_same_conditions_in_every_language(quick_run, tmp_path, smollm2):
    import pandas as pd

    # SmolLM2 is English-only, so the default skips it; forcing a language exercises the machinery for real.
    run = tmp_path / "xl"
    shutil.copytree(quick_run, run)
    cfg = AnalyzeConfig.quick(sections=["crosslingual"], languages=["zh"], crosslingual_conditions=["prompted", "random"],
                              pvq_items_per_value=1)  # one item per value: the machinery, at half the cost
    findings = {f["id"]: f for f in run_analyze(run, cfg, lm=smollm2)}
    df = pd.read_csv(run / "analyze/crosslingual/tables/by_language.csv")
    assert set(df["lang"]) == {"en", "zh"} and set(df["condition"]) == {"prompted"}  # each vs its random control
    per = pd.read_csv(run / "analyze/crosslingual/tables/steering_effect_zh.csv")
    en = pd.read_csv(run / "analyze/crosslingual/tables/steering_effect_en.csv")
    assert (per["lang"] == "zh").all() and set(per["condition"]) == {"prompted", "random"}
    assert set(per["target"]) == set(en["target"]) and len(per) == 2 * per["target"].nunique() >= 2
    assert (run / "analyze/crosslingual/figures/by_language.png").is_file()
    assert findings["cross-lingual"]["status"] in ("reproduced", "not detected", "contradicted")
    assert "zh" in findings["cross-lingual"]["ours"] and findings["cross-lingual"]["n"] > 0
    with pytest.raises(ConfigError, match="unknown crosslingual_conditions"):
        run_analyze(run, AnalyzeConfig.quick(sections=["crosslingual"], languages=["zh"],
                                             crosslingual_conditions=["vibes"]), lm=smollm2)


def test_changing_one_sections_settings_reruns_only_that_section(quick_run, tmp_path, smollm2):
    run = tmp_path / "rerun"
    shutil.copytree(quick_run, run)
    summaries = {s: (run / f"analyze/{s}/summary.json").read_text() for s in ("capability", "questionnaire", "dose")}
    run_analyze(run, AnalyzeConfig.quick(dose_alphas=[0.05, 0.2], sections=["questionnaire", "dose"]), lm=smollm2)
    for s in ("capability", "questionnaire"):
        assert (run / f"analyze/{s}/summary.json").read_text() == summaries[s], f"{s} was recomputed"
    dose = json.loads((run / "analyze/dose/summary.json").read_text())
    assert dose["alphas"] == [0.05, 0.2] and json.loads(summaries["dose"])["alphas"] == AnalyzeConfig.quick().alphas


def test_findings_rederive_from_the_section_files_without_a_model(quick_run, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(quick_run, run, ignore=shutil.ignore_patterns("activations", "responses"))
    before = json.loads((run / "findings.json").read_text())
    (run / "findings.json").unlink()
    proc = subprocess.run([sys.executable, "-m", "valuelens.cli", "analyze", str(run), "--findings-only"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads((run / "findings.json").read_text()) == before
    assert "steer-prompted" in proc.stdout and max(len(line) for line in proc.stdout.splitlines()) <= 110
    proc = subprocess.run([sys.executable, "-m", "valuelens.cli", "report", str(run)], capture_output=True, text=True)
    assert proc.returncode == 0 and (run / "report.html").is_file()


def test_a_value_organism_on_smollm2_trains_loads_and_is_monitored(quick_run, tmp_path, smollm2):
    """The organism pipeline for real on SmolLM2, at a size a test can afford (its detection power is measured
    by `valuelens calibrate --quick`, docs/calibration.md): best-of-2 value-prompted answers, a LoRA that learns
    them, an adapter that loads by name, and `valuelens monitor` on the organism's training file."""
    from valuelens.calibrate import CalibrateConfig, run_calibrate
    from valuelens.models import load_model

    run = tmp_path / "org"
    shutil.copytree(quick_run, run, ignore=shutil.ignore_patterns("analyze"))
    cfg = CalibrateConfig.quick(parts=["organism"], organism_train=12, organism_epochs=2, organism_eval_queries=4,
                                organism_shift_responses=8, organism_candidates=2, organism_placebo=False,
                                pvq_items_per_value=2)
    doc = run_calibrate(run, cfg, lm=smollm2)
    assert doc["planted"]["recovery_cos"] >= 0.9  # the run's earlier parts are kept beside the new one
    o = doc["organism"]
    train = o["results"]["Benevolence"]["train"]
    assert train["n_examples"] == 12 and train["loss_last"] < train["loss_first"]
    assert set(o["vs_control"]["Benevolence"]) >= {"questionnaire", "activation", "expression"}
    kept = [json.loads(x) for x in (run / "calibrate/organisms/benevolence/train.jsonl").open()]
    assert len(kept) == 12 and all("score" in k for k in kept)
    # The adapter loads wherever a model name is accepted, and changes the model.
    adapter = run / "calibrate/organisms/benevolence/adapter"
    org = load_model(f"smollm2+{adapter}")
    ids = smollm2.tokenizer("Should I call my mother today?", return_tensors="pt").input_ids
    with torch.no_grad():
        assert not torch.allclose(org.model(ids).logits, smollm2.model(ids).logits, atol=1e-3)
    proc = subprocess.run([sys.executable, "-m", "valuelens.cli", "monitor",
                           str(run / "calibrate/organisms/benevolence/train.jsonl"), "--vectors", str(run), "--json"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    mon = json.loads(proc.stdout)
    assert mon["n"] == 12 and set(mon["ranking"]) == {"Benevolence", "Power", "Tradition"}
