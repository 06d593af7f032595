"""Replaying the layers above a steering layer: exact against hooks on the full model, and what it saves."""

from __future__ import annotations

import pytest
import torch

from valuelens.evals.scoring import option_logprobs, option_logprobs_conditions
from valuelens.hooks import (
    Ablate,
    Steer,
    add_vectors,
    new_cache,
    replay_from_layer,
    steer_delta,
    trace_from_layer,
)
from valuelens.models import get_arch_spec
from valuelens.testing import tiny_chat_lm, tiny_llama, tiny_qwen2


@pytest.mark.parametrize("build", [tiny_llama, tiny_qwen2])
def test_replay_equals_the_steered_forward_with_and_without_a_cache(build) -> None:
    model = build(0)
    spec = get_arch_spec(model)
    ids = torch.randint(3, 100, (3, 9))
    am = torch.ones_like(ids)
    am[0, :3] = 0  # left padding
    layer = 1
    v = torch.randn(spec.d_model)
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=am).logits
        with trace_from_layer(model, layer, spec=spec) as traces:
            model(input_ids=ids, attention_mask=am)
        t = traces[0]
        assert len(t.calls) == spec.n_layers - layer - 1
        torch.testing.assert_close(replay_from_layer(model, t, t.hidden, spec=spec), plain, atol=1e-5, rtol=1e-5)
        with add_vectors(model, {layer: v}, alpha=0.7, spec=spec):
            steered = model(input_ids=ids, attention_mask=am).logits
        replayed = replay_from_layer(model, t, t.hidden + 0.7 * v, spec=spec)
        torch.testing.assert_close(replayed, steered, atol=1e-5, rtol=1e-5)
        assert (steered - plain).abs().max() > 1e-3  # the steer really changed something
        # Two passes with a KV cache: prompt, then continuation tokens on the cache.
        cont = torch.randint(3, 100, (3, 4))
        full_am = torch.cat([am, torch.ones_like(cont)], dim=1)
        with add_vectors(model, {layer: v}, alpha=0.7, spec=spec):
            ref = model(input_ids=torch.cat([ids, cont], 1), attention_mask=full_am).logits[:, -4:]
        with trace_from_layer(model, layer, spec=spec) as traces:
            out = model(input_ids=ids, attention_mask=am, use_cache=True)
            cache = out.cache if getattr(out, "cache", None) is not None else out.past_key_values
            model(input_ids=cont, attention_mask=full_am, use_cache=True, **{traces[0].cache_key or "cache": cache})
        c = new_cache(model)
        replay_from_layer(model, traces[0], traces[0].hidden + 0.7 * v, cache=c, spec=spec)
        got = replay_from_layer(model, traces[1], traces[1].hidden + 0.7 * v, cache=c, spec=spec)
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)


def test_steer_delta_only_for_single_layer_additions() -> None:
    v = torch.ones(64)
    layer, d = steer_delta([Steer(v, (2,), 0.5), Steer(v, (2,), 0.25)], 64)
    assert layer == 2 and torch.allclose(d, 0.75 * v)
    assert steer_delta([Steer(v, (1, 2), 1.0)], 64) is None
    assert steer_delta([Steer(v, (1,), 1.0), Steer(v, (2,), 1.0)], 64) is None
    assert steer_delta([Steer(v, (1,), 1.0, positions="prompt")], 64) is None
    assert steer_delta([Ablate(v)], 64) is None


def test_option_scoring_under_many_conditions_equals_one_by_one() -> None:
    lm = tiny_chat_lm()
    prompts = [lm.chat.render(q) for q in ("How much like you is this?", "Is it fine to skip a tradition?",
                                           "Pick one.")]
    options = [["Very much like me", "Not like me"], ["yes", "no", "maybe"], ["a", "bb", "a b c"]]
    v = torch.randn(lm.spec.d_model)
    conds = {"base": [], "steer": [Steer(v, (2,), 2.0)], "steer_early": [Steer(v, (0,), 2.0)],
             "ablate": [Ablate(v)], "two": [Steer(v, (1,), 1.0), Steer(-v, (1,), 0.5)]}
    many = option_logprobs_conditions(lm, prompts, options, conds, batch_size=2)
    for name, ivs in conds.items():
        one = option_logprobs(lm, prompts, options, batch_size=2, interventions=ivs)
        for a, b in zip(many[name], one, strict=True):
            assert a.sum == pytest.approx(b.sum, abs=1e-4), name
    assert not all((a.sum == b.sum).all() for a, b in zip(many["base"], many["steer"], strict=True))


def test_common_prefix_pass_equals_brute_force_under_every_condition_kind() -> None:
    """The chat template's shared prefix runs once per batch (fast replay path, hooked path, and plain scoring);
    every condition still equals scoring each prompt+option in full. A prompt-only steer (which would take the
    remainder for decoding steps) falls back to one prompt pass."""
    from valuelens.evals.scoring import _encode_all, _score_shared, _to_logprobs, common_prefix_len
    from valuelens.hooks import apply_interventions

    lm = tiny_chat_lm()
    prompts = [lm.chat.render(q) for q in ("How much like you is this?", "Is it fine to skip a tradition?",
                                           "Pick one.", "Hi")]
    options = [["Very much like me", "Not like me"], ["yes", "no", "maybe"], ["a", "bb", "a b c"], ["x", "y"]]
    p_ids, _ = _encode_all(lm, prompts, options, True)
    assert common_prefix_len(p_ids[:3]) >= 2  # the template's header is shared: the prefix pass really runs
    v = torch.randn(lm.spec.d_model)
    conds = {"base": [], "steer": [Steer(v, (2,), 2.0)], "ablate": [Ablate(v)],
             "prompt_only": [Steer(v, (1,), 2.0, positions="prompt")]}
    many = option_logprobs_conditions(lm, prompts, options, conds, batch_size=3)
    for name, ivs in conds.items():
        if name == "prompt_only":  # a single full pass would steer the options too: the reference is one
            # prompt pass then the options (no prefix pass), by hand
            p_ids, o_ids = _encode_all(lm, prompts, options, True)
            with torch.no_grad(), apply_interventions(lm.model, ivs, spec=lm.spec):
                full = _to_logprobs(_score_shared(lm, p_ids[:3], o_ids[:3], common_prefix=False)
                                    + _score_shared(lm, p_ids[3:], o_ids[3:], common_prefix=False))
        else:
            full = option_logprobs(lm, prompts, options, batch_size=3, interventions=ivs, share_prefix=False)
        one = option_logprobs(lm, prompts, options, batch_size=3, interventions=ivs)
        for a, b, c in zip(many[name], full, one, strict=True):
            assert a.sum == pytest.approx(b.sum, abs=1e-4), name
            assert c.sum == pytest.approx(b.sum, abs=1e-4), name
    assert common_prefix_len([[5, 6, 7], [5, 6, 8]]) == 2
    assert common_prefix_len([[5, 6], [5, 6, 8]]) == 0  # each prompt keeps a token of its own: k ≤ 1 < 2
    assert common_prefix_len([[5, 6, 7, 8]]) == 0
