"""The serving engine on a tiny random chat model: per-row steering and continuous batching give exactly the
library's numbers (steered rows = steered generate_batch, unsteered rows = plain generate_batch), also when rows
join a running batch and leave it early; steer specs and aliases resolve to the pipeline's relative α."""

from __future__ import annotations

import pytest
import torch

from valuelens.evals.capability import relative_steer
from valuelens.generate import GenerationConfig, generate_batch
from valuelens.hooks import add_vectors, steer_rows
from valuelens.serving.artifacts import VectorArtifact
from valuelens.serving.engine import Engine, Job, Sampling
from valuelens.serving.steering import RequestError, SteerBank, parse_alias
from valuelens.testing import tiny_chat_lm
from valuelens.vectors import ValueVectors

PROMPTS = ["Hello there, how are you?", "Plan a trip.", "Why help strangers? Tell me.", "Hi", "Tea or coffee?"]


@pytest.fixture(scope="module")
def lm():
    return tiny_chat_lm(seed=3)


@pytest.fixture(scope="module")
def art(lm):
    g = torch.Generator().manual_seed(1)
    vv = ValueVectors(model_hash=lm.model_hash, n_layers=4, d_model=64, layers=[0, 1, 2, 3])
    vv.set("Benevolence", "prompted", torch.randn(4, 64, generator=g))
    vv.set("Power", "prompted", torch.randn(4, 64, generator=g))
    vv.set("Power", "intrinsic", torch.randn(4, 64, generator=g))
    return VectorArtifact(vv, model_id="tiny", default_layer=2, residual_norms=[3.0, 4.0, 5.0, 6.0],
                          guard_alpha=0.5)


def _texts(lm):
    return [lm.chat.render(p).text for p in PROMPTS]


def _ids(lm, text):
    return list(lm.tokenizer(text, add_special_tokens=False).input_ids)


def _collect(job: Job) -> tuple[str, str]:
    parts = []
    while True:
        ev = job.events.get(timeout=60)
        if ev[0] == "delta":
            parts.append(ev[1])
        elif ev[0] == "done":
            return "".join(parts), ev[1]
        else:
            raise AssertionError(ev)


def test_parse_alias_and_bank_resolution(art) -> None:
    assert parse_alias("smollm2") == ("smollm2", [])
    assert parse_alias("m+self-direction@-0.25:intrinsic") == (
        "m", [{"value": "self-direction", "alpha": -0.25, "kind": "intrinsic"}])
    bank = SteerBank(art, art.residual_norms, 4, max_alpha=1.0)
    st = bank.resolve({"value": "benevolence", "alpha": 0.5})[0]
    assert (st.value, st.kind, st.layer, st.alpha) == ("Benevolence", "prompted", 2, 0.5)
    ref = relative_steer(art.vector("Benevolence", "prompted", 2), 2, 0.5, art.residual_norms)
    assert torch.equal(st.delta, ref.alpha * ref.vector.float())  # add_vectors' arithmetic, bit for bit
    assert float(st.delta.norm()) == pytest.approx(0.5 * 5.0, rel=1e-6)  # α relative to the layer's norm
    assert bank.resolve([{"value": "Power", "alpha": -1, "kind": "intrinsic", "layer": -1}])[0].layer == 3
    assert bank.resolve({"value": "power"})[0].alpha == 0.5  # no α: the run's guard α
    assert bank.aliases("tiny") == ["tiny", "tiny+power@0.5", "tiny+benevolence@0.5"]
    for bad, word in [({"value": "love", "alpha": 0.1}, "unknown value"), ({"value": "power", "alpha": 3}, "<= 1"),
                      ({"value": "power", "alpha": "x"}, "finite number"), ({"value": "power", "kind": "x"}, "kind"),
                      ({"value": "Benevolence", "kind": "intrinsic"}, "no intrinsic vector"),
                      ({"value": "power", "layer": 9}, "layer 9"), ({"value": "power", "colour": 1}, "unknown"),
                      ("power", "objects")]:
        with pytest.raises(RequestError, match=word) as err:
            bank.resolve(bad)
        assert err.value.status == 400
    art.guard_alpha = None  # no guard α: aliases are listed at 0.1, and a steer must give α
    assert bank.aliases("tiny")[1] == "tiny+power@0.1"
    with pytest.raises(RequestError, match="give 'alpha'"):
        bank.resolve({"value": "power"})
    art.guard_alpha = 0.5
    with pytest.raises(RequestError, match="no steering vectors"):
        SteerBank(None, None, 4).resolve({"value": "power", "alpha": 0.1})


