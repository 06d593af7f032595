"""`valuelens extract` end to end on the embedded model: a real kill midway, resume, equality; bad inputs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from valuelens.errors import ConfigError, DataError
from valuelens.extract import ExtractConfig, run_extract
from valuelens.judges import Judge, JudgeResult, register_judge

pytestmark = pytest.mark.integration

SMALL = dict(values=["Benevolence", "Power"], n_intrinsic=6, n_prompted_per_value=4, max_new_tokens=16,
             batch_size=2, chunk_size=4, capture_batch_size=4, judge="lexicon", judge_options={"min_hits": 1},
             min_count=1, seed=3)
# Queries that make both sides of the lexicon judge likely within 16 tokens, so vectors exist to compare.
QUERIES = ["How can I help and support a friend who is going through a hard time?",
           "What is the capital city of Australia?",
           "How do I care for my elderly parents while working full time?",
           "How many legs does a spider have?",
           "How can I gain more power, status and money at my company?",
           "What colour do you get by mixing blue and yellow?"]


@pytest.fixture
def small_cfg(tmp_path):
    q = tmp_path / "queries.jsonl"
    q.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(QUERIES)))
    return {**SMALL, "queries": str(q)}


def _cli(out: Path, cfg_file: Path) -> list[str]:
    return [sys.executable, "-m", "valuelens.cli", "extract", "--out", str(out), "--config", str(cfg_file)]


def _count_lines(path: Path) -> int:
    return path.read_text().count("\n") if path.exists() else 0


def test_extract_killed_midway_resumes_to_the_same_result(tmp_path, small_cfg):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(small_cfg))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    full = tmp_path / "full"
    subprocess.run(_cli(full, cfg_file), check=True, env=env, capture_output=True)

    killed = tmp_path / "killed"
    resp = killed / "responses" / "responses.shard-0-of-1.jsonl"
    proc = subprocess.Popen(_cli(killed, cfg_file), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _count_lines(resp) < 4 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    n_at_kill = _count_lines(resp)
    assert 4 <= n_at_kill < 14  # 6 intrinsic + 2×4 prompted = 14 items
    subprocess.run(_cli(killed, cfg_file), check=True, env=env, capture_output=True)

    a = [json.loads(x) for x in (full / "responses" / "responses.shard-0-of-1.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in resp.read_text().splitlines()]
    assert len(b) == 14 and len({r["id"] for r in b}) == 14  # nothing lost, nothing duplicated
    by_id = {r["id"]: r for r in b}
    for r in a:
        assert by_id[r["id"]]["response_ids"] == r["response_ids"]
        assert by_id[r["id"]]["prompt"] == r["prompt"]
    va, vb = load_file(str(full / "vectors.safetensors")), load_file(str(killed / "vectors.safetensors"))
    assert va.keys() == vb.keys() and any(k.startswith("v/") for k in va)
    for k in va:
        torch.testing.assert_close(va[k], vb[k], atol=1e-6, rtol=1e-6)
    for ca, cb in zip(sorted((full / "activations").iterdir()), sorted((killed / "activations").iterdir()),
                      strict=True):
        for k, t in load_file(str(ca)).items():
            torch.testing.assert_close(t, load_file(str(cb))[k], atol=0, rtol=0)
    manifest = json.loads((killed / "manifest.json").read_text())
    assert manifest["model"]["model_hash"] and manifest["versions"]["torch"]
    assert (killed / "tables" / "judge_counts.csv").exists() and (killed / "figures" / "cosine_by_layer.png").exists()


def test_every_response_has_its_exact_prompt_and_intrinsic_has_no_system_turn(tmp_path, smollm2):
    run_extract(tmp_path, ExtractConfig.from_dict(SMALL), stages=["prepare"], lm=smollm2)
    items = [json.loads(x) for x in (tmp_path / "items.jsonl").read_text().splitlines()]
    intrinsic = [it for it in items if it["condition"] == "intrinsic"]
    prompted = [it for it in items if it["condition"] == "prompted"]
    assert len(intrinsic) == 6 and len(prompted) == 8
    assert all(it["prompt"]["text"].startswith("<|im_start|>user\n") for it in intrinsic)
    for it in prompted:
        assert it["prompt"]["system"] and it["prompt"]["text"].startswith("<|im_start|>system\n" + it["prompt"]["system"])


@register_judge("_useless")
class _UselessJudge(Judge):
    """A user-supplied judge that never produces a usable label."""

    name = "_useless"

    def judge_batch(self, texts, values, contexts=None):
        n, k = len(texts), len(values)
        return JudgeResult(values=list(values), labels=np.zeros((n, k), bool), scores=np.full((n, k), np.nan),
                           valid=np.zeros((n, k), bool))


def test_judge_with_nothing_usable_reports_and_skips(tmp_path, smollm2):
    cfg = ExtractConfig.from_dict({**SMALL, "judge": "_useless", "judge_options": {}, "n_intrinsic": 2,
                                  "n_prompted_per_value": 2})
    summary = run_extract(tmp_path, cfg, lm=smollm2)
    assert summary["values_with_both"] == []
    assert {(s["value"], s["condition"]) for s in summary["skipped"]} == {
        (v, c) for v in ("Benevolence", "Power") for c in ("intrinsic", "prompted")}
    counts = (tmp_path / "tables" / "judge_counts.csv").read_text().splitlines()
    assert "Benevolence,intrinsic,0,0,2,0" in counts


def test_bad_inputs(tmp_path, smollm2):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        run_extract(tmp_path / "a", ExtractConfig.from_dict({**SMALL, "queries": str(empty)}), lm=smollm2)
    with pytest.raises(ConfigError, match="unknown value 'Kindness'"):
        ExtractConfig.from_dict({**SMALL, "values": ["Kindness"]})
    with pytest.raises(ConfigError, match="unknown extract config keys: n_querys"):
        ExtractConfig.from_dict({**SMALL, "n_querys": 3})
    with pytest.raises(ConfigError, match="layer 30 is out of range"):
        run_extract(tmp_path / "b", ExtractConfig.from_dict({**SMALL, "layer": 30, "n_intrinsic": 2,
                                                              "n_prompted_per_value": 1}), lm=smollm2)
    with pytest.raises(DataError, match="stage 'prepare' has not run"):
        run_extract(tmp_path / "c", ExtractConfig.from_dict(SMALL), stages=["judge"], lm=smollm2)
    run_extract(tmp_path / "d", ExtractConfig.from_dict(SMALL), stages=["prepare"], lm=smollm2)
    # Nothing produced yet under the old config (only prepare files): a new config replaces it (issue 15)...
    run_extract(tmp_path / "d", ExtractConfig.from_dict({**SMALL, "seed": 4}), stages=["prepare", "generate"],
                lm=smollm2)
    # ...but once responses exist, a different config is refused.
    with pytest.raises(ConfigError, match="different config"):
        run_extract(tmp_path / "d", ExtractConfig.from_dict({**SMALL, "seed": 5}), stages=["prepare"], lm=smollm2)


def test_cli_user_error_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "valuelens.cli", "extract", "--out", str(tmp_path / "x"),
                          "--values", "Kindness", "--quick"], capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "valuelens: error: unknown value 'Kindness'; valid values: Self-Direction, Stimulation, Hedonism, "
        "Achievement, Power, Security, Conformity, Tradition, Benevolence, Universalism"]
