"""Ray on the embedded SmolLM2: a local Ray of two workers gives the single-process run's records and vectors,
also when one worker is killed mid-run (Ray retries its task; the shard resumes from its file)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from valuelens.extract import ExtractConfig, load_responses, run_extract

pytestmark = pytest.mark.integration

# 14 items in batches of 2: 7 batches, so each of the two generate shards has several batches to be killed in.
SMALL = dict(values=["Benevolence", "Power"], n_intrinsic=6, n_prompted_per_value=4, max_new_tokens=16,
             batch_size=2, chunk_size=4, capture_batch_size=4, judge="lexicon", judge_options={"min_hits": 1},
             min_count=1, seed=3)
QUERIES = ["How can I help and support a friend who is going through a hard time?",
           "What is the capital city of Australia?",
           "How do I care for my elderly parents while working full time?",
           "How many legs does a spider have?",
           "How can I gain more power, status and money at my company?",
           "What colour do you get by mixing blue and yellow?"]
# A local Ray of two workers (two CPUs), whatever the machine's size.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "VALUELENS_RAY_CPUS": "2"}


@pytest.fixture(scope="module")
def cfg_file(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("cfg")
    q = d / "queries.jsonl"
    q.write_text("".join(json.dumps({"id": f"t{i}", "text": t}) + "\n" for i, t in enumerate(QUERIES)))
    f = d / "cfg.json"
    f.write_text(json.dumps({**SMALL, "queries": str(q)}))
    return f


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cfg_file, smollm2) -> Path:
    """The single-process run (same thread count as the Ray workers)."""
    out = tmp_path_factory.mktemp("one") / "run"
    torch.set_num_threads(1)
    run_extract(out, ExtractConfig.from_dict(json.loads(cfg_file.read_text())), lm=smollm2)
    return out


def _cli(out: Path, cfg_file: Path) -> list[str]:
    return [sys.executable, "-m", "valuelens.cli", "extract", "--out", str(out), "--config", str(cfg_file), "--ray"]


def _assert_same_run(a: Path, b: Path) -> None:
    ra, rb = load_responses(a), load_responses(b)
    assert len(ra) == 14 and ra == rb  # the same JSONL records, field for field
    ids = [json.loads(x)["id"] for f in sorted((b / "responses").glob("*.jsonl")) for x in f.read_text().splitlines()]
    assert sorted(ids) == sorted(r["id"] for r in ra)  # every record once across the shard files
    assert sorted((a / "judgments.jsonl").read_text().splitlines()) == \
        sorted((b / "judgments.jsonl").read_text().splitlines())
    va, vb = load_file(str(a / "vectors.safetensors")), load_file(str(b / "vectors.safetensors"))
    assert va.keys() == vb.keys() and any(k.startswith("v/") for k in va)
    for k in va:
        torch.testing.assert_close(vb[k], va[k], atol=1e-5, rtol=0)


@pytest.mark.slow  # ~1.5 min on 2 shared cores (plus the ~1 min reference run)
def test_ray_with_two_workers_equals_one_process(tmp_path, cfg_file, reference):
    out = tmp_path / "ray"
    proc = subprocess.run(_cli(out, cfg_file), env=ENV, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "vectors written to" in proc.stdout
    _assert_same_run(reference, out)
    ray = json.loads((out / "manifest-ray.json").read_text())["ray"]
    assert ray["address"] == "local" and ray["shards"] == 2 and ray["cluster_resources"]["CPU"] == 2
    assert len({r["pid"] for r in ray["stages"]["generate"]["results"]}) == 2  # two workers shared the work


def _worker_running(task: str) -> psutil.Process | None:
    for p in psutil.process_iter(["cmdline"]):
        with_title = " ".join(p.info["cmdline"] or [])
        if with_title.startswith(f"ray::{task}"):
            return p
    return None


@pytest.mark.slow  # ~2 min on 2 shared cores
def test_a_killed_worker_loses_no_record(tmp_path, cfg_file, reference):
    out = tmp_path / "killed"
    shard = out / "responses" / "responses.shard-0-of-2.jsonl"
    proc = subprocess.Popen(_cli(out, cfg_file), env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    killed: int | None = None
    deadline = time.time() + 600
    try:
        while killed is None and proc.poll() is None and time.time() < deadline:
            n = shard.read_text().count("\n") if shard.exists() else 0
            worker = _worker_running("valuelens-generate-0-of-2") if n >= 2 else None
            if worker is not None:
                worker.send_signal(signal.SIGKILL)  # mid-shard: at least one batch written, more to come
                killed = worker.pid
            time.sleep(0.05)
        _out, stderr = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, "the generate shard finished before it could be killed"
    assert proc.returncode == 0, stderr[-3000:]
    _assert_same_run(reference, out)
    results = json.loads((out / "manifest-ray.json").read_text())["ray"]["stages"]["generate"]["results"]
    # Ray retried the task in another worker process.
    assert next(r for r in results if r["shard"] == [0, 2])["pid"] != killed
