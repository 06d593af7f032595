"""Pins the value-vector numerics (valuelens.vectors) against hand computations and planted directions."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from valuelens.errors import ConfigError, DataError
from valuelens.vectors import (
    GroupMeans,
    ValueVectors,
    compliance_direction,
    cosine_by_layer,
    diff_in_means,
    diff_in_means_from_groups,
    export_control_vector_gguf,
    norms_by_layer,
    orthogonalize,
    svd_axes,
)

T = torch.tensor


def close(a: torch.Tensor, b: object, tol: float = 1e-12) -> bool:
    return torch.allclose(a.to(torch.float64), torch.as_tensor(b, dtype=torch.float64), atol=tol, rtol=0)


# ------------------------------------------------------------------------------------------------ GroupMeans


def test_group_means_equals_batch_mean_to_1e10() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 3, 8, generator=g) * 50 + 3
    labels = (torch.rand(37, generator=g) > 0.4).tolist()
    gm = GroupMeans()
    for start in range(0, 37, 5):  # uneven batches
        gm.add(x[start:start + 5], labels[start:start + 5])
    mask = torch.tensor(labels)
    x64 = x.double()
    assert gm.count(True) == int(mask.sum()) and gm.count(False) == int((~mask).sum())
    assert (gm.mean(True) - x64[mask].mean(0)).abs().max() < 1e-10
    assert (gm.mean(False) - x64[~mask].mean(0)).abs().max() < 1e-10
    assert gm.mean(True).dtype == torch.float64


def test_group_means_hand_example_and_tensor_ids() -> None:
    gm = GroupMeans()
    gm.add(T([[[1.0, 2.0]], [[3.0, 4.0]], [[10.0, 10.0]]]), torch.tensor([0, 0, 1]))
    assert close(gm.mean(0), [[2.0, 3.0]])
    assert close(gm.sum(1), [[10.0, 10.0]])
    assert sorted(gm.groups) == [0, 1]


def test_group_means_memory_is_per_group_not_per_text() -> None:
    gm = GroupMeans()
    for _ in range(50):
        gm.add(torch.ones(4, 2, 3), ["a", "b", "a", "b"])
    state = gm.state_dict()
    assert len(state["sums"]) == 2 and state["sums"][0].shape == (2, 3)
    assert gm.count("a") == 100


def test_group_means_add_sum_merge_and_state_roundtrip() -> None:
    a, b = GroupMeans(), GroupMeans()
    a.add(T([[[1.0]], [[3.0]]]), ["p", "p"])
    b.add_sum("p", T([[5.0]]), 1)
    b.add_sum("n", T([[0.0]]), 2)
    a.merge(b)
    assert a.count("p") == 3 and close(a.mean("p"), [[3.0]])
    c = GroupMeans.from_state_dict(a.state_dict())
    assert c.count("n") == 2 and close(c.mean("p"), [[3.0]])


def test_group_means_errors() -> None:
    gm = GroupMeans()
    with pytest.raises(ConfigError):
        gm.add(torch.ones(2, 3), ["a", "b"])  # not [B, L, D]
    with pytest.raises(ConfigError):
        gm.add(torch.ones(2, 1, 3), ["a"])  # id count mismatch
    gm.add(torch.ones(1, 1, 3), ["a"])
    with pytest.raises(ConfigError):
        gm.add(torch.ones(1, 2, 3), ["a"])  # shape change
    with pytest.raises(DataError):
        gm.add(torch.full((1, 1, 3), float("nan")), ["a"])
    with pytest.raises(DataError, match="no examples"):
        gm.mean("missing")


# ------------------------------------------------------------------------------------------ difference in means


def test_diff_in_means_hand_example_all_input_forms() -> None:
    pos = T([[[1.0, 2.0]], [[3.0, 2.0]]])  # mean [2, 2]
    neg = T([[[0.0, 1.0]]])  # mean [0, 1]
    assert close(diff_in_means(pos, neg), [[2.0, 1.0]])
    assert close(diff_in_means((T([[2.0, 2.0]]), 2), (T([[0.0, 1.0]]), 1)), [[2.0, 1.0]])
    gm = GroupMeans()
    gm.add(torch.cat([pos, neg]), ["yes", "yes", "no"])
    assert close(diff_in_means_from_groups(gm, "yes", "no"), [[2.0, 1.0]])


def test_diff_in_means_sign_is_expressing_minus_not() -> None:
    v = diff_in_means(torch.ones(3, 1, 2), torch.zeros(3, 1, 2))
    assert (v > 0).all()


def test_diff_in_means_empty_side_is_an_error() -> None:
    with pytest.raises(DataError):
        diff_in_means(torch.zeros(0, 2, 3), torch.ones(2, 2, 3))
    with pytest.raises(DataError):
        diff_in_means((torch.zeros(2, 3), 0), (torch.zeros(2, 3), 4))
    with pytest.raises(ConfigError):
        diff_in_means(torch.ones(2, 2, 3), torch.ones(2, 3, 3))


def test_diff_in_means_recovers_planted_direction() -> None:
    g = torch.Generator().manual_seed(1)
    n_layers, d = 4, 64
    planted = torch.randn(n_layers, d, generator=g)
    planted = planted / planted.norm(dim=-1, keepdim=True)
    base = torch.randn(n_layers, d, generator=g)
    pos = base + 3.0 * planted + torch.randn(400, n_layers, d, generator=g)
    neg = base + torch.randn(600, n_layers, d, generator=g)
    gm = GroupMeans()
    gm.add(pos, ["pos"] * 400)
    gm.add(neg, ["neg"] * 600)
    v = diff_in_means_from_groups(gm, "pos", "neg")
    cos = cosine_by_layer(v, planted)
    assert (cos > 0.95).all(), cos


# --------------------------------------------------------------------------------------------- per-layer geometry


def test_cosine_and_norms_hand_example() -> None:
    a = T([[3.0, 4.0], [1.0, 0.0], [0.0, 0.0]])
    b = T([[4.0, 3.0], [-2.0, 0.0], [1.0, 1.0]])
    assert close(norms_by_layer(a), [5.0, 1.0, 0.0])
    assert close(cosine_by_layer(a, b), [24 / 25, -1.0, 0.0])  # zero vector → 0, not NaN
    assert close(norms_by_layer(T([3.0, 4.0])), 5.0)


def test_orthogonalize_hand_examples() -> None:
    # a = (2, 1), b = (1, 1): ⟨a,b⟩/⟨b,b⟩ = 3/2 → a − 1.5·b = (0.5, −0.5)
    r = orthogonalize(T([2.0, 1.0]), T([1.0, 1.0]))
    assert close(r.vector, [0.5, -0.5]) and not bool(r.b_is_zero)
    # 3-D, per layer: a = (1, 2, 3), b = (0, 0, 2) → (1, 2, 0); a = (1, 1, 0), b = (2, 0, 0) → (0, 1, 0)
    r = orthogonalize(T([[1.0, 2.0, 3.0], [1.0, 1.0, 0.0]]), T([[0.0, 0.0, 2.0], [2.0, 0.0, 0.0]]))
    assert close(r.vector, [[1.0, 2.0, 0.0], [0.0, 1.0, 0.0]])
    assert r.b_is_zero.tolist() == [False, False]


def test_orthogonalize_result_is_orthogonal_and_scale_invariant_in_b() -> None:
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(5, 32, generator=g), torch.randn(5, 32, generator=g)
    r = orthogonalize(a, b).vector
    assert ((r * b.double()).sum(-1).abs() < 1e-10).all()
    assert close(orthogonalize(a, -7.0 * b.double()).vector, r, 1e-10)
    # a − a⊥ lies along b
    assert (cosine_by_layer(a.double() - r, b).abs() > 1 - 1e-10).all()


def test_orthogonalize_zero_b_returns_a_with_flag_no_nan() -> None:
    a = T([[1.0, 2.0], [3.0, 4.0]])
    b = T([[0.0, 0.0], [1.0, 0.0]])
    r = orthogonalize(a, b)
    assert r.b_is_zero.tolist() == [True, False]
    assert close(r.vector, [[1.0, 2.0], [0.0, 4.0]])
    assert torch.isfinite(r.vector).all()
    with pytest.raises(ConfigError):
        orthogonalize(a, torch.zeros(2, 3))


def test_svd_axes_hand_example_diagonal() -> None:
    # M = [[2, 0], [0, 1]]: σ = (2, 1), u1 = ±e1, u2 = ±e2.
    # shared: ⟨u, (2, 1)⟩ > 0 → e1.  diff_int: ⟨u, v_int − v_prompt = (2, −1)⟩ > 0 → −e2.
    ax = svd_axes(T([2.0, 0.0]), T([0.0, 1.0]))
    assert close(ax.shared, [1.0, 0.0])
    assert close(ax.diff_int, [0.0, -1.0])
    assert close(ax.diff_prompt, [0.0, 1.0])
    assert close(ax.singular_values, [2.0, 1.0])


def test_svd_axes_hand_example_symmetric() -> None:
    # M = [[3, 1], [1, 3]] = 4·ssᵀ + 2·ddᵀ with s = (1, 1)/√2, d = (1, −1)/√2.
    ax = svd_axes(T([3.0, 1.0]), T([1.0, 3.0]))
    h = 1 / math.sqrt(2)
    assert close(ax.shared, [h, h], 1e-12)
    assert close(ax.diff_int, [h, -h], 1e-12)  # ⟨d, v_int − v_prompt = (2, −2)⟩ > 0
    assert close(ax.diff_prompt, [-h, h], 1e-12)
    assert close(ax.singular_values, [4.0, 2.0], 1e-12)


def test_svd_axes_sign_conventions_and_reconstruction_random() -> None:
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(6, 40, generator=g), torch.randn(6, 40, generator=g)
    for sa in (1.0, -1.0):  # the conventions must hold whatever sign SVD returns
        ax = svd_axes(sa * a, sa * b)
        a64, b64 = sa * a.double(), sa * b.double()
        assert ((ax.shared * (a64 + b64)).sum(-1) > 0).all()
        assert ((ax.diff_int * (a64 - b64)).sum(-1) > 0).all()
        assert close(ax.diff_prompt, -ax.diff_int)
        for u in (ax.shared, ax.diff_int, ax.diff_prompt):
            assert close(u.norm(dim=-1), torch.ones(6), 1e-12)
        assert ((ax.shared * ax.diff_int).sum(-1).abs() < 1e-12).all()
        # both vectors lie in span(shared, diff) and Σ² equals the total energy
        for v in (a64, b64):
            proj = (v * ax.shared).sum(-1, keepdim=True) * ax.shared + (v * ax.diff_int).sum(
                -1, keepdim=True) * ax.diff_int
            assert close(proj, v, 1e-10)
        assert close((ax.singular_values**2).sum(-1), (a64**2).sum(-1) + (b64**2).sum(-1), 1e-9)


def test_svd_axes_parallel_inputs_second_singular_value_zero() -> None:
    ax = svd_axes(T([[1.0, 2.0, 0.0]]), T([[2.0, 4.0, 0.0]]))
    assert ax.singular_values[0, 1].abs() < 1e-12
    assert close(ax.shared, [[1 / math.sqrt(5), 2 / math.sqrt(5), 0.0]], 1e-12)
    assert torch.isfinite(ax.diff_int).all() and close(ax.diff_int.norm(dim=-1), [1.0], 1e-12)


# -------------------------------------------------------------------------------------------- compliance direction


def test_compliance_hand_example_two_values() -> None:
    # δ1 = (2, 0), δ2 = (0, 1): c = (1, 0.5); Σ‖δ‖² = 5; S‖c‖² = 2.5 → mean_r2 = 0.5
    # ĉ = (1, 0.5)/√1.25: ⟨δ1,ĉ⟩² = 3.2, ⟨δ2,ĉ⟩² = 0.2 → projection_share = 3.4/5 = 0.68
    # pairwise cosine 0; top direction: σ² = (4, 1) → 0.8
    v_int = T([[[1.0, 1.0]], [[0.0, -1.0]]])
    v_prompt = v_int + T([[[2.0, 0.0]], [[0.0, 1.0]]])
    c, st = compliance_direction(v_int, v_prompt)
    assert close(c, [[1.0, 0.5]])
    assert close(st.mean_r2, [0.5]) and close(st.projection_share, [0.68], 1e-12)
    assert close(st.mean_pairwise_cosine, [0.0]) and close(st.top_direction_share, [0.8], 1e-12)
    assert st.n_values == 2


def test_compliance_hand_example_three_values_two_layers() -> None:
    # layer 0: δ = (1,0), (1,1), (0,1); c = (2/3, 2/3); Σ‖δ‖² = 4; S‖c‖² = 3·8/9 = 8/3 → mean_r2 = 2/3
    #   ĉ = (1,1)/√2: projections² = 1/2, 2, 1/2 → 3/4; cosines: (1,2) 1/√2, (1,3) 0, (2,3) 1/√2 → √2/3
    # layer 1: all δ equal (1, 0): everything 1
    v_int = torch.zeros(3, 2, 2)
    v_prompt = T([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 1.0], [1.0, 0.0]], [[0.0, 1.0], [1.0, 0.0]]])
    c, st = compliance_direction(v_int, v_prompt)
    assert close(c, [[2 / 3, 2 / 3], [1.0, 0.0]], 1e-12)
    assert close(st.mean_r2, [2 / 3, 1.0], 1e-12)
    assert close(st.projection_share, [0.75, 1.0], 1e-12)
    assert close(st.mean_pairwise_cosine, [math.sqrt(2) / 3, 1.0], 1e-12)


def test_compliance_sign_is_prompted_minus_intrinsic_and_planted_case() -> None:
    g = torch.Generator().manual_seed(4)
    s, n_layers, d = 10, 3, 128
    planted = torch.randn(n_layers, d, generator=g)
    planted = 2.0 * planted / planted.norm(dim=-1, keepdim=True)
    v_int = torch.randn(s, n_layers, d, generator=g)
    noise = torch.randn(s, n_layers, d, generator=g) * (1.0 / math.sqrt(d))  # ‖noise_s‖ ≈ 1
    v_prompt = v_int + planted + noise
    c, st = compliance_direction(v_int, v_prompt)
    assert (cosine_by_layer(c, planted) > 0.95).all()
    # δ_s = p + n_s with ‖p‖ = 2, ‖n_s‖ ≈ 1 nearly orthogonal: cos(δ_s, δ_t) ≈ 4/5, share ≈ (4 + 1/S)/5
    assert ((st.mean_pairwise_cosine - 0.8).abs() < 0.08).all()
    assert ((st.projection_share - 0.82).abs() < 0.06).all()
    assert (st.mean_r2 <= st.projection_share + 1e-12).all()
    assert (st.projection_share <= st.top_direction_share + 1e-12).all()
    c_rev, _ = compliance_direction(v_prompt, v_int)
    assert close(c_rev, -c, 1e-10)


def test_compliance_edge_cases() -> None:
    c, st = compliance_direction(torch.zeros(1, 2, 3), torch.ones(1, 2, 3))
    assert torch.isnan(st.mean_pairwise_cosine).all() and close(st.projection_share, [1.0, 1.0])
    c, st = compliance_direction(torch.ones(3, 1, 2), torch.ones(3, 1, 2))  # all δ = 0
    assert close(c, [[0.0, 0.0]]) and close(st.mean_r2, [0.0]) and torch.isfinite(st.mean_pairwise_cosine).all()
    with pytest.raises(ConfigError):
        compliance_direction(torch.zeros(2, 1, 3), torch.zeros(3, 1, 3))


# ------------------------------------------------------------------------------------------------ ValueVectors


def _vv() -> ValueVectors:
    g = torch.Generator().manual_seed(5)
    vv = ValueVectors(model_hash="sha256:abc123", n_layers=6, d_model=4, layers=[1, 3, 5], judge="detector:v1")
    for i, value in enumerate(["Power", "universalism", "self direction"]):
        vv.set(value, "intrinsic", torch.randn(3, 4, generator=g), pos=10 + i, neg=20 + i)
        vv.set(value, "prompted", torch.randn(3, 4, generator=g), pos=30 + i, neg=5)
    return vv


def test_value_vectors_save_load_roundtrip(tmp_path) -> None:
    vv = _vv()
    vv.set_extra("compliance", torch.ones(3, 4))
    vv.metadata["note"] = "x"
    path = vv.save(tmp_path / "sub" / "vectors.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["vectors.safetensors"]  # no temp file left behind
    back = ValueVectors.load(path)
    assert back.model_hash == vv.model_hash and back.judge == vv.judge
    assert back.layers == [1, 3, 5] and back.n_layers == 6 and back.d_model == 4
    assert set(back.vectors) == set(vv.vectors)
    for key, t in vv.vectors.items():
        assert torch.equal(back.vectors[key], t)
    assert back.counts == vv.counts and back.counts[("Self-Direction", "intrinsic")] == {"pos": 12, "neg": 22}
    assert torch.equal(back.extra_vectors["compliance"], torch.ones(3, 4))
    assert back.metadata == {"note": "x"}
    assert back.values == ["Self-Direction", "Power", "Universalism"]  # circumplex order


def test_value_vectors_file_layout(tmp_path) -> None:
    from safetensors import safe_open

    path = _vv().save(tmp_path / "v.safetensors")
    with safe_open(str(path), framework="pt") as fh:
        names = set(fh.keys())
        meta = fh.metadata()
        assert fh.get_tensor("v/Power/intrinsic").shape == (3, 4)
    assert "v/Power/intrinsic" in names and "v/Self-Direction/prompted" in names
    assert json.loads(meta["layers"]) == [1, 3, 5]
    assert json.loads(meta["counts"])["Universalism"]["intrinsic"] == {"pos": 11, "neg": 21}
    assert meta["model_hash"] == "sha256:abc123" and meta["judge"] == "detector:v1"
    assert meta["valuelens_version"]


def test_value_vectors_load_rejects_bad_files(tmp_path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(DataError, match="no such"):
        ValueVectors.load(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(DataError):
        ValueVectors.load(tmp_path / "junk.safetensors")
    save_file({"a": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(DataError, match="not a valuelens vectors file"):
        ValueVectors.load(tmp_path / "other.safetensors")
    # a valuelens file whose tensor has the wrong shape
    path = _vv().save(tmp_path / "v.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    save_file({"v/Power/intrinsic": torch.zeros(2, 4)}, str(tmp_path / "bad.safetensors"), metadata=meta)
    with pytest.raises(DataError, match=r"bad\.safetensors"):
        ValueVectors.load(tmp_path / "bad.safetensors")
    save_file({"v/Nonsense/intrinsic": torch.zeros(3, 4)}, str(tmp_path / "bad2.safetensors"), metadata=meta)
    with pytest.raises(DataError, match="unknown value"):
        ValueVectors.load(tmp_path / "bad2.safetensors")


def test_value_vectors_validation() -> None:
    with pytest.raises(ConfigError, match="out of range"):
        ValueVectors(model_hash="h", n_layers=4, d_model=2, layers=[0, 4])
    vv = ValueVectors(model_hash="h", n_layers=4, d_model=2, layers=[0, 1])
    with pytest.raises(ConfigError, match="shape"):
        vv.set("power", "intrinsic", torch.zeros(3, 2))
    with pytest.raises(DataError):
        vv.set("power", "intrinsic", torch.full((2, 2), float("inf")))
    with pytest.raises(ConfigError, match="unknown value"):
        vv.set("greed", "intrinsic", torch.zeros(2, 2))
    with pytest.raises(ConfigError):
        vv.set("power", "in/trinsic", torch.zeros(2, 2))
    with pytest.raises(ConfigError, match="no vector"):
        vv.get("power", "prompted")
    assert vv.layer_row(1) == 1
    with pytest.raises(ConfigError):
        vv.layer_row(3)


def test_check_compatible() -> None:
    vv = _vv()
    vv.check_compatible("sha256:abc123", 4, 6)
    with pytest.raises(ConfigError, match=r"vectors from another model \(.*d_model 4 vs 8"):
        vv.check_compatible("sha256:abc123", 8, 6)
    with pytest.raises(ConfigError, match=r"vectors from another model.*model hash"):
        vv.check_compatible("sha256:zzz", 4, 6)
    with pytest.raises(ConfigError, match="n_layers 6 vs 7"):
        vv.check_compatible("sha256:abc123", 4, 7)


def test_with_decomposition_matches_the_functions() -> None:
    vv = _vv()
    dec = vv.with_decomposition()
    a, b = vv.get("Power", "intrinsic"), vv.get("Power", "prompted")
    assert torch.allclose(dec.get("Power", "intrinsic_orth"), orthogonalize(a, b).vector.float())
    assert torch.allclose(dec.get("Power", "prompted_orth"), orthogonalize(b, a).vector.float())
    ax = svd_axes(a, b)
    assert torch.allclose(dec.get("Power", "shared"), ax.shared.float())
    assert torch.allclose(dec.get("Power", "diff_prompted"), ax.diff_prompt.float())
    c, _ = compliance_direction(torch.stack([vv.get(v, "intrinsic") for v in vv.values]),
                                torch.stack([vv.get(v, "prompted") for v in vv.values]))
    assert torch.allclose(dec.extra_vectors["compliance"], c.float())
    assert dec.metadata["compliance_stats"]["values"] == vv.values
    assert "shared" not in vv.conditions  # original untouched


# ----------------------------------------------------------------------------------------- llama.cpp export


def test_export_control_vector_gguf_reads_back(tmp_path) -> None:
    import gguf

    vec = torch.arange(4 * 5, dtype=torch.float32).reshape(4, 5) + 1.0
    with pytest.warns(UserWarning, match="block 0"):
        out = export_control_vector_gguf(vec, tmp_path / "cv.gguf", "llama")
    assert out["written_layers"] == [1, 2, 3] and out["skipped_layers"] == [0]
    r = gguf.GGUFReader(str(tmp_path / "cv.gguf"))
    fields = r.fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == "controlvector"
    assert bytes(fields["controlvector.model_hint"].parts[-1]).decode() == "llama"
    assert int(fields["controlvector.layer_count"].parts[-1][0]) == 3
    tensors = {t.name: t for t in r.tensors}
    assert sorted(tensors) == ["direction.1", "direction.2", "direction.3"]
    for i in (1, 2, 3):
        t = tensors[f"direction.{i}"]
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert list(t.shape) == [5]
        assert np.array_equal(np.asarray(t.data).reshape(-1), vec[i].numpy())


def test_export_control_vector_gguf_layer_mapping(tmp_path) -> None:
    import gguf

    # rows of an [L, D] tensor are labelled by `layers`; a dict names its blocks directly
    out = export_control_vector_gguf(torch.ones(2, 3) * T([[1.0], [2.0]]), tmp_path / "a.gguf", "qwen2",
                                     layers=[7, 9])
    assert out["written_layers"] == [7, 9]
    r = gguf.GGUFReader(str(tmp_path / "a.gguf"))
    data = {t.name: np.asarray(t.data).reshape(-1) for t in r.tensors}
    assert np.array_equal(data["direction.9"], np.full(3, 2.0, dtype=np.float32))
    out = export_control_vector_gguf({0: torch.zeros(3), 4: -torch.ones(3)}, tmp_path / "b.gguf", "llama")
    assert out["written_layers"] == [4] and out["skipped_layers"] == []  # a zero block 0 is dropped quietly


def test_export_control_vector_gguf_errors(tmp_path) -> None:
    with pytest.raises(ConfigError):
        export_control_vector_gguf(torch.ones(2, 3), tmp_path / "x.gguf", "llama", layers=[1])
    with pytest.raises(ConfigError):
        export_control_vector_gguf({1: torch.ones(3), 2: torch.ones(4)}, tmp_path / "x.gguf", "llama")
    with pytest.raises(ConfigError), pytest.warns(UserWarning):
        export_control_vector_gguf(torch.ones(1, 3), tmp_path / "x.gguf", "llama")  # only block 0
    with pytest.raises(ConfigError):
        export_control_vector_gguf({1: torch.ones(3)}, tmp_path / "x.gguf", "")
    with pytest.raises(DataError):
        export_control_vector_gguf({1: torch.tensor([float("nan")])}, tmp_path / "x.gguf", "llama")
    assert not (tmp_path / "x.gguf").exists()


def test_value_vectors_export_gguf(tmp_path) -> None:
    import gguf

    vv = _vv()
    out = vv.export_gguf("power", "intrinsic", tmp_path / "p.gguf", "llama", scale=2.0)
    assert out["written_layers"] == [1, 3, 5]
    r = gguf.GGUFReader(str(tmp_path / "p.gguf"))
    data = {t.name: np.asarray(t.data).reshape(-1) for t in r.tensors}
    assert np.allclose(data["direction.3"], 2.0 * vv.get("Power", "intrinsic")[1].numpy())


def test_docstring_examples_run() -> None:
    import doctest

    import valuelens.vectors as mod

    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
