"""Value neurons on hand-computed matrices and the tiny random Llama (MISSION.md §2 step 7)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
import torch

from valuelens.errors import ConfigError
from valuelens.hooks import forward_capture
from valuelens.models import LoadedModel, get_arch_spec
from valuelens.neurons import (
    TABLE_COLUMNS,
    label_angles,
    mean_neuron_activations,
    neuron_sets,
    neuron_table,
    project_columns,
    random_neuron_control,
    select_value_neurons,
    summarize,
    top_activating_contexts,
    write_neuron_outputs,
)
from valuelens.testing import tiny_llama
from valuelens.vectors import ValueVectors

# --------------------------------------------------------------------------------------------------------------
# A 2-D plane embedded in 4-D, rotated so the axes are not coordinate vectors.


def _rotation(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=torch.float64))
    return q


def _plane_columns(angles_deg, lengths, off_plane=None):
    """Columns at the given angles (from u_shared toward u_int) in the plane of the first two rotated axes."""
    q = _rotation()
    e_s, e_d, e_3 = q[:, 0], q[:, 1], q[:, 2]
    cols = []
    for k, (a, r) in enumerate(zip(angles_deg, lengths, strict=True)):
        t = math.radians(a)
        c = r * (math.cos(t) * e_s + math.sin(t) * e_d)
        if off_plane is not None:
            c = c + off_plane[k] * e_3
        cols.append(c)
    return torch.stack(cols, dim=1), e_s, e_d


def test_projection_coordinates_norm_and_angles_by_hand():
    W, e_s, e_d = _plane_columns([0, 20, 45, 180, -90], [1.0, 2.0, 3.0, 1.5, 0.5], off_plane=[0, 5, 0, 0, 1])
    p = project_columns(W, e_s, e_d)
    t = torch.tensor([0.0, 20, 45, 180, -90], dtype=torch.float64).deg2rad()
    r = torch.tensor([1.0, 2, 3, 1.5, 0.5], dtype=torch.float64)
    torch.testing.assert_close(p.coord_shared, r * t.cos(), atol=1e-12, rtol=0)
    torch.testing.assert_close(p.coord_diff, r * t.sin(), atol=1e-12, rtol=0)
    torch.testing.assert_close(p.norm, r, atol=1e-12, rtol=0)          # the off-plane part does not count
    torch.testing.assert_close(p.col_norm, torch.hypot(r, torch.tensor([0.0, 5, 0, 0, 1], dtype=torch.float64)))
    torch.testing.assert_close(p.angle_shared, torch.tensor([0.0, 20, 45, 180, 90], dtype=torch.float64),
                               atol=1e-9, rtol=0)
    torch.testing.assert_close(p.angle_int, torch.tensor([90.0, 70, 45, 90, 180], dtype=torch.float64),
                               atol=1e-9, rtol=0)
    torch.testing.assert_close(p.angle_prompt, torch.tensor([90.0, 110, 135, 90, 0], dtype=torch.float64),
                               atol=1e-9, rtol=0)
    assert p.labels(30.0) == ["shared", "shared", "unlabelled", "unlabelled", "prompted_unique"]
    # Normalised score = cosine between the column and the plane.
    torch.testing.assert_close(p.score(normalize=True), r / p.col_norm)


def test_projection_orthonormalises_the_axes():
    W, e_s, e_d = _plane_columns([0, 30, 100], [1.0, 1.0, 2.0])
    ref = project_columns(W, e_s, e_d)
    # Same plane, axes neither unit nor orthogonal: same coordinates (basis built from u_shared first).
    p = project_columns(W, 3.0 * e_s, 0.5 * e_d + 2.0 * e_s)
    for f in ("coord_shared", "coord_diff", "norm", "angle_shared", "angle_int", "angle_prompt"):
        torch.testing.assert_close(getattr(p, f), getattr(ref, f), atol=1e-9, rtol=0)
    with pytest.raises(ConfigError, match="parallel"):
        project_columns(W, e_s, -2 * e_s)
    with pytest.raises(ConfigError, match="rows"):
        project_columns(W[:3], e_s, e_d)


def test_line_mode_and_signs():
    W, e_s, e_d = _plane_columns([0, 160, 180, 100, -85], [1.0] * 5)
    line = project_columns(W, e_s, e_d, mode="line")
    torch.testing.assert_close(line.angle_shared, torch.tensor([0.0, 20, 0, 80, 85], dtype=torch.float64),
                               atol=1e-9, rtol=0)
    torch.testing.assert_close(line.angle_int, torch.tensor([90.0, 70, 90, 10, 5], dtype=torch.float64),
                               atol=1e-9, rtol=0)
    torch.testing.assert_close(line.angle_prompt, line.angle_int)
    assert line.labels() == ["shared", "shared", "shared", "diff_unique", "diff_unique"]
    ray = project_columns(W, e_s, e_d)
    assert ray.labels() == ["shared", "unlabelled", "unlabelled", "intrinsic_unique", "prompted_unique"]
    # A negative sign flips a column: 180° becomes 0°, −85° becomes 95°.
    flipped = project_columns(W, e_s, e_d, signs=torch.tensor([1.0, 1, -1, 0, -1]))
    assert flipped.labels() == ["shared", "unlabelled", "shared", "intrinsic_unique", "intrinsic_unique"]


def test_zero_projection_is_unlabelled_not_nan_label():
    q = _rotation()
    W = torch.stack([q[:, 2], q[:, 0]], dim=1)
    p = project_columns(W, q[:, 0], q[:, 1])
    assert math.isnan(p.angle_shared[0]) and p.norm[0] < 1e-12
    assert p.labels() == ["unlabelled", "shared"]


def test_label_rule_threshold_is_strict_and_configurable():
    s, i, pr = torch.tensor([29.999, 30.0, 50.0]), torch.tensor([60.001, 60.0, 40.0]), torch.tensor([120.0] * 3)
    assert label_angles(s, i, pr, 30.0) == ["shared", "unlabelled", "unlabelled"]
    assert label_angles(s, i, pr, 45.0) == ["shared", "shared", "intrinsic_unique"]
    with pytest.raises(ConfigError):
        label_angles(s, i, pr, 0.0)


# --------------------------------------------------------------------------------------------------------------
# Selection


def _layer_setup(n: int = 300, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(16, n, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(16, 2, generator=g, dtype=torch.float64))
    return W, (q[:, 0], q[:, 1])


def test_top_k_counts_per_layer_and_global():
    Ws, axes = {}, {}
    for la in (2, 5, 7):
        Ws[la], axes[la] = _layer_setup(seed=la)
    Ws[5] = Ws[5] * 3.0  # layer 5's columns are longer: global selection should favour it
    t = select_value_neurons(Ws, axes, top_k_percent=2.0, scope="layer", value="Power")
    assert list(t.columns) == list(TABLE_COLUMNS)
    assert t.groupby("layer").size().to_dict() == {2: 6, 5: 6, 7: 6}            # round(2% · 300)
    assert (t["value"] == "Power").all()
    for la in (2, 5, 7):
        p = project_columns(Ws[la], *axes[la])
        want = set(torch.topk(p.norm, 6).indices.tolist())
        assert set(t[t.layer == la].neuron) == want
        assert t[t.layer == la]["rank"].tolist() == list(range(6))
        assert t[t.layer == la]["score"].is_monotonic_decreasing
    g = select_value_neurons(Ws, axes, top_k_percent=2.0, scope="global")
    assert len(g) == 18                                                          # round(2% · 900)
    assert sorted(g["rank"]) == list(range(18))
    all_scores = torch.cat([project_columns(Ws[la], *axes[la]).norm for la in (2, 5, 7)])
    assert g["score"].min() == pytest.approx(float(torch.topk(all_scores, 18).values[-1]))
    assert g.groupby("layer").size().get(5, 0) > 6
    # At least one neuron even for a tiny k; a k of 100 % keeps everything.
    assert len(select_value_neurons({2: Ws[2]}, {2: axes[2]}, top_k_percent=0.01)) == 1
    assert len(select_value_neurons({2: Ws[2]}, {2: axes[2]}, top_k_percent=100)) == 300


def test_normalised_score_ranks_by_alignment():
    q = _rotation()
    e_s, e_d, e_3 = q[:, 0], q[:, 1], q[:, 2]
    W = torch.stack([10 * e_s + 30 * e_3, 0.5 * e_d, 3 * e_s], dim=1)  # long-but-off, short-aligned, medium
    raw = select_value_neurons({0: W}, {0: (e_s, e_d)}, top_k_percent=100)
    assert raw.neuron.tolist() == [0, 2, 1]
    norm = select_value_neurons({0: W}, {0: (e_s, e_d)}, top_k_percent=100, normalize=True)
    assert norm.neuron.tolist() == [1, 2, 0]
    assert norm.score.tolist()[:2] == pytest.approx([1.0, 1.0])


def test_labels_follow_the_30_degree_rule_in_the_table():
    angles = [0, 25, 35, 90, 115, 125, -60, -89, 180]
    W, e_s, e_d = _plane_columns(angles, [float(10 - k) for k in range(len(angles))])
    t = select_value_neurons({3: W}, {3: (e_s, e_d)}, top_k_percent=100)
    by = dict(zip(t.neuron, t.label, strict=True))
    assert [by[i] for i in range(len(angles))] == ["shared", "shared", "unlabelled", "intrinsic_unique",
                                                   "intrinsic_unique", "unlabelled", "unlabelled",
                                                   "prompted_unique", "unlabelled"]
    wide = select_value_neurons({3: W}, {3: (e_s, e_d)}, top_k_percent=100, angle_deg=40)
    assert dict(zip(wide.neuron, wide.label, strict=True))[2] == "shared"


def test_bad_selection_arguments():
    W, ax = _layer_setup()
    with pytest.raises(ConfigError):
        select_value_neurons({0: W}, {1: ax})
    with pytest.raises(ConfigError):
        select_value_neurons({0: W}, {0: ax}, top_k_percent=0)
    with pytest.raises(ConfigError):
        select_value_neurons({0: W}, {0: ax}, scope="model")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------------
# Summary, sets, control


def _hand_table() -> pd.DataFrame:
    rows = [("Power", 0, 1, "shared"), ("Power", 0, 2, "shared"), ("Power", 1, 5, "intrinsic_unique"),
            ("Power", 1, 6, "unlabelled"),
            ("Achievement", 0, 2, "shared"), ("Achievement", 0, 3, "shared"), ("Achievement", 1, 5, "shared"),
            ("Achievement", 1, 7, "prompted_unique")]
    return pd.DataFrame(rows, columns=["value", "layer", "neuron", "label"])


def test_summary_counts_and_jaccard_by_hand():
    s = summarize(_hand_table())
    c = s["counts"].set_index(["value", "layer", "label"])["n"]
    assert c[("Power", 0, "shared")] == 2 and c[("Power", 1, "shared")] == 0
    assert c[("Achievement", 1, "prompted_unique")] == 1 and c[("Achievement", 1, "all")] == 2
    assert c[("Power", 0, "all")] == 2
    assert set(s["counts"]["label"]) == {"shared", "intrinsic_unique", "prompted_unique", "unlabelled", "all"}
    o = s["overlap"].set_index(["value_a", "label_a", "value_b", "label_b"])
    # shared: {(0,1),(0,2)} vs {(0,2),(0,3),(1,5)} → 1/4
    assert o.loc[("Power", "shared", "Achievement", "shared"), "jaccard"] == pytest.approx(0.25)
    assert o.loc[("Power", "shared", "Achievement", "shared"), "n_both"] == 1
    # all: 4 vs 4 neurons, common (0,2) and (1,5) → 2/6
    assert o.loc[("Power", "all", "Achievement", "all"), "jaccard"] == pytest.approx(1 / 3)
    # Power's intrinsic-unique (1,5) is shared for Achievement → 1/3
    assert o.loc[("Power", "intrinsic_unique", "Achievement", "shared"), "jaccard"] == pytest.approx(1 / 3)
    assert math.isnan(o.loc[("Power", "prompted_unique", "Achievement", "intrinsic_unique"), "jaccard"])
    assert not ((s["overlap"].value_a == s["overlap"].value_b).any())


def test_neuron_sets_and_random_control():
    t = _hand_table()
    assert neuron_sets(t, "Power", "shared") == {0: [1, 2]}
    assert neuron_sets(t, "power") == {0: [1, 2], 1: [5, 6]}
    assert neuron_sets(t, "Power", "prompted_unique") == {}
    ctl = random_neuron_control(t, d_mlp=12, seed=3)
    again = random_neuron_control(t, d_mlp=12, seed=3)
    other = random_neuron_control(t, d_mlp=12, seed=4)
    assert ctl == again and ctl != other
    for (v, lab), sets in ctl.items():
        real = neuron_sets(t, v, lab)
        assert sets.keys() == real.keys()
        taken = neuron_sets(t, v)
        for la, idx in sets.items():
            assert len(idx) == len(real[la]) == len(set(idx))
            assert not set(idx) & set(taken[la])
            assert all(0 <= i < 12 for i in idx)
    strict = random_neuron_control(t, d_mlp=12, seed=3, exclude="all")
    every = neuron_sets(t)
    for sets in strict.values():
        for la, idx in sets.items():
            assert not set(idx) & set(every[la])
    # A draw does not depend on the rest of the table.
    alone = random_neuron_control(t[t.value == "Power"], d_mlp=12, seed=3)
    assert alone[("Power", "shared")] == ctl[("Power", "shared")]
    with pytest.raises(ConfigError, match="cannot draw"):
        random_neuron_control(t, d_mlp=3, seed=0)


# --------------------------------------------------------------------------------------------------------------
# The tiny random Llama


class _Tok:
    """Minimal tokenizer: token i decodes to "t<i> "."""

    pad_token_id = 0

    def decode(self, ids, skip_special_tokens=False):
        return "".join(f"t{int(i)} " for i in ids)


@pytest.fixture(scope="module")
def lm():
    model = tiny_llama()
    return LoadedModel(model=model, tokenizer=_Tok(), spec=get_arch_spec(model), chat=None,  # type: ignore[arg-type]
                       name="tiny", source="hf", model_hash="tiny-hash")


def _records(n: int = 7, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    recs = []
    for k in range(n):
        lp = int(torch.randint(2, 6, (1,), generator=g))
        lr = 0 if k == 3 else int(torch.randint(1, 9, (1,), generator=g))
        recs.append({"id": f"r{k}", "prompt_ids": torch.randint(3, 120, (lp,), generator=g).tolist(),
                     "response_ids": torch.randint(3, 120, (lr,), generator=g).tolist(), "response": "x"})
    return recs


def _vv(lm, layers=(0, 2, 3), values=("Power", "Benevolence")):
    g = torch.Generator().manual_seed(5)
    vv = ValueVectors(model_hash=lm.model_hash, n_layers=4, d_model=64, layers=list(layers), judge="test")
    for v in values:
        vv.set(v, "intrinsic", torch.randn(len(layers), 64, generator=g))
        vv.set(v, "prompted", torch.randn(len(layers), 64, generator=g))
    return vv


def test_neuron_table_on_tiny_model(lm):
    vv = _vv(lm)
    t = neuron_table(lm, vv, top_k_percent=5.0)
    assert list(t.columns) == list(TABLE_COLUMNS)
    assert set(t.value) == {"Power", "Benevolence"}
    assert t.groupby(["value", "layer"]).size().tolist() == [6] * 6                # round(5% · 128)
    # Rows match a direct projection of layer 2's W_down on Power's axes.
    d = vv.with_decomposition()
    row = d.layer_row(2)
    p = project_columns(lm.spec.down_weight(lm.model, 2), d.get("Power", "shared")[row],
                        d.get("Power", "diff_intrinsic")[row])
    sub = t[(t.value == "Power") & (t.layer == 2)]
    assert set(sub.neuron) == set(torch.topk(p.norm, 6).indices.tolist())
    for _, r in sub.iterrows():
        assert r.angle_int == pytest.approx(float(p.angle_int[r.neuron]))
    only = neuron_table(lm, vv, layers=[3], values=["benevolence"], top_k_percent=5.0)
    assert set(only.layer) == {3} and set(only.value) == {"Benevolence"}
    with pytest.raises(ConfigError, match="layer 1"):
        neuron_table(lm, vv, layers=[1])
    other = _vv(lm)
    other.model_hash = "another-model"
    with pytest.raises(ConfigError, match="another model"):
        neuron_table(lm, other)


def _brute_force(lm, records, neurons, k):
    """Every response-token activation of every neuron, from single-record forwards."""
    layers = sorted(neurons)
    out = {}
    for r_i, rec in enumerate(records):
        if not rec["response_ids"]:
            continue
        ids = torch.tensor([rec["prompt_ids"] + rec["response_ids"]])
        acts = forward_capture(lm.model, ids, neurons=True, reduction="all", layers=layers)[0]  # [T, L, N]
        n_p = len(rec["prompt_ids"])
        for li, la in enumerate(layers):
            for i in neurons[la]:
                for p in range(len(rec["response_ids"])):
                    out.setdefault((la, i), []).append((float(acts[n_p + p, li, i]), r_i, p))
    return {key: sorted(v, key=lambda x: -x[0])[:k] for key, v in out.items()}


@pytest.mark.parametrize("batch_size", [1, 3, 16])
def test_top_activating_contexts_equal_brute_force(lm, batch_size):
    records = _records()
    neurons = {3: [5, 0, 77], 1: [12]}
    got = top_activating_contexts(lm, records, neurons, k=4, window=2, batch_size=batch_size)
    want = _brute_force(lm, records, neurons, 4)
    assert [(e["layer"], e["neuron"]) for e in got] == [(1, 12), (3, 5), (3, 0), (3, 77)]
    n_tok = sum(len(r["response_ids"]) for r in records)
    for e in got:
        assert e["n_tokens"] == n_tok
        w = want[(e["layer"], e["neuron"])]
        assert [(t["record_index"], t["position"]) for t in e["top"]] == [(r, p) for _, r, p in w]
        assert [t["activation"] for t in e["top"]] == pytest.approx([a for a, _, _ in w], abs=1e-5)
        for t in e["top"]:
            resp = records[t["record_index"]]["response_ids"]
            p = t["position"]
            assert t["record_id"] == f"r{t['record_index']}" and t["token_id"] == resp[p]
            assert t["token"] == f"t{resp[p]} "
            assert t["before"] == "".join(f"t{x} " for x in resp[max(0, p - 2):p])
            assert t["after"] == "".join(f"t{x} " for x in resp[p + 1:p + 3])
            assert t["context"] == t["before"] + "[[" + t["token"] + "]]" + t["after"]
    json.dumps(got)  # JSON-able


def test_top_activating_contexts_signs_and_few_tokens(lm):
    records = _records(3, seed=1)
    n_tok = sum(len(r["response_ids"]) for r in records)
    got = top_activating_contexts(lm, records, {2: [4]}, k=n_tok + 5, sign="abs")
    acts = [t["activation"] for t in got[0]["top"]]
    assert len(acts) == n_tok                                   # fewer tokens than k: all of them
    assert [abs(a) for a in acts] == sorted((abs(a) for a in acts), reverse=True)
    neg = top_activating_contexts(lm, records, {2: [4]}, k=2, sign="negative")[0]["top"]
    assert [t["activation"] for t in neg] == pytest.approx(sorted(acts)[:2])
    assert top_activating_contexts(lm, records, {}) == []
    with pytest.raises(ConfigError):
        top_activating_contexts(lm, records, {2: [500]})


def test_mean_neuron_activations_match_token_average(lm):
    records = _records()
    means = mean_neuron_activations(lm, records, [1, 3], batch_size=2)
    rows = []
    for rec in records:
        if rec["response_ids"]:
            ids = torch.tensor([rec["prompt_ids"] + rec["response_ids"]])
            a = forward_capture(lm.model, ids, neurons=True, reduction="all", layers=[1, 3])[0]
            rows.append(a[len(rec["prompt_ids"]):])
    allt = torch.cat(rows).to(torch.float64).mean(dim=0)  # [L, N]
    torch.testing.assert_close(means[1], allt[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(means[3], allt[1], atol=1e-5, rtol=0)


def test_write_outputs(lm, tmp_path):
    vv = _vv(lm)
    t = neuron_table(lm, vv, top_k_percent=3.0)
    s = summarize(t)
    ex = top_activating_contexts(lm, _records(), neuron_sets(t, "Power", "all"), k=2)
    paths = write_neuron_outputs(tmp_path / "neurons", t, s, ex)
    assert {p.name for p in paths.values()} == {"neurons.csv", "neuron_counts.csv", "neuron_overlap.csv",
                                                "neuron_explanations.jsonl", "neuron_counts.png"}
    back = pd.read_csv(paths["neurons.csv"])
    assert len(back) == len(t) and list(back.columns) == list(TABLE_COLUMNS)
    assert len(pd.read_csv(paths["neuron_counts.csv"])) == len(s["counts"])
    lines = [json.loads(x) for x in paths["neuron_explanations.jsonl"].read_text().splitlines()]
    assert len(lines) == len(ex) and all(["Power", lab] in e["sets"] for e, lab in
                                         zip(lines, [t[(t.value == "Power") & (t.layer == e["layer"]) &
                                                       (t.neuron == e["neuron"])].label.item() for e in lines],
                                             strict=True))
    assert paths["neuron_counts.png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "neurons").glob(".*tmp*"))