def test_row_steering_equals_add_vectors_per_row(lm) -> None:
    model = lm.model
    ids = torch.randint(3, 200, (3, 9))
    v = torch.randn(3, 64)
    with torch.no_grad():
        with add_vectors(model, {1: v}, alpha=0.7):
            want = model(ids).logits
        with steer_rows(model) as rows:
            rows.set({1: [0.7 * v]})
            got = model(ids).logits
            rows.set({1: [torch.zeros(3, 64)]})  # zero rows leave the numbers untouched
            zero = model(ids).logits
        plain = model(ids).logits
    assert torch.equal(got, want)
    assert torch.equal(zero, plain)


def test_engine_equals_generate_batch_steered_and_plain(lm, art) -> None:
    bank = SteerBank(art, art.residual_norms, 4)
    texts = _texts(lm)
    cfg = GenerationConfig(max_new_tokens=12)
    steer = bank.resolve({"value": "Power", "alpha": 0.8})
    iv = [art.steer("Power", "prompted", 0.8)]
    plain = [generate_batch(lm, [t], cfg)[0]["response_ids"] for t in texts]
    steered = [generate_batch(lm, [t], cfg, interventions=iv)[0]["response_ids"] for t in texts]
    assert plain != steered  # the steer changes the tiny model's output
    eng = Engine(lm, max_batch=4, batch_window=0.2).start()
    try:
        # ten requests at once, steered and not, more than max_batch: rows leave and new ones join mid-flight
        jobs = [eng.submit(Job(_ids(lm, texts[i % 5]), Sampling(max_tokens=12 - (i % 3), temperature=0),
                               steer if i % 2 else [])) for i in range(10)]
        for i, j in enumerate(jobs):
            _collect(j)
            ref = (steered if i % 2 else plain)[i % 5][: 12 - (i % 3)]
            assert j.ids == ref, i
        assert max(j.max_batch for j in jobs) == 4 and eng.stats["errors"] == 0
    finally:
        eng.stop()


def test_engine_stop_strings_cancel_and_sampling_seed(lm) -> None:
    texts = _texts(lm)
    cfg = GenerationConfig(max_new_tokens=10, do_sample=True, temperature=0.9, top_p=0.95, seed=11)
    want = generate_batch(lm, [texts[0]], cfg)[0]["response_ids"]
    eng = Engine(lm).start()
    try:
        j = eng.submit(Job(_ids(lm, texts[0]), Sampling(max_tokens=10, temperature=0.9, top_p=0.95, top_k=50,
                                                         seed=11)))
        _collect(j)
        assert j.ids == want  # a seeded sampled request alone in the batch draws generate's tokens
        g = eng.submit(Job(_ids(lm, texts[1]), Sampling(max_tokens=16, temperature=0)))
        full, _ = _collect(g)
        stop = full[3:5]
        if stop.strip():
            s = eng.submit(Job(_ids(lm, texts[1]), Sampling(max_tokens=16, temperature=0, stop=(stop,))))
            text, reason = _collect(s)
            assert reason == "stop" and text == full[: full.find(stop)]
        c = Job(_ids(lm, texts[2]), Sampling(max_tokens=200, temperature=0))
        c.cancel()
        eng.submit(c)
        after = eng.submit(Job(_ids(lm, texts[3]), Sampling(max_tokens=3, temperature=0)))
        assert _collect(after)[1] in ("length", "stop")
        assert c.ids == []  # a cancelled request never runs
    finally:
        eng.stop()


def test_engine_dynamic_batching_fallback(lm, art) -> None:
    """Caches that cannot be merged: new requests wait for the running batch to drain; same tokens."""
    bank = SteerBank(art, art.residual_norms, 4)
    texts = _texts(lm)
    cfg = GenerationConfig(max_new_tokens=6)
    steer = bank.resolve({"value": "Benevolence", "alpha": 0.7})
    iv = [art.steer("Benevolence", "prompted", 0.7)]
    # references first: while the engine runs, its hooks are on the model (the engine owns the model)
    want = [generate_batch(lm, [texts[i % 5]], cfg, interventions=iv if i % 3 == 0 else [])[0]["response_ids"]
            for i in range(6)]
    eng = Engine(lm, max_batch=3, batch_window=0.2)
    eng._can_merge = False
    eng.start()
    try:
        jobs = [eng.submit(Job(_ids(lm, texts[i % 5]), Sampling(max_tokens=6 - (i % 2), temperature=0),
                               steer if i % 3 == 0 else [])) for i in range(6)]
        for i, j in enumerate(jobs):
            _collect(j)
            assert j.ids == want[i][: 6 - (i % 2)], i
    finally:
        eng.stop()
