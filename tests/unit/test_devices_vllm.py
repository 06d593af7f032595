"""The optional vLLM backend where it cannot run (no vLLM, no GPU here): generation falls back to HF with the
reason logged, and the records are exactly the HF backend's."""

from __future__ import annotations

import pytest
import torch
from test_devices import items_for, tiny_lm

from valuelens.backends_vllm import item_seed, vllm_unavailable
from valuelens.errors import ConfigError
from valuelens.generate import GenerationConfig, generate_to_file
from valuelens.hooks import Steer


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


@pytest.mark.parametrize("backend", ["vllm", "auto"])
def test_falls_back_to_hf_with_the_reason_logged(lm, tmp_path, capsys, backend):
    items = items_for(lm, 7)
    hf = generate_to_file(lm, items, tmp_path / "hf.jsonl", GenerationConfig(max_new_tokens=4, batch_size=3,
                                                                             do_sample=True, seed=4))
    capsys.readouterr()
    got = generate_to_file(lm, items, tmp_path / f"{backend}.jsonl",
                           GenerationConfig(max_new_tokens=4, batch_size=3, do_sample=True, seed=4, backend=backend))
    err = capsys.readouterr().err
    reason = vllm_unavailable(lm)
    assert reason is not None
    assert f"generating with HF transformers, not vLLM: {reason}" in err
    assert got == hf  # the same records as the HF backend: nothing vLLM-specific leaked in


def test_reasons(lm, tmp_path, monkeypatch, capsys):
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        assert "vllm is not installed" in vllm_unavailable(lm)
        # With a vllm package importable, the next check on this machine is the GPU.
        (tmp_path / "vllm").mkdir()
        (tmp_path / "vllm" / "__init__.py").write_text("")
        monkeypatch.syspath_prepend(str(tmp_path))
        importlib.invalidate_caches()
    if not torch.cuda.is_available():
        assert "no CUDA GPU is visible" in vllm_unavailable(lm)
    assert "steered generation runs on the HF hooks" in vllm_unavailable(lm, steered=True)
    # Steered runs never go to vLLM, whatever the backend says.
    items = items_for(lm, 3)
    generate_to_file(lm, items, tmp_path / "s.jsonl", GenerationConfig(max_new_tokens=3, backend="vllm"),
                     interventions=[Steer(torch.randn(64), (1,), 1.0)])
    assert "steered generation runs on the HF hooks" in capsys.readouterr().err


def test_seeds_and_config():
    assert item_seed(5, 0) == item_seed(5, 0) and len({item_seed(5, r) for r in range(64)}) == 64
    assert item_seed(5, 1) != item_seed(6, 1)
    with pytest.raises(ConfigError, match="backend"):
        GenerationConfig(backend="tgi")
    assert GenerationConfig().backend == "hf"  # the default keeps today's generation
