"""`valuelens run --quick --ray` equals `valuelens run --quick` on the embedded model: the same responses,
vectors within 1e-5 and the same findings (analysis limited to two cheap sections and no instrument check, to keep the test short)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from valuelens.extract import load_responses

pytestmark = pytest.mark.integration

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "VALUELENS_RAY_CPUS": "2"}


@pytest.mark.slow  # two quick runs without the instrument check: ~3 min on 2 cores
def test_run_quick_with_ray_equals_without(tmp_path):
    acfg = tmp_path / "analyze.json"
    acfg.write_text(json.dumps({"sections": ["circumplex", "neurons"]}))
    ccfg = tmp_path / "calibrate.json"  # the instrument check runs in the driver either way: skipped here
    ccfg.write_text(json.dumps({"parts": []}))
    outs = {}
    for name, extra in (("B", []), ("A", ["--ray"])):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "-m", "valuelens.cli", "run", "--quick", "--out", str(out),
                               "--analyze-config", str(acfg), "--calibrate-config", str(ccfg), *extra], env=ENV, capture_output=True, text=True,
                              timeout=1500)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "estimate: 48 responses" in proc.stderr + proc.stdout  # printed before the fresh run
        outs[name] = out
    a, b = outs["A"], outs["B"]
    assert load_responses(a) == load_responses(b)
    va, vb = load_file(str(a / "vectors.safetensors")), load_file(str(b / "vectors.safetensors"))
    assert va.keys() == vb.keys()
    for k in va:
        torch.testing.assert_close(va[k], vb[k], atol=1e-5, rtol=0)
    fa = json.loads((a / "findings.json").read_text())["findings"]
    fb = json.loads((b / "findings.json").read_text())["findings"]
    assert fa == fb
    assert (a / "manifest-ray.json").exists() and (a / "manifest-analyze-ray.json").exists()
    assert (a / "report.html").exists()
