"""Analysis sections as Ray tasks on the tiny chat model: the same section summaries and findings as one
process (sections started as their requirements finish, requirements restored from their cached files)."""

from __future__ import annotations

import json
import shutil

import pytest

from valuelens.analysis import AnalyzeConfig, run_analyze
from valuelens.distributed import RayOptions, run_analyze_ray
from valuelens.extract import ExtractConfig, run_extract
from valuelens.models import load_model

ANALYZE = dict(alpha=0.2, n_free=2, free_max_new_tokens=6, vector_resamples=20, gen_bf16=False,
               sections=["steering", "circumplex", "dose"])


@pytest.mark.slow  # ~1.5-4 min on 2 shared cores (both analyses; Ray start-up and two workers)
def test_ray_sections_equal_one_process(tmp_path):
    pytest.importorskip("ray")
    from valuelens.testing import tiny_chat_lm

    tiny = tiny_chat_lm()
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    lm = load_model(str(tmp_path / "m"), device="cpu")
    cfg = ExtractConfig.quick(model=str(tmp_path / "m"), judge="lexicon", n_intrinsic=12, n_prompted_per_value=5,
                              max_new_tokens=6, values=["Benevolence", "Power", "Tradition"], gen_bf16=False)
    run_extract(tmp_path / "one", cfg, lm=lm)
    shutil.copytree(tmp_path / "one", tmp_path / "ray")
    a = run_analyze(tmp_path / "one", AnalyzeConfig.quick(**ANALYZE), lm=lm, log=None)
    b = run_analyze_ray(tmp_path / "ray", AnalyzeConfig.quick(**ANALYZE), opts=RayOptions(local_cpus=2))
    assert a == b
    ran = sorted(p.parent.name for p in (tmp_path / "one" / "analyze").glob("*/summary.json"))
    assert ran == ["capability", "circumplex", "dose", "steering", "vectors"]  # requirements ran too

    def strip(p):  # timing fields differ
        return {k: v for k, v in json.loads(p.read_text()).items() if not k.startswith("_")}
    for name in ran:
        assert strip(tmp_path / "one" / "analyze" / name / "summary.json") == \
            strip(tmp_path / "ray" / "analyze" / name / "summary.json"), name
    record = json.loads((tmp_path / "ray" / "manifest-analyze-ray.json").read_text())["ray"]
    assert sorted(record["sections"]) == ran
    assert json.loads((tmp_path / "ray" / "findings.json").read_text())["findings"] == b
