"""Ray plumbing without a model: addresses, the probe of a cluster that does not answer, options, the runtime
environment, and a task's user error coming back as the same one-line error (not retried)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from valuelens.distributed import (
    RayOptions,
    RayUnavailable,
    _host_port,
    _probe,
    _runtime_env,
    run_extract_ray,
)
from valuelens.errors import ConfigError, DataError
from valuelens.extract import ExtractConfig


def _closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_addresses():
    assert _host_port("127.0.0.1:6379") == ("127.0.0.1", 6379)
    assert _host_port("ray://127.0.0.1:10001") == ("127.0.0.1", 10001)
    assert _host_port("ray://localhost") == ("localhost", 10001)
    assert _host_port("localhost") == ("localhost", 6379)
    assert _host_port("[::1]:7000") == ("::1", 7000)
    assert _host_port("auto") is None
    with pytest.raises(RayUnavailable, match="port is not a number"):
        _host_port("127.0.0.1:abc")


def test_probe_of_an_address_that_does_not_answer_is_one_line_and_fast():
    port = _closed_port()
    t0 = time.time()
    with pytest.raises(RayUnavailable) as exc:
        _probe(f"127.0.0.1:{port}", timeout=5.0)
    assert time.time() - t0 < 5
    msg = str(exc.value)
    assert f"127.0.0.1:{port}" in msg and "ray start --head" in msg and "\n" not in msg
    with socket.socket() as srv:  # something listening: the probe passes
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        _probe(f"127.0.0.1:{srv.getsockname()[1]}", timeout=5.0)


def test_options_are_checked():
    assert RayOptions().local and RayOptions(address="local").local and not RayOptions(address="h:1").local
    with pytest.raises(ConfigError):
        RayOptions(shards=0)
    with pytest.raises(ConfigError):
        RayOptions(num_cpus=0)


def test_runtime_env_carries_the_model_placement(monkeypatch):
    monkeypatch.setenv("VALUELENS_DEVICE", "cpu")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("SOME_SECRET_TOKEN", "x")
    env = _runtime_env()["env_vars"]
    assert env["VALUELENS_DEVICE"] == "cpu" and env["HF_HUB_OFFLINE"] == "1" and "SOME_SECRET_TOKEN" not in env


def test_cli_ray_address_that_does_not_answer(tmp_path):
    port = _closed_port()
    proc = subprocess.run([sys.executable, "-m", "valuelens.cli", "extract", "--quick", "--out", str(tmp_path / "r"),
                           "--ray", f"127.0.0.1:{port}"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "no Ray cluster answers" in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "r").exists()  # nothing was started


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray instance with 2 CPUs for the tests below (``connect`` uses it instead of starting one)."""
    ray = pytest.importorskip("ray")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=256 * 2**20, runtime_env=_runtime_env())
    yield ray
    ray.shutdown()


def test_a_task_user_error_comes_back_as_the_same_one_line_error(tmp_path, local_ray):
    """The judge stage of a run whose items have no responses yet: a DataError raised in the Ray worker comes
    back as is, once (user errors are not retried)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.json").write_text('{"model_hash": "h"}')
    (run / "items.jsonl").write_text('{"id": "intrinsic/q1"}\n')
    t0 = time.time()
    with pytest.raises(DataError, match="1 of 1 items have no response yet"):
        run_extract_ray(run, ExtractConfig.quick(judge="lexicon"), opts=RayOptions(max_retries=3), stages=["judge"])
    assert time.time() - t0 < 120
    assert local_ray.is_initialized()  # the caller's Ray instance is left running


def test_ray_extract_on_the_tiny_model_equals_one_process(tmp_path, tiny_folder, local_ray):
    """Every stage as Ray tasks (3 generate and activation shards on 2 local workers): the same records,
    judgments and vectors as a single process."""
    import json

    import torch
    from safetensors.torch import load_file

    from valuelens.extract import load_responses, run_extract

    cfg = dict(model=str(tiny_folder), values=["Benevolence", "Power"], n_intrinsic=10, n_prompted_per_value=5,
               max_new_tokens=6, batch_size=3, chunk_size=4, capture_batch_size=3, judge="lexicon",
               judge_options={"min_hits": 1}, label_mode="rank", min_count=1, gen_bf16=False, seed=1)
    run_extract(tmp_path / "one", ExtractConfig.from_dict(cfg))
    run_extract_ray(tmp_path / "ray", ExtractConfig.from_dict(cfg), opts=RayOptions(shards=3))
    a, b = load_responses(tmp_path / "one"), load_responses(tmp_path / "ray")
    assert len(a) == 20 and a == b
    assert len(list((tmp_path / "ray" / "responses").glob("responses.shard-*-of-3.jsonl"))) == 3
    ja = (tmp_path / "one" / "judgments.jsonl").read_text().splitlines()
    jb = (tmp_path / "ray" / "judgments.jsonl").read_text().splitlines()
    assert sorted(ja) == sorted(jb)
    va, vb = load_file(str(tmp_path / "one" / "vectors.safetensors")), load_file(str(tmp_path / "ray" /
                                                                                      "vectors.safetensors"))
    assert va.keys() == vb.keys() and any(k.startswith("v/") for k in va)
    for k in va:
        torch.testing.assert_close(vb[k], va[k], atol=1e-5, rtol=0)
    ray_manifest = json.loads((tmp_path / "ray" / "manifest-ray.json").read_text())["ray"]
    assert ray_manifest["shards"] == 3 and ray_manifest["stages"]["generate"]["tasks"] == 3
    assert ray_manifest["cluster_resources"]["CPU"] == 2.0
