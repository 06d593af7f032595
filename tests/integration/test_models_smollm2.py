"""The embedded SmolLM2: GGUF and cache loading, chat rendering, steered generation."""

from __future__ import annotations

import pytest
import torch

from valuelens.generate import GenerationConfig, generate_batch
from valuelens.hooks import Steer, forward_capture
from valuelens.models import NO_SYSTEM, TEMPLATE_DEFAULT, load_model

pytestmark = pytest.mark.integration


def test_gguf_then_cache_gives_identical_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("VALUELENS_CACHE", str(tmp_path))
    first = load_model("smollm2")
    assert first.source == "gguf"
    second = load_model("smollm2")
    assert second.source == "gguf-cache"
    assert first.model_hash == second.model_hash and len(first.model_hash) == 64
    assert (first.spec.n_layers, first.spec.d_model, first.spec.d_mlp) == (30, 576, 1536)
    ids = first.tokenizer("The value of kindness", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(first.model(ids).logits, second.model(ids).logits, atol=0, rtol=0)


def test_chat_rendering_with_and_without_system_prompt(smollm2):
    default = smollm2.chat.render("Hello?", TEMPLATE_DEFAULT)
    assert default.text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
                            "Face<|im_end|>\n<|im_start|>user\nHello?<|im_end|>\n<|im_start|>assistant\n")
    none = smollm2.chat.render("Hello?", NO_SYSTEM)
    assert none.text == "<|im_start|>user\nHello?<|im_end|>\n<|im_start|>assistant\n"
    assert none.to_dict()["system_mode"] == "none"
    custom = smollm2.chat.render("Hello?", "Value tradition.")
    assert custom.text.startswith("<|im_start|>system\nValue tradition.<|im_end|>\n<|im_start|>user\nHello?")


def test_steered_generation_differs_and_alpha_zero_reproduces(smollm2):
    prompts = [smollm2.chat.render(q, NO_SYSTEM).text
               for q in ("What matters most in life?", "Should I save money or travel?")]
    cfg = GenerationConfig(max_new_tokens=16, batch_size=2)
    plain = generate_batch(smollm2, prompts, cfg)
    # Steer with a direction at the scale of the residual stream at layer 10.
    ids = smollm2.tokenizer(prompts[0], return_tensors="pt").input_ids
    h = forward_capture(smollm2.model, ids, layers=[10], spec=smollm2.spec)[0, 0]
    v = torch.randn(576, generator=torch.Generator().manual_seed(0))
    v = v / v.norm() * h.norm()
    zero = generate_batch(smollm2, prompts, cfg, interventions=[Steer(v, (10,), 0.0)])
    steered = generate_batch(smollm2, prompts, cfg, interventions=[Steer(v, (10,), 2.0)])
    assert [r["response_ids"] for r in zero] == [r["response_ids"] for r in plain]
    assert [r["response_ids"] for r in steered] != [r["response_ids"] for r in plain]
    assert all(r["response"] for r in plain)


def test_batched_generation_equals_unbatched(smollm2):
    qs = ["Name a colour.", "Why do people value tradition so much in some families?"]
    prompts = [smollm2.chat.render(q, NO_SYSTEM).text for q in qs]
    cfg = GenerationConfig(max_new_tokens=12, batch_size=2)
    batched = generate_batch(smollm2, prompts, cfg)
    single = [generate_batch(smollm2, [p], cfg)[0] for p in prompts]
    assert [r["response_ids"] for r in batched] == [r["response_ids"] for r in single]
