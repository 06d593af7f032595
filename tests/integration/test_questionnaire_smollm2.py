"""The questionnaire and the capability guard on the embedded SmolLM2-135M-Instruct."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from valuelens.evals.capability import (
    choose_alpha,
    mc_accuracy,
    perplexity,
    produces_text,
    random_direction_like,
    relative_steer,
    residual_norms,
)
from valuelens.evals.items import PVQ_SCORES, load_pvq
from valuelens.evals.questionnaire import administer, steering_effect, value_scores
from valuelens.evals.scoring import option_logprobs
from valuelens.hooks import Steer
from valuelens.values import VALUE_NAMES

pytestmark = pytest.mark.integration


def _one_per_value(lang: str = "en") -> list:
    items = load_pvq(lang)
    return [next(it for it in items if it.value == v) for v in VALUE_NAMES]


def test_english_questionnaire(smollm2):
    res = administer(smollm2, lang="en", batch_size=16)
    assert len(res) == 60
    for r in res:
        p = np.asarray(r["probs"])
        assert p.shape == (6,) and p.sum() == pytest.approx(1.0) and (p >= 0).all()
        assert 1.0 <= r["expected"] <= 6.0
        assert r["expected"] == pytest.approx(float(p @ np.array(PVQ_SCORES)))
        assert r["prompt"].startswith("<|im_start|>user\n")  # NO_SYSTEM: no default SmolLM system turn
    scores = value_scores(res)
    assert list(scores) == list(VALUE_NAMES)
    assert all(1.0 <= s <= 6.0 for s in scores.values())
    # the answers are not all the same option: the scoring reads something item-specific
    assert len({r["answer"] for r in res}) >= 2
    assert np.std([r["expected"] for r in res]) > 0.1


def test_option_order_does_not_matter_on_smollm2(smollm2):
    items = _one_per_value()[:3]
    prompts = [smollm2.chat.render(f"{it.text}\nHow much like you is this person?").text for it in items]
    opts = ["Very much like me", "Like me", "Somewhat like me", "A little like me", "Not like me",
            "Not like me at all"]
    a = option_logprobs(smollm2, prompts, [opts] * 3)
    b = option_logprobs(smollm2, prompts, [opts[::-1]] * 3)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.sum, y.sum[::-1], atol=1e-4)


def test_random_steer_changes_answers_and_alpha_zero_reproduces(smollm2):
    items = _one_per_value()
    layer = 15
    norms = residual_norms(smollm2, layers=[layer], max_length=64)
    v = random_direction_like(torch.ones(smollm2.spec.d_model), seed=0)
    conditions = {"zero": [relative_steer(v, layer, 0.0, float(norms[0]))],
                  "random_big": [relative_steer(v, layer, 4.0, float(norms[0]))]}
    eff = steering_effect(smollm2, items, conditions, batch_size=10)
    base = np.array([r["probs"] for r in eff.results["baseline"]])
    zero = np.array([r["probs"] for r in eff.results["zero"]])
    big = np.array([r["probs"] for r in eff.results["random_big"]])
    np.testing.assert_allclose(zero, base, atol=1e-5)
    assert np.abs(big - base).max() > 0.05
    assert all(abs(r["delta"]) < 1e-4 for r in eff.rows if r["condition"] == "zero")


def test_mc_accuracy_above_chance(smollm2):
    acc = mc_accuracy(smollm2, batch_size=16)
    print(f"SmolLM2 MC accuracy: {acc:.2f} (chance 0.25)")
    assert acc >= 0.35  # measured 0.51 on the shipped 100 questions; chance is 0.25 (sd 0.043)


def _end_of_turn_direction(lm) -> torch.Tensor:
    """A residual direction that, at the last layer, makes <|im_end|> the top next token (a few Adam steps)."""
    w = lm.model.lm_head.weight.detach()
    g = lm.model.model.norm.weight.detach()
    eot = lm.tokenizer.convert_tokens_to_ids("<|im_end|>")
    u = (w[eot] / g).clone().requires_grad_(True)
    opt = torch.optim.Adam([u], lr=0.05)
    for _ in range(60):
        loss = -torch.log_softmax(w @ (g * u / u.norm() * lm.spec.d_model ** 0.5), dim=-1)[eot]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return u.detach()


def test_perplexity_and_degenerate_alphas_are_flagged(smollm2):
    ppl = perplexity(smollm2, max_tokens=512)
    assert 3.0 < ppl < 60.0
    last = smollm2.spec.n_layers - 1
    silence = _end_of_turn_direction(smollm2)

    def make(a: float) -> list[Steer]:
        return [relative_steer(silence, last, a, 1000.0)]

    ok, texts = produces_text(smollm2, make(0.0), max_new_tokens=6)
    assert ok and any(t.strip() for t in texts)
    ch = choose_alpha(smollm2, make, [0.0, 50.0], "ppl", ppl_max_tokens=256, text_probes=("Hello!",))
    row0, row_big = ch.table
    assert row0["eligible"] and row0["loss"] == pytest.approx(0.0, abs=1e-6)
    assert row_big["degenerate"] and not row_big["produces_text"] and not row_big["eligible"]
    assert "no text" in row_big["reason"] and "exploded" in row_big["reason"]
    assert ch.alpha == 0.0 and ch.degenerate_alphas == [50.0]
