"""Devices and precision, on the CPU.

A tiny random Llama is split with accelerate the way ``--device-map`` splits a large model: the embedding and
layers 0–1 stay resident, layers 2–3 are offloaded (their weights sit on the meta device and are loaded from an
offload store only for their forward pass). Capture, steering, ablation and neuron scaling on the split model
must give the single-device numbers, and hook constants must be copied to a layer's device once, not once per
token. Plus the one-line errors: a missing CUDA, a model too large for memory without a device map.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.overrides import TorchFunctionMode

from valuelens.errors import ConfigError, ModelError
from valuelens.generate import GenerationConfig, GenItem, generate_batch
from valuelens.hooks import ablate_direction, add_vectors, forward_capture, scale_neurons
from valuelens.models import (
    ChatRenderer,
    LoadedModel,
    RenderedPrompt,
    get_arch_spec,
    load_model,
    module_device,
    resolve_device,
    resolve_dtype,
)
from valuelens.testing import tiny_llama

# Resident embedding + layers 0-1; layers 2-3 offloaded to disk and executed on the CPU.
SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu", "model.layers.1": "cpu",
         "model.layers.2": "disk", "model.layers.3": "disk", "model.norm": "cpu", "lm_head": "cpu"}


def tiny_tokenizer(vocab: int = 128) -> Any:
    """Word-level tokenizer over ``w3 … w{vocab-1}``, pad/bos/eos = 0/1/2 (the ids of ``tiny_llama``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = {"<pad>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tk = Tokenizer(models.WordLevel(vocab=words, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                  unk_token="<pad>")
    tok.padding_side = "left"
    return tok


def tiny_lm(model: torch.nn.Module | None = None) -> LoadedModel:
    """A :class:`LoadedModel` around a tiny random Llama (or ``model``) and the word-level tokenizer."""
    model = tiny_llama() if model is None else model
    tok = tiny_tokenizer(model.config.vocab_size)
    model.generation_config.pad_token_id = 0
    return LoadedModel(model=model, tokenizer=tok, spec=get_arch_spec(model), chat=ChatRenderer(tok, allow_plain=True),
                       name="tiny", source="test", model_hash="tiny")


def items_for(lm: LoadedModel, n: int, seed: int = 0) -> list[GenItem]:
    """``n`` prompts of 2–11 random words (varied lengths, so batches need left padding)."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i in range(n):
        k = int(torch.randint(2, 12, (1,), generator=g))
        text = " ".join(f"w{int(t)}" for t in torch.randint(3, 128, (k,), generator=g))
        items.append(GenItem(id=f"it{i:03d}", prompt=RenderedPrompt(text=text, user=text, system_mode="custom",
                                                                    system=None), meta={"n": i}))
    return items


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny-llama")
    tiny_llama().save_pretrained(d)
    tiny_tokenizer().save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def single(folder) -> LoadedModel:
    return load_model(str(folder), device="cpu")


@pytest.fixture(scope="module")
def split(folder, tmp_path_factory) -> LoadedModel:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VALUELENS_CACHE", str(tmp_path_factory.mktemp("cache")))
        return load_model(str(folder), device="cpu", device_map=SPLIT)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 120, (3, 9), generator=g)
    am = torch.ones_like(ids)
    am[0, :4] = 0  # left padding
    am[2, :2] = 0
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[:, 5:] = True
    return ids, am, mask


def test_split_model_really_is_split(split, single):
    layers = split.spec.layers(split.model)
    assert {p.device.type for p in layers[2].parameters()} == {"meta"}  # weights live in the offload store
    assert {p.device.type for p in layers[1].parameters()} == {"cpu"}
    assert module_device(layers[2]) == torch.device("cpu")  # ... and execute on the CPU
    assert split.info["device_modules"] == {"cpu": 6, "disk": 2} and "device_map" not in single.info
    assert split.device == torch.device("cpu") and split.info["dtype"] == "float32"
    # The down projection of an offloaded layer is read from the store, not returned as a meta tensor.
    torch.testing.assert_close(split.spec.down_weight(split.model, 3), single.spec.down_weight(single.model, 3),
                               atol=0, rtol=0)


@pytest.mark.parametrize("neurons", [False, True])
def test_capture_on_the_split_model_equals_single_device(split, single, batch, neurons):
    ids, am, mask = batch
    for reduction in ("mean", "last", "sum"):
        a = forward_capture(single.model, ids, am, token_mask=mask, reduction=reduction, neurons=neurons)
        b = forward_capture(split.model, ids, am, token_mask=mask, reduction=reduction, neurons=neurons)
        torch.testing.assert_close(b, a, atol=1e-6, rtol=0)
        assert b.device == ids.device
    a_all = forward_capture(single.model, ids, am, reduction="all", layers=[1, 3])
    b_all = forward_capture(split.model, ids, am, reduction="all", layers=[1, 3])
    for x, y in zip(a_all, b_all, strict=True):
        torch.testing.assert_close(y, x, atol=1e-6, rtol=0)


def test_interventions_on_the_split_model_equal_single_device(split, single, batch):
    ids, am, _ = batch
    g = torch.Generator().manual_seed(3)
    v, d = torch.randn(64, generator=g), torch.randn(64, generator=g)

    def logits(lm: LoadedModel) -> dict[str, torch.Tensor]:
        out = {}
        with torch.no_grad():
            out["plain"] = lm.model(ids, attention_mask=am).logits
            with add_vectors(lm.model, {1: v, 3: -v}, alpha=2.0):  # one resident, one offloaded layer
                out["steer"] = lm.model(ids, attention_mask=am).logits
            with ablate_direction(lm.model, d):  # every layer, both halves
                out["ablate"] = lm.model(ids, attention_mask=am).logits
            with scale_neurons(lm.model, {0: [1, 5], 2: [3, 7, 11]}, 0.0):
                out["scale"] = lm.model(ids, attention_mask=am).logits
        return out

    a, b = logits(single), logits(split)
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=0)
    assert (a["steer"] - a["plain"]).abs().max() > 1e-2  # the interventions did something
    assert (a["scale"] - a["plain"]).abs().max() > 1e-4


def test_steered_generation_on_the_split_model_equals_single_device(split, single):
    g = torch.Generator().manual_seed(4)
    v = torch.randn(64, generator=g)
    prompts = ["w5 w9 w33 w7", "w100 w4", "w12 w13 w14 w15 w16 w17"]
    cfg = GenerationConfig(max_new_tokens=8, batch_size=3)
    from valuelens.hooks import Steer

    for sample in (False, True):
        c = GenerationConfig(max_new_tokens=8, batch_size=3, do_sample=sample, seed=7) if sample else cfg
        a = generate_batch(single, prompts, c, interventions=[Steer(v, (2,), alpha=3.0)])
        b = generate_batch(split, prompts, c, interventions=[Steer(v, (2,), alpha=3.0)])
        assert [r["response_ids"] for r in a] == [r["response_ids"] for r in b]
    plain = generate_batch(single, prompts, cfg)
    steered = generate_batch(single, prompts, cfg, interventions=[Steer(v, (2,), alpha=3.0)])
    assert [r["response_ids"] for r in plain] != [r["response_ids"] for r in steered]


class _DeviceMoves(TorchFunctionMode):
    """Counts tensor copies that name a device (``x.to(device)``, ``x.to(device=…)``, ``x.cuda()``)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        names_device = "device" in kwargs or any(isinstance(a, (torch.device, str)) for a in args[1:])
        if (func is torch.Tensor.to and names_device) or func in (torch.Tensor.cuda, torch.Tensor.cpu):
            self.n += 1
        return func(*args, **kwargs)


def _moves(model: torch.nn.Module, ids: torch.Tensor, steps: int, ctx: Any) -> int:
    with _DeviceMoves() as mode, torch.no_grad(), ctx:
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=steps, min_new_tokens=steps,
                       do_sample=False, pad_token_id=0)
    return mode.n


@pytest.mark.parametrize("kind", ["steer", "steer_masked", "ablate", "scale"])
def test_hook_constants_move_to_a_layer_device_once_not_per_token(split, kind):
    """The device copies made under an intervention do not grow with the number of generated tokens."""
    ids = torch.tensor([[5, 9, 33, 7, 8]])
    v = torch.randn(64)

    def ctx() -> Any:
        if kind == "steer":
            return add_vectors(split.model, {1: v, 2: v}, alpha=1.0)
        if kind == "steer_masked":
            return add_vectors(split.model, {2: v}, alpha=1.0, positions="generated")
        if kind == "ablate":
            return ablate_direction(split.model, v)
        return scale_neurons(split.model, {1: [1, 2], 3: [4]}, 0.5)

    import contextlib

    extra = {}
    for steps in (2, 8):
        extra[steps] = _moves(split.model, ids, steps, ctx()) - _moves(split.model, ids, steps,
                                                                          contextlib.nullcontext())
    assert extra[2] == extra[8], extra


def test_dtype_auto_and_explicit(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_dtype("auto", cpu) == torch.float32  # exact numbers on the CPU unless asked
    assert resolve_dtype(None, cpu) == torch.float32
    assert resolve_dtype("bf16", cpu) == torch.bfloat16
    monkeypatch.setenv("VALUELENS_DTYPE", "bfloat16")
    assert resolve_dtype(None, cpu) == torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("int3", cpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_without_cuda_is_a_one_line_error(folder, monkeypatch):
    for spec in ("cuda", "cuda:1"):
        with pytest.raises(ModelError, match="CUDA is not available") as exc:
            load_model(str(folder), device=spec)
        assert "\n" not in str(exc.value)
    assert resolve_device("auto") == torch.device("cpu") == resolve_device("cpu")
    monkeypatch.setenv("VALUELENS_DEVICE", "cuda")  # what --device sets
    with pytest.raises(ModelError, match="CUDA is not available"):
        resolve_device(None)
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")


def test_model_too_large_without_device_map_is_refused_before_loading(tmp_path):
    """A 70B Llama config (no weights at all): refused from its parameter count, in float32 on this host."""
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                num_key_value_heads=8, vocab_size=128256).save_pretrained(tmp_path)
    with pytest.raises(ModelError) as exc:
        load_model(str(tmp_path), device="cpu")
    msg = str(exc.value)
    assert "262.8 GiB" in msg and "--device-map auto" in msg and "\n" not in msg


def test_cli_device_errors_are_one_line_with_status_2(tmp_path):
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if torch.cuda.is_available():
        pytest.skip("checks the error on a machine without CUDA")
    proc = subprocess.run([sys.executable, "-m", "valuelens.cli", "extract", "--out", str(tmp_path / "r"), "--quick",
                           "--device", "cuda"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "CUDA is not available" in lines[0] and "Traceback" not in proc.stderr
