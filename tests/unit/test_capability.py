"""Capability guard on a tiny random Llama: perplexity, MC accuracy, residual norms, relative α, choosing α."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from valuelens.errors import ConfigError
from valuelens.evals.capability import (
    AlphaChoice,
    CapabilityMetric,
    DegenerateOutputError,
    assert_produces_text,
    choose_alpha,
    mc_accuracy,
    mc_answers,
    perplexity,
    produces_text,
    random_direction_like,
    relative_steer,
    residual_norms,
)
from valuelens.evals.items import MCItem
from valuelens.evals.scoring import option_logprobs
from valuelens.hooks import Steer
from valuelens.models import NO_SYSTEM, ChatRenderer, LoadedModel, get_arch_spec
from valuelens.testing import tiny_llama

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_WORDS_TEXT = ("user assistant system what is two plus three four five six seven the sky colour blue red green "
         "capital of France Paris Rome Berlin Madrid tell me about your weekend plans a good way to learn cook "
         "? . , and it was day night cat dog runs sleeps")
WORDS = _WORDS_TEXT.split()
PROSE = ("the cat runs and the dog sleeps . it was a good day , and the sky was blue . "
         "the dog runs and the cat sleeps . it was night , and the sky was red . ") * 6


def make_lm(seed: int = 0) -> LoadedModel:
    vocab = {"[PAD]": 0, "<|im_start|>": 1, "<|im_end|>": 2, "[UNK]": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    while len(vocab) < 128:  # every id the model can emit decodes to a visible word
        vocab[f"w{len(vocab)}"] = len(vocab)
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", pad_token="[PAD]",
                                  eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = CHATML
    tok.padding_side = "left"
    model = tiny_llama(seed)
    model.generation_config.pad_token_id = 0
    return LoadedModel(model=model, tokenizer=tok, spec=get_arch_spec(model), chat=ChatRenderer(tok),
                       name="tiny", source="test", model_hash="0")


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return make_lm()


MC = [MCItem("q1", "what is two plus three ?", ("five", "four", "six", "seven"), 0),
      MCItem("q2", "the capital of France ?", ("Rome", "Paris", "Berlin", "Madrid"), 1),
      MCItem("q3", "the sky colour ?", ("red", "green", "blue", "the sky"), 2)]


# ------------------------------------------------------------------------------------------------ perplexity


def test_perplexity_of_uniform_model_is_vocab_size():
    lm = make_lm()
    with torch.no_grad():
        lm.model.lm_head.weight.zero_()  # all logits 0 → uniform next-token distribution
    vocab = lm.model.config.vocab_size
    assert perplexity(lm, PROSE, window=16) == pytest.approx(vocab, rel=1e-5)
    assert perplexity(lm, PROSE, window=8, stride=3) == pytest.approx(vocab, rel=1e-5)


def test_perplexity_equals_full_sequence_when_one_window(lm):
    ids = lm.tokenizer(PROSE, add_special_tokens=False).input_ids[:40]
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0].double()
    lp = torch.log_softmax(logits, dim=-1)
    nll = -float(sum(lp[i - 1, ids[i]] for i in range(1, len(ids))))
    want = math.exp(nll / (len(ids) - 1))
    assert perplexity(lm, PROSE, window=64, max_tokens=40) == pytest.approx(want, rel=1e-5)
    # sliding windows score every token once, with less context: close to (not equal to) the full value
    slid = perplexity(lm, PROSE, window=16, stride=8, max_tokens=40, batch_size=2)
    assert slid == pytest.approx(want, rel=0.2)
    assert perplexity(lm, PROSE, window=16, stride=8, max_tokens=40, batch_size=1) == pytest.approx(slid, rel=1e-5)


def test_perplexity_bad_input(lm):
    with pytest.raises(ConfigError, match="stride"):
        perplexity(lm, PROSE, window=8, stride=8)
    with pytest.raises(ConfigError, match="too short"):
        perplexity(lm, "cat", window=8)


def test_perplexity_goes_up_under_a_huge_steer(lm):
    v = torch.randn(64, generator=torch.Generator().manual_seed(0))
    base = perplexity(lm, PROSE, window=32, max_tokens=64)
    assert perplexity(lm, PROSE, window=32, max_tokens=64, interventions=[Steer(v, (1,), alpha=0.0)]) == \
        pytest.approx(base, rel=1e-6)
    assert perplexity(lm, PROSE, window=32, max_tokens=64, interventions=[Steer(v, (1,), alpha=1e4)]) != \
        pytest.approx(base, rel=1e-3)


# ------------------------------------------------------------------------------------------ multiple choice


def test_mc_accuracy_matches_argmax_of_option_logprobs(lm):
    res = mc_answers(lm, MC)
    lps = option_logprobs(lm, [lm.chat.render(it.question, NO_SYSTEM) for it in MC], [list(it.options) for it in MC])
    for r, lp, it in zip(res, lps, MC, strict=True):
        assert r["prediction"] == int(np.argmax(lp.sum))
        assert r["correct"] == (r["prediction"] == it.answer)
    assert mc_accuracy(lm, MC) == pytest.approx(np.mean([r["correct"] for r in res]))
    # order of options does not matter: move the answer, the prediction follows it
    flipped = [MCItem(it.id, it.question, it.options[::-1], 3 - it.answer) for it in MC]
    assert [r["correct"] for r in mc_answers(lm, flipped)] == [r["correct"] for r in res]


# ----------------------------------------------------------------------------------- norms and relative α


def test_residual_norms_match_hidden_states(lm):
    texts = ["the cat runs and the dog sleeps", "it was a good day"]
    norms = residual_norms(lm, texts, layers=[0, 2, 3])
    assert norms.shape == (3,)
    tot, cnt = np.zeros(3), 0
    for t in texts:
        ids = torch.tensor([lm.tokenizer(t, add_special_tokens=False).input_ids])
        with torch.no_grad():
            hs = lm.model(ids, output_hidden_states=True).hidden_states
        for k, layer in enumerate([0, 2, 3]):
            tot[k] += hs[layer + 1][0, 1:].norm(dim=-1).sum().item()  # first token left out
        cnt += ids.shape[1] - 1
    np.testing.assert_allclose(norms, tot / cnt, rtol=1e-5)
    all_tokens = residual_norms(lm, texts, layers=[0], skip_first=False)
    assert all_tokens.shape == (1,) and not np.isclose(all_tokens[0], norms[0])


def test_relative_steer_scales_to_the_layer_norm():
    v = torch.tensor([0.0, 3.0, 4.0])
    s = relative_steer(v, layer=1, alpha_rel=2.0, mean_norm=np.array([1.0, 10.0, 100.0]))
    assert isinstance(s, Steer) and s.layers == (1,) and s.alpha == 2.0
    torch.testing.assert_close(s.vector, torch.tensor([0.0, 6.0, 8.0]))
    assert float((s.alpha * s.vector).norm()) == pytest.approx(20.0)  # alpha_rel × mean norm
    assert relative_steer(v * 7, 2, 1.0, {2: 5.0}).vector.norm().item() == pytest.approx(5.0)  # length of v ignored
    with pytest.raises(ConfigError, match="zero"):
        relative_steer(torch.zeros(3), 0, 1.0, 1.0)
    with pytest.raises(ConfigError, match="outside"):
        relative_steer(v, 5, 1.0, [1.0, 2.0])
    with pytest.raises(ConfigError, match="positive"):
        relative_steer(v, 0, 1.0, 0.0)


def test_random_direction_like():
    v = torch.randn(64, generator=torch.Generator().manual_seed(1)) * 3
    r = random_direction_like(v, seed=7)
    assert r.shape == v.shape and r.dtype == v.dtype
    assert r.norm().item() == pytest.approx(v.norm().item(), rel=1e-5)
    assert abs(torch.nn.functional.cosine_similarity(r, v, dim=0).item()) < 0.5
    torch.testing.assert_close(r, random_direction_like(v, seed=7))
    assert not torch.allclose(r, random_direction_like(v, seed=8))
    m = np.stack([np.ones(5), 2 * np.ones(5)])
    rm = random_direction_like(m, seed=0)
    np.testing.assert_allclose(rm.norm(dim=-1).numpy(), np.linalg.norm(m, axis=-1))


# ------------------------------------------------------------------------------------------- choosing α


def _alpha_of(ivs) -> float:
    return float(ivs[0].alpha) if ivs else 0.0


def _make(a: float) -> list[Steer]:
    return [Steer(torch.ones(64), (0,), alpha=a)]


def test_choose_alpha_on_a_synthetic_accuracy(lm):
    metric = CapabilityMetric(lambda ivs: 0.90 - 0.02 * _alpha_of(ivs), higher_is_better=True, name="acc")
    ch = choose_alpha(lm, _make, [0, 1, 2, 3, 4], metric, max_loss=0.05, check_text=False)
    assert isinstance(ch, AlphaChoice)
    assert ch.alpha == 2.0 and ch.baseline == pytest.approx(0.90) and not ch.none_eligible
    assert [r["within_loss"] for r in ch.table] == [True, True, True, False, False]
    assert [round(r["loss"], 6) for r in ch.table] == [0.0, 0.02, 0.04, 0.06, 0.08]
    assert ch.to_frame().shape[0] == 5


def test_choose_alpha_stops_at_the_first_break_and_handles_signs(lm):
    # α = 3 breaks, α = 4 recovers by chance: the choice stays at 2
    scores = {0.0: 0.9, 1.0: 0.9, 2.0: 0.88, 3.0: 0.7, 4.0: 0.9, -1.0: 0.9, -2.0: 0.5}
    metric = CapabilityMetric(lambda ivs: scores[_alpha_of(ivs)])
    assert choose_alpha(lm, _make, [4, 3, 2, 1, 0], metric, check_text=False).alpha == 2.0
    signed = choose_alpha(lm, _make, [0, 1, -1, 2, -2], metric, check_text=False)
    assert (signed.alpha, signed.alpha_negative) == (2.0, -1.0)  # each sign is its own sweep
    assert choose_alpha(lm, _make, [0, -1, -2], metric, check_text=False).alpha == -1.0
    none = choose_alpha(lm, _make, [3], metric, check_text=False)
    assert none.alpha == 0.0 and none.none_eligible


def test_choose_alpha_stop_early_sweeps_only_up_to_the_first_break(lm):
    scores = {0.0: 0.9, 1.0: 0.9, 2.0: 0.88, 3.0: 0.7, 4.0: 0.9}
    calls: list[float] = []

    def fn(ivs):
        calls.append(_alpha_of(ivs))
        return scores[_alpha_of(ivs)]
    ch = choose_alpha(lm, _make, [4, 3, 2, 1, 0], CapabilityMetric(fn), check_text=False, stop_early=True)
    assert ch.alpha == 2.0  # the same choice as the full sweep
    assert calls == [0.0, 1.0, 2.0, 3.0]  # baseline, then ascending, stopping at the first ineligible α
    calls.clear()
    again = choose_alpha(lm, _make, [1, 2, 3], CapabilityMetric(fn), check_text=False, stop_early=True,
                         baseline_score=0.9)
    assert again.alpha == 2.0 and calls == [1.0, 2.0, 3.0]  # the given baseline is not recomputed
    with pytest.raises(ConfigError, match="positive"):
        choose_alpha(lm, _make, [0, -1], CapabilityMetric(fn), check_text=False, stop_early=True)


def test_choose_alpha_relative_perplexity_loss(lm):
    metric = CapabilityMetric(lambda ivs: 20.0 * (1 + 0.02 * _alpha_of(ivs)), higher_is_better=False,
                              relative=True, name="ppl")
    ch = choose_alpha(lm, _make, [0, 1, 2, 3, 4], metric, max_loss=0.05, check_text=False)
    assert ch.alpha == 2.0  # +4 % ok, +6 % too much
    exploding = CapabilityMetric(lambda ivs: 20.0 * (1 + 100 * _alpha_of(ivs)), higher_is_better=False,
                                 relative=True, name="ppl")
    ch = choose_alpha(lm, _make, [0, 1], exploding, max_loss=1e9, check_text=False)
    assert ch.table[1]["degenerate"] and "exploded" in ch.table[1]["reason"] and ch.alpha == 0.0


def test_alpha_that_silences_the_model_is_flagged_not_raised(lm):
    # Steering the last layer along the end-of-turn token's unembedding row makes every next token <|im_end|>.
    eot_row = lm.model.lm_head.weight[2].detach().clone()

    def make(a: float) -> list[Steer]:
        return [Steer(eot_row, (lm.spec.n_layers - 1,), alpha=a)]

    ok, texts = produces_text(lm, make(0.0), max_new_tokens=4)
    assert ok and any(texts)
    silent, texts = produces_text(lm, make(1e4), max_new_tokens=4)
    assert not silent and texts == ["", ""]
    with pytest.raises(DegenerateOutputError, match="produces no text"):
        assert_produces_text(lm, make(1e4), max_new_tokens=4)
    metric = CapabilityMetric(lambda ivs: 1.0)
    ch = choose_alpha(lm, make, [0.0, 1e4], metric)
    assert ch.degenerate_alphas == [1e4] and ch.alpha == 0.0
    assert "no text" in ch.table[1]["reason"] and not ch.table[1]["eligible"]


def test_choose_alpha_with_real_mc_metric(lm):
    v = torch.randn(64, generator=torch.Generator().manual_seed(2))
    ch = choose_alpha(lm, lambda a: [Steer(v, (1,), alpha=a)], [0.0, 1.0], "mc", mc_items=MC, check_text=False)
    assert ch.metric == "mc" and ch.table[0]["loss"] == pytest.approx(0.0)
    assert ch.baseline == pytest.approx(mc_accuracy(lm, MC))
    with pytest.raises(ConfigError, match="metric"):
        choose_alpha(lm, _make, [0.0], "bleu")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="no α"):
        choose_alpha(lm, _make, [], "mc")
