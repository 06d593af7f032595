"""Value neurons on the embedded SmolLM2 with synthetic (random unit) axes: table shape, neuron scaling, contexts."""

from __future__ import annotations

import pytest
import torch

from valuelens.hooks import forward_capture, scale_neurons
from valuelens.models import NO_SYSTEM
from valuelens.neurons import (
    TABLE_COLUMNS,
    mean_neuron_activations,
    neuron_sets,
    neuron_table,
    random_neuron_control,
    summarize,
    top_activating_contexts,
)
from valuelens.vectors import ValueVectors

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def vv(smollm2):
    g = torch.Generator().manual_seed(0)
    n, d = smollm2.spec.n_layers, smollm2.spec.d_model
    out = ValueVectors(model_hash=smollm2.model_hash, n_layers=n, d_model=d, layers=list(range(n)), judge="test")
    for v in ("Power", "Benevolence"):
        out.set(v, "intrinsic", torch.randn(n, d, generator=g))
        out.set(v, "prompted", torch.randn(n, d, generator=g))
    return out.with_decomposition()


@pytest.fixture(scope="module")
def records(smollm2):
    """Records shaped like generate_to_file's (written responses instead of generated ones, to save time)."""
    tok = smollm2.tokenizer
    pairs = [("Should I help my neighbour?", "Yes. Helping others builds trust and a kinder community."),
             ("How do I lead?", "Set a clear goal, take responsibility, and earn the respect of your team.")]
    out = []
    for i, (q, a) in enumerate(pairs):
        prompt = smollm2.chat.render(q, NO_SYSTEM).text
        out.append({"id": f"q{i}", "prompt_ids": tok(prompt, add_special_tokens=False).input_ids,
                    "response_ids": tok(a, add_special_tokens=False).input_ids, "response": a})
    return out


@pytest.fixture(scope="module")
def table(smollm2, vv):
    return neuron_table(smollm2, vv, top_k_percent=1.0)


def test_table_shape_and_summary(smollm2, vv, table):
    t = table
    per = round(0.01 * smollm2.spec.d_mlp)  # 15 of 1536
    assert list(t.columns) == list(TABLE_COLUMNS)
    assert len(t) == 2 * smollm2.spec.n_layers * per
    assert t.groupby(["value", "layer"]).size().eq(per).all()
    assert t.angle_shared.between(0, 180).all() and t.score.gt(0).all()
    # Random planes: roughly a sixth of a ray's directions are within 30° of each axis.
    frac = t.label.value_counts(normalize=True)
    for lab in ("shared", "intrinsic_unique", "prompted_unique"):
        assert 0.05 < frac[lab] < 0.35
    s = summarize(t)
    assert len(s["counts"]) == 2 * smollm2.spec.n_layers * 5
    g = neuron_table(smollm2, vv, layers=[10, 20], top_k_percent=1.0, scope="global")
    assert len(g) == 2 * round(0.01 * 2 * smollm2.spec.d_mlp)


def test_scaling_shared_neurons_at_beta_zero_changes_the_mlp_output(smollm2, vv, records, table):
    t = table
    shared = neuron_sets(t, "Power", "shared")
    layer = max(shared, key=lambda la: len(shared[la]))
    idx = shared[layer]
    ids = torch.tensor([records[0]["prompt_ids"] + records[0]["response_ids"]])
    acts = forward_capture(smollm2.model, ids, layers=[layer], neurons=True, reduction="all")[0][:, 0]  # [T, N]
    base = forward_capture(smollm2.model, ids, layers=[layer], reduction="all")[0][:, 0]              # [T, D]
    with scale_neurons(smollm2.model, {layer: idx}, 0.0):
        ablated = forward_capture(smollm2.model, ids, layers=[layer], reduction="all")[0][:, 0]
    # Neurons of this layer only change this layer's MLP output, by exactly −Σ act_i · W[:, i].
    W = smollm2.spec.down_weight(smollm2.model, layer).detach().float()
    want = -(acts[:, idx] @ W[:, idx].T)
    # (relative to the whole change: the first token's huge residual costs float32 digits in ablated − base)
    assert float((ablated - base - want).norm()) < 1e-3 * float(want.norm())
    assert (ablated - base).norm() > 0
    # The change lies mostly in the value plane more than a random set's change does.
    row = vv.layer_row(layer)
    plane = torch.stack([vv.get("Power", "shared")[row], vv.get("Power", "diff_intrinsic")[row]], dim=1)
    ctl = random_neuron_control(t, smollm2.spec.d_mlp, seed=0)[("Power", "shared")]
    assert len(ctl[layer]) == len(idx) and not set(ctl[layer]) & set(neuron_sets(t, "Power")[layer])
    with scale_neurons(smollm2.model, {layer: ctl[layer]}, 0.0):
        rand = forward_capture(smollm2.model, ids, layers=[layer], reduction="all")[0][:, 0]

    def in_plane_share(delta: torch.Tensor) -> float:
        return float((delta @ plane).norm() / delta.norm())

    assert in_plane_share(ablated - base) > in_plane_share(rand - base)


def test_contexts_and_signs_on_responses(smollm2, vv, records):
    t = neuron_table(smollm2, vv, layers=[12], values=["Power"], top_k_percent=0.5)
    ex = top_activating_contexts(smollm2, records, neuron_sets(t, "Power"), k=3, window=4)
    assert len(ex) == len(t)
    for e in ex:
        assert len(e["top"]) == 3 and e["layer"] == 12
        assert [x["activation"] for x in e["top"]] == sorted((x["activation"] for x in e["top"]), reverse=True)
        assert all("[[" in x["context"] and x["record_id"] in ("q0", "q1") for x in e["top"])
    means = mean_neuron_activations(smollm2, records, [12])
    signed = neuron_table(smollm2, vv, layers=[12], values=["Power"], top_k_percent=0.5,
                          signs_by_layer={12: means[12].sign()})
    assert set(signed.neuron) == set(t.neuron)  # signs change angles, not the projection norm
