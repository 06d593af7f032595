"""Option log-prob scoring and the questionnaire on a tiny random Llama with a hand-made word tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from valuelens.errors import ConfigError
from valuelens.evals.items import PVQ_SCORES, PVQItem, pvq_scale
from valuelens.evals.questionnaire import (
    administer,
    expected_score,
    item_prompt,
    steering_effect,
    value_scores,
)
from valuelens.evals.scoring import end_of_turn_id, option_logprobs, softmax
from valuelens.hooks import Steer, add_vectors
from valuelens.models import NO_SYSTEM, ChatRenderer, LoadedModel, get_arch_spec
from valuelens.testing import tiny_gpt2, tiny_llama, tiny_qwen2

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
_WORDS_TEXT = ("user assistant system This person likes to work alone It is important decide How much like you is this "
         "? . Very Like me Somewhat A little Not at all yes no maybe red green blue the a of sky")
WORDS = _WORDS_TEXT.split()


def make_tokenizer(template: str | None = CHATML) -> PreTrainedTokenizerFast:
    vocab = {"[PAD]": 0, "<|im_start|>": 1, "<|im_end|>": 2, "[UNK]": 3}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    t = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", pad_token="[PAD]",
                                  eos_token="<|im_end|>", additional_special_tokens=["<|im_start|>"])
    tok.chat_template = template
    tok.padding_side = "left"
    return tok


def make_lm(seed: int = 0, template: str | None = CHATML, build=tiny_llama) -> LoadedModel:
    model = build(seed)
    tok = make_tokenizer(template)
    return LoadedModel(model=model, tokenizer=tok, spec=get_arch_spec(model),
                       chat=ChatRenderer(tok, allow_plain=template is None), name="tiny", source="test",
                       model_hash="0")


@pytest.fixture(scope="module")
def lm() -> LoadedModel:
    return make_lm()


PROMPTS_USER = ["This person likes to work alone . How much like you is this person ?",
                "It is important to decide .", "red green blue ?"]
OPTIONS = [["Very much like me", "Like me", "Not like me at all", "Not like me"],
           ["yes", "no", "maybe", "yes no"],
           ["the sky", "blue", "a red"]]


def brute_force(lm: LoadedModel, prompt: str, option: str, *, alpha: float = 0.0,
                vec: torch.Tensor | None = None, layer: int = 1) -> float:
    """log P(option + <|im_end|> | prompt): one unpadded sequence, full forward, sum over the option tokens."""
    tok = lm.tokenizer
    p = tok(prompt, add_special_tokens=False).input_ids
    o = [*tok(option, add_special_tokens=False).input_ids, 2]
    ids = torch.tensor([p + o])
    with torch.no_grad():
        if vec is not None:
            with add_vectors(lm.model, {layer: vec}, alpha=alpha):
                logits = lm.model(ids).logits[0]
        else:
            logits = lm.model(ids).logits[0]
    lp = torch.log_softmax(logits.double(), dim=-1)
    return float(sum(lp[len(p) + j - 1, t] for j, t in enumerate(o)))


def _rendered(lm: LoadedModel) -> list[str]:
    return [lm.chat.render(u, NO_SYSTEM).text for u in PROMPTS_USER]


# ------------------------------------------------------------------------------------------------- scoring


def test_end_of_turn_is_read_from_template():
    assert end_of_turn_id(make_lm()) == 2
    assert end_of_turn_id(make_lm(template=None)) == 2  # falls back to EOS


@pytest.mark.parametrize("share_prefix", [True, False])
def test_option_logprob_equals_brute_force(lm, share_prefix):
    prompts = _rendered(lm)
    res = option_logprobs(lm, prompts, OPTIONS, batch_size=3, share_prefix=share_prefix)
    for p, opts, r in zip(prompts, OPTIONS, res, strict=True):
        want = np.array([brute_force(lm, p, o) for o in opts])
        np.testing.assert_allclose(r.sum, want, atol=1e-4)
        n = np.array([len(lm.tokenizer(o, add_special_tokens=False).input_ids) + 1 for o in opts])
        np.testing.assert_array_equal(r.n_tokens, n)
        np.testing.assert_allclose(r.mean, r.sum / n)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_option_tree_equals_padded_pass_and_brute_force(attn, monkeypatch):
    """Options packed as a token tree in one row per prompt (tree attention mask) give the numbers of the padded
    one-row-per-option pass (what flash-attention models get) and of brute force, also with options that are
    prefixes of one another, single-token options, and one prompt's options much longer than another's."""
    from valuelens.evals import scoring

    lm = make_lm(seed=1)
    lm.model.set_attn_implementation(attn)
    assert scoring.tree_mask_ok(lm.model)
    lm.model.config.sliding_window = 8  # a custom mask would replace the window: only sequences within it
    assert scoring.tree_mask_ok(lm.model, 8) and not scoring.tree_mask_ok(lm.model, 9)
    lm.model.config.sliding_window = None
    prompts = _rendered(lm)
    options = [["Not like me", "Not like me at all", "Not", "Very much like me", "Like me"],
               ["yes", "no", "yes no maybe"], ["a"]]
    plan = scoring.OptionPlan([[[5, 6, 2], [5, 6, 7, 8, 2], [5, 2], [9, 2]]], packed=True)
    assert plan.nodes == [[5, 6, 7, 8, 9]] and plan.parent == [[-1, 0, 1, 2, -1]]
    assert plan.depth == [[0, 1, 2, 3, 0]]
    packed = option_logprobs(lm, prompts, options, batch_size=3)
    monkeypatch.setattr(scoring, "tree_mask_ok", lambda model, length=0: False)
    padded = option_logprobs(lm, prompts, options, batch_size=3)
    for a, b, p, opts in zip(packed, padded, prompts, options, strict=True):
        np.testing.assert_allclose(a.sum, b.sum, atol=1e-5)
        np.testing.assert_array_equal(a.n_tokens, b.n_tokens)
        np.testing.assert_allclose(a.sum, [brute_force(lm, p, o) for o in opts], atol=1e-4)


def test_prefix_option_is_not_favoured_thanks_to_end_of_turn(lm):
    # "Not like me" is a prefix of "Not like me at all": with the end-of-turn token neither dominates by
    # construction, and without it the prefix is always at least as likely.
    p = _rendered(lm)[:1]
    opts = [["Not like me", "Not like me at all"]]
    without = option_logprobs(lm, p, opts, end_of_turn=False)[0].sum
    assert without[0] >= without[1]
    with_eot = option_logprobs(lm, p, opts)[0].sum
    assert not np.allclose(with_eot, without)


@pytest.mark.parametrize("build", [tiny_qwen2, tiny_gpt2])
def test_shared_prefix_equals_full_pass_on_other_families(build):
    lm = make_lm(build=build)
    prompts = _rendered(lm)
    shared = option_logprobs(lm, prompts, OPTIONS, batch_size=3)
    full = option_logprobs(lm, prompts, OPTIONS, batch_size=3, share_prefix=False)
    for a, b, p, opts in zip(shared, full, prompts, OPTIONS, strict=True):
        np.testing.assert_allclose(a.sum, b.sum, atol=1e-4)
        np.testing.assert_allclose(a.sum, [brute_force(lm, p, o) for o in opts], atol=1e-4)


def test_invariant_to_option_order(lm):
    prompts = _rendered(lm)
    base = option_logprobs(lm, prompts, OPTIONS)
    rng = np.random.default_rng(0)
    perms = [rng.permutation(len(o)) for o in OPTIONS]
    shuffled = option_logprobs(lm, prompts, [[o[i] for i in p] for o, p in zip(OPTIONS, perms, strict=True)])
    for b, s, p in zip(base, shuffled, perms, strict=True):
        np.testing.assert_allclose(s.sum, b.sum[p], atol=1e-5)
        np.testing.assert_allclose(s.probs(), b.probs()[p], atol=1e-6)


def test_batched_equals_unbatched(lm):
    prompts = _rendered(lm)
    batched = option_logprobs(lm, prompts, OPTIONS, batch_size=3)
    single = option_logprobs(lm, prompts, OPTIONS, batch_size=1)
    for a, b in zip(batched, single, strict=True):
        np.testing.assert_allclose(a.sum, b.sum, atol=1e-5)


def test_interventions_are_applied_and_removed(lm):
    prompts = _rendered(lm)
    v = torch.randn(64, generator=torch.Generator().manual_seed(3))
    plain = option_logprobs(lm, prompts, OPTIONS)
    steered = option_logprobs(lm, prompts, OPTIONS, interventions=[Steer(v, (1,), alpha=4.0)])
    for p, opts, r in zip(prompts, OPTIONS, steered, strict=True):
        want = [brute_force(lm, p, o, alpha=4.0, vec=v, layer=1) for o in opts]
        np.testing.assert_allclose(r.sum, want, atol=1e-4)
    assert not np.allclose(plain[0].sum, steered[0].sum)
    again = option_logprobs(lm, prompts, OPTIONS)  # hooks were removed
    np.testing.assert_allclose(again[0].sum, plain[0].sum, atol=1e-6)
    # prompt-only steering differs from steering everything (the answer tokens are "generated" positions)
    prompt_only = option_logprobs(lm, prompts, OPTIONS, interventions=[Steer(v, (1,), 4.0, positions="prompt")])
    assert not np.allclose(prompt_only[0].sum, steered[0].sum)


def test_scoring_bad_input(lm):
    with pytest.raises(ConfigError, match="2 prompts but 1"):
        option_logprobs(lm, ["a", "b"], [["x"]])
    with pytest.raises(ConfigError, match="non-empty list"):
        option_logprobs(lm, ["a"], [[]])
    with pytest.raises(ConfigError, match="tokenises to nothing"):
        option_logprobs(lm, ["a"], [["yes", ""]])
    with pytest.raises(ConfigError, match="batch_size"):
        option_logprobs(lm, ["a"], [["yes"]], batch_size=0)


# ------------------------------------------------------------------------------------------- questionnaire


def test_expected_score_hand_examples():
    assert expected_score([1, 0, 0, 0, 0, 0]) == 6.0
    assert expected_score([0, 0, 0, 0, 0, 1]) == 1.0
    assert expected_score([1 / 6] * 6) == pytest.approx(3.5)
    assert expected_score([0.5, 0, 0, 0, 0, 0.5]) == pytest.approx(3.5)
    assert expected_score([0.2, 0.3, 0.5, 0, 0, 0]) == pytest.approx(0.2 * 6 + 0.3 * 5 + 0.5 * 4)
    with pytest.raises(ConfigError):
        expected_score([0.5, 0.5])
    with pytest.raises(ConfigError):
        expected_score([0.5, 0.6, 0, 0, 0, 0])
    np.testing.assert_allclose(softmax([np.log(1), np.log(3)]), [0.25, 0.75])


def _items() -> list[PVQItem]:
    return [PVQItem("i1", "Power", "en", "This person likes to work alone ."),
            PVQItem("i2", "Power", "en", "It is important to decide ."),
            PVQItem("i3", "Benevolence", "en", "This person likes the sky ."),
            PVQItem("i4", "Tradition", "en", "It is important to work .")]


def test_administer_records(lm):
    items = _items()
    res = administer(lm, items, "en", batch_size=2)
    question, options = pvq_scale("en")
    assert [r["id"] for r in res] == ["i1", "i2", "i3", "i4"]
    lps = option_logprobs(lm, [lm.chat.render(item_prompt(it, question), NO_SYSTEM) for it in items],
                          [list(options)] * 4)
    for r, lp in zip(res, lps, strict=True):
        p = np.asarray(r["probs"])
        assert p.shape == (6,) and p.sum() == pytest.approx(1.0)
        np.testing.assert_allclose(p, softmax(lp.sum), atol=1e-5)
        assert r["expected"] == pytest.approx(float(p @ np.array(PVQ_SCORES)))
        k = int(np.argmax(p))
        assert r["answer"] == options[k] and r["answer_score"] == PVQ_SCORES[k]
        assert r["prompt"].startswith("<|im_start|>user\n") and question in r["prompt"]
        assert r["system_mode"] == "none"
    mean_scored = administer(lm, items[:1], "en", score="mean")[0]
    np.testing.assert_allclose(mean_scored["probs"], softmax(lps[0].mean), atol=1e-5)


def test_administer_rejects_language_mismatch(lm):
    with pytest.raises(ConfigError, match="scale language"):
        administer(lm, [PVQItem("x", "Power", "fr", "Cette personne")], "en")
    with pytest.raises(ConfigError, match="no questionnaire items"):
        administer(lm, [], "en")


def test_value_scores_hand_example():
    res = [{"value": "Power", "expected": 5.0, "answer_score": 6},
           {"value": "Power", "expected": 3.0, "answer_score": 2},
           {"value": "Benevolence", "expected": 2.0, "answer_score": 1}]
    assert value_scores(res) == {"Power": 4.0, "Benevolence": 2.0}
    assert list(value_scores(res)) == ["Power", "Benevolence"]  # circumplex order
    assert value_scores(res, key="answer_score") == {"Power": 4.0, "Benevolence": 1.0}
    assert value_scores(res, centered=True) == pytest.approx({"Power": 4.0 - 10 / 3, "Benevolence": 2.0 - 10 / 3})


def test_steering_effect_deltas(lm):
    items = _items()
    v = torch.randn(64, generator=torch.Generator().manual_seed(5))
    eff = steering_effect(lm, items, {"zero": [Steer(v, (1,), alpha=0.0)], "big": [Steer(v, (1,), alpha=8.0)]},
                          targets={"big": "power"})
    rows = {(r["condition"], r["value"]): r for r in eff.rows}
    assert len(eff.rows) == 2 * 3
    for val in ("Power", "Benevolence", "Tradition"):
        assert rows[("zero", val)]["delta"] == pytest.approx(0.0, abs=1e-6)  # α = 0 reproduces the baseline
    big = {val: rows[("big", val)] for val in ("Power", "Benevolence", "Tradition")}
    assert any(abs(r["delta"]) > 1e-3 for r in big.values())
    base = value_scores(eff.results["baseline"])
    steer = value_scores(eff.results["big"])
    for val, r in big.items():
        assert r["delta"] == pytest.approx(steer[val] - base[val])
        others = [steer[o] - base[o] for o in base if o != val]
        assert r["delta_others"] == pytest.approx(np.mean(others))
        assert r["delta_vs_others"] == pytest.approx(r["delta"] - np.mean(others))
    assert [(r["condition"], r["value"]) for r in eff.target_rows()] == [("big", "Power")]
    assert set(eff.to_frame().columns) >= {"condition", "value", "delta", "delta_others", "delta_vs_others"}
    with pytest.raises(ConfigError, match="unknown conditions"):
        steering_effect(lm, items, {"a": []}, targets={"b": "power"})
    with pytest.raises(ConfigError, match="reserved"):
        steering_effect(lm, items, {"baseline": []})


def test_steering_effect_reuses_a_precomputed_baseline(lm):
    items = _items()
    v = torch.randn(64, generator=torch.Generator().manual_seed(5))
    conds = {"big": [Steer(v, (1,), alpha=8.0)]}
    fresh = steering_effect(lm, items, conds)
    base = administer(lm, items)
    reused = steering_effect(lm, items, conds, baseline_results=base)
    assert reused.results["baseline"] == base
    assert [r["delta"] for r in reused.rows] == pytest.approx([r["delta"] for r in fresh.rows], abs=1e-6)
    with pytest.raises(ConfigError, match="ids differ"):
        steering_effect(lm, items, conds, baseline_results=base[::-1])
