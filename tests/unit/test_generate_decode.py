"""valuelens' own decoding loop: greedy equals transformers' generate token for token (with and without hooks),
sampling is seeded and draws from exactly the top-p nucleus, also when the nucleus is wider than the fast path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from valuelens.generate import GenerationConfig, _stop_ids, decode, generate_batch, sample_next
from valuelens.hooks import Steer, apply_interventions
from valuelens.testing import tiny_chat_lm


@pytest.fixture(scope="module")
def lm():  # type: ignore[no-untyped-def]
    return tiny_chat_lm()


def _enc(lm, qs):  # type: ignore[no-untyped-def]
    return lm.tokenizer([lm.chat.render(q).text for q in qs], return_tensors="pt", padding=True,
                        add_special_tokens=False)


@pytest.mark.parametrize("steered", [False, True])
def test_greedy_decoding_equals_transformers_generate(lm, steered: bool) -> None:
    enc = _enc(lm, ["Should I move abroad?", "Hi", "Is it fine to skip a family tradition this year?"])
    stop, pad = _stop_ids(lm), lm.tokenizer.pad_token_id
    torch.manual_seed(1)
    ivs = [Steer(torch.randn(lm.spec.d_model) * 4.0, (1,), 1.0)] if steered else []
    with torch.no_grad(), apply_interventions(lm.model, ivs, spec=lm.spec):
        ref = lm.model.generate(**enc, max_new_tokens=12, do_sample=False, eos_token_id=stop, pad_token_id=pad,
                                temperature=None, top_p=None, top_k=None)[:, enc["input_ids"].shape[1]:]
        ours = decode(lm.model, enc["input_ids"], enc["attention_mask"], GenerationConfig(max_new_tokens=12),
                      stop, seed=0, pad=pad)
    assert ours.shape[1] <= 12
    assert torch.equal(ref[:, : ours.shape[1]], ours)


def test_sampled_generation_is_seeded_and_the_penalty_path_still_works(lm) -> None:
    prompts = [lm.chat.render(q).text for q in ("Should I move abroad?", "How do I ask for a raise?")]
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=1.0, top_p=0.95, seed=3)
    a, b = generate_batch(lm, prompts, cfg), generate_batch(lm, prompts, cfg)
    assert [x["response_ids"] for x in a] == [x["response_ids"] for x in b]
    c = generate_batch(lm, prompts, cfg, seed=4)
    assert [x["response_ids"] for x in a] != [x["response_ids"] for x in c]
    pen = generate_batch(lm, prompts, GenerationConfig(max_new_tokens=10, repetition_penalty=1.3))
    assert all(len(x["response_ids"]) <= 10 for x in pen)


def _reference(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """transformers' own warpers (temperature, top-k, top-p) in generate's order: the distribution to match."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = logits[None].clone().float()
    ws = [TemperatureLogitsWarper(temperature)] + ([TopKLogitsWarper(top_k)] if top_k else []) + \
        [TopPLogitsWarper(top_p)]
    for w in ws:
        scores = w(torch.zeros((1, 1), dtype=torch.long), scores)
    return torch.softmax(scores, -1)[0].double().numpy()


@pytest.mark.parametrize("scale, top_k", [(3.0, 0), (0.05, 0), (3.0, 50), (0.05, 50), (0.05, 400)])
def test_sampling_draws_from_transformers_warped_distribution(scale: float, top_k: int) -> None:
    """Peaked logits (nucleus inside the 256 most likely tokens), flat ones (a nucleus of ~900 tokens: the
    full-sort path), with and without top-k: the empirical frequencies match transformers' warped distribution
    and nothing outside its support is drawn."""
    vocab, n = 1000, 20000
    logits = torch.randn(vocab, generator=torch.Generator().manual_seed(0)) * scale
    q = _reference(logits, 0.8, top_k, 0.9)
    draws = sample_next(logits.expand(n, vocab).clone(), do_sample=True, temperature=0.8, top_p=0.9, top_k=top_k,
                        gen=torch.Generator().manual_seed(1)).numpy()
    freq = np.bincount(draws, minlength=vocab) / n
    assert freq[q == 0].sum() == 0  # never outside the support
    support = int((q > 0).sum())
    if scale < 1 and top_k in (0, 400):
        assert support > 256  # the wide-nucleus path was taken
    tv = 0.5 * np.abs(freq - q).sum()  # total variation; sampling noise ≈ 0.4·sqrt(support / n)
    assert tv < 1.25 * np.sqrt(support / n) + 0.01, tv
    assert int(sample_next(logits[None], do_sample=False)[0]) == int(logits.argmax())


def test_rows_mixing_the_fast_and_the_full_path() -> None:
    g = torch.Generator().manual_seed(2)
    peaked, flat = torch.randn(1000, generator=g) * 5.0, torch.randn(1000, generator=g) * 0.01
    rows = torch.stack([peaked, flat] * 2000)
    out = sample_next(rows, do_sample=True, temperature=1.0, top_p=0.5, gen=torch.Generator().manual_seed(0)).numpy()
    qp, qf = (_reference(x, 1.0, 0, 0.5) for x in (peaked, flat))
    assert (qp[out[0::2]] > 0).all() and (qf[out[1::2]] > 0).all()
    assert len(set(out[1::2].tolist())) > 200  # the flat row really samples its wide nucleus
