"""Vector folders (save_pretrained / from_pretrained / run folders / the Hub path up to the network), the model
card, and the converters against the real repeng and steering-vectors packages: files round-trip, and the other
tools steer a model with exactly valuelens's numbers at the same α."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from valuelens.cli import main
from valuelens.errors import DataError, ModelError
from valuelens.hooks import apply_interventions
from valuelens.serving import converters as cv
from valuelens.serving.artifacts import VectorArtifact, is_hub_id
from valuelens.testing import tiny_llama
from valuelens.vectors import ValueVectors

NORMS = [3.0, 4.0, 5.0, 6.0]


def _repeng():
    # repeng 0.4.0 annotates with np.float_, removed in NumPy 2; the shim only restores the alias it reads.
    if not hasattr(np, "float_"):
        np.float_ = np.float64  # type: ignore[attr-defined]
    import repeng

    return repeng


@pytest.fixture()
def art() -> VectorArtifact:
    g = torch.Generator().manual_seed(0)
    vv = ValueVectors(model_hash="h" * 64, n_layers=4, d_model=64, layers=[0, 1, 2, 3], judge='{"name": "lexicon"}')
    vv.set("Benevolence", "prompted", torch.randn(4, 64, generator=g), pos=10, neg=12)
    vv.set("Benevolence", "intrinsic", torch.randn(4, 64, generator=g), pos=9, neg=13)
    vv.set("Power", "prompted", torch.randn(4, 64, generator=g), pos=8, neg=14)
    return VectorArtifact(vv, model_id="tiny", default_layer=2, residual_norms=list(NORMS), guard_alpha=0.1,
                          info={"family": "llama"})


def _run_folder(tmp: Path, art: VectorArtifact) -> Path:
    run = tmp / "run"
    (run / "analyze" / "capability" / "tables").mkdir(parents=True)
    (run / "figures").mkdir()
    art.vectors.save(run / "vectors.safetensors")
    (run / "vectors_summary.json").write_text(json.dumps({"layer": 1}))
    (run / "analyze" / "capability" / "summary.json").write_text(json.dumps({"layer": 2, "alpha": 0.05}))
    (run / "analyze" / "capability" / "tables" / "residual_norms.csv").write_text(
        "layer,mean_norm\n" + "".join(f"{i},{n}\n" for i, n in enumerate(NORMS)))
    (run / "config.json").write_text(json.dumps({"extract": {"model": "tiny", "seed": 3}}))
    (run / "model.json").write_text(json.dumps({"name": "tiny", "family": "llama"}))
    (run / "findings.json").write_text(json.dumps({"findings": [
        {"id": "steering-effect", "status": "not reproduced", "effect": -0.03, "ci_low": -0.07, "ci_high": 0.01,
         "p_value": 0.4}]}))
    (run / "figures" / "cos_int_prompt_by_layer.png").write_bytes(b"\x89PNG fake")
    return run


def test_save_and_load_round_trip(tmp_path: Path, art: VectorArtifact) -> None:
    folder = art.save_pretrained(tmp_path / "vec")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_hash"] == "h" * 64 and cfg["layers"] == [0, 1, 2, 3] and cfg["default_layer"] == 2
    assert cfg["values"] == ["Power", "Benevolence"] and cfg["kinds"] == ["intrinsic", "prompted"]
    assert cfg["alpha_scale"]["residual_norms"] == NORMS and cfg["alpha_scale"]["guard_alpha"] == 0.1
    assert cfg["judge"] == '{"name": "lexicon"}' and cfg["counts"]["Power/prompted"] == {"pos": 8, "neg": 14}
    back = VectorArtifact.load(folder)
    for key, t in art.vectors.vectors.items():
        assert torch.equal(back.vectors.vectors[key], t)
    s1, s2 = art.steer("Power", "prompted", 0.3), back.steer("power", "prompted", 0.3)
    assert torch.equal(s1.vector, s2.vector) and s1.layers == s2.layers == (2,)
    assert float(s1.vector.norm()) == pytest.approx(NORMS[2], rel=1e-6)
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: valuelens") and "| values | Power, Benevolence |" in card


def test_run_folder_and_card_with_findings(tmp_path: Path, art: VectorArtifact) -> None:
    run = _run_folder(tmp_path, art)
    from_run = VectorArtifact.load(run)
    assert from_run.default_layer == 2 and from_run.guard_alpha == 0.05 and from_run.residual_norms == NORMS
    assert from_run.model_id == "tiny"
    assert main(["pack", str(run), str(tmp_path / "packed")]) is None
    packed = tmp_path / "packed"
    card = (packed / "README.md").read_text()
    assert "steering-effect | not reproduced | -0.030 [-0.070, +0.010]" in card
    assert "![cos_int_prompt_by_layer](figures/cos_int_prompt_by_layer.png)" in card
    assert (packed / "figures" / "cos_int_prompt_by_layer.png").is_file()
    again = VectorArtifact.load(packed)
    assert again.guard_alpha == 0.05 and again.info["made_from"]["extract_config"] == {"model": "tiny", "seed": 3}


def test_hub_path_stops_at_the_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, art) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    assert is_hub_id("someone/value-vectors") and not is_hub_id("./x") and not is_hub_id("a/b/c")
    with pytest.raises(ModelError, match="cannot download vectors 'someone/value-vectors' from the Hub"):
        VectorArtifact.load("someone/value-vectors")
    with pytest.raises(DataError, match="vectors not found"):
        VectorArtifact.load("no/such/folder/here")
    run = _run_folder(tmp_path, art)
    with pytest.raises(SystemExit) as ex:
        main(["push", str(run), "not-a-repo"])
    assert ex.value.code == 2
    assert main(["push", str(run), "someone/vecs", "--dry-run"]) is None


def test_control_vector_gguf_round_trip_with_repeng(tmp_path: Path, art: VectorArtifact) -> None:
    repeng = _repeng()
    path = tmp_path / "cv.gguf"
    res = cv.to_control_vector_gguf(art, "Benevolence", "prompted", path)
    assert res["layers"] == [1, 2, 3]  # llama.cpp cannot steer block 0
    theirs = repeng.ControlVector.import_gguf(str(path))
    assert theirs.model_type == "llama" and sorted(theirs.directions) == [1, 2, 3]
    for layer in (1, 2, 3):  # relative scale: the stored direction is mean‖h_l‖ · v̂
        v = art.vector("Benevolence", "prompted", layer)
        np.testing.assert_allclose(theirs.directions[layer], (v / v.norm() * NORMS[layer]).numpy(), rtol=1e-6)
    back = cv.from_control_vector_gguf(path)
    assert back.values == ["Benevolence"] and back.kinds == ["prompted"] and back.vectors.n_layers == 4
    assert back.vectors.model_hash == "h" * 64 and back.guard_alpha == pytest.approx(0.1)
    # repeng's own export, read by us (raw scale round trip is exact)
    raw = cv.layer_rows(art, "Power", "prompted", scale="raw")
    mine = repeng.ControlVector(model_type="llama", directions={k: v.numpy() for k, v in raw.items() if k})
    mine.export_gguf(str(tmp_path / "repeng.gguf"))
    got = cv.from_control_vector_gguf(tmp_path / "repeng.gguf", value="Power", kind="prompted", n_layers=4)
    for layer in (1, 2, 3):
        assert torch.equal(got.vector("Power", "prompted", layer), raw[layer])
    assert main(["convert", str(tmp_path / "repeng.gguf"), str(tmp_path / "imported"), "--to", "valuelens",
                 "--value", "Power", "--n-layers", "4"]) is None
    assert VectorArtifact.load(tmp_path / "imported").values == ["Power"]


def test_repeng_control_model_steers_like_valuelens(art: VectorArtifact) -> None:
    repeng = _repeng()
    model = tiny_llama(seed=1)
    ids = torch.randint(3, 100, (2, 8))
    pos = torch.arange(8).expand(2, 8)
    with torch.no_grad(), apply_interventions(model, [art.steer("Power", "prompted", 0.4, layer=2)]):
        want = model(ids, position_ids=pos).logits
    cvec = repeng.ControlVector(model_type="llama", directions={
        k: v.numpy() for k, v in cv.layer_rows(art, "Power", "prompted", layers=[2]).items()})
    cm = repeng.ControlModel(model, [2])
    cm.set_control(cvec, coeff=0.4)  # repeng's coefficient = valuelens's relative α
    with torch.no_grad():
        got = cm(ids, position_ids=pos).logits
    cm.unwrap()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_steering_vectors_round_trip_and_same_steering(tmp_path: Path, art: VectorArtifact) -> None:
    from steering_vectors import SteeringVector

    sv = cv.to_steering_vector(art, "Benevolence", "prompted", layers=[1, 2])
    assert isinstance(sv, SteeringVector) and sorted(sv.layer_activations) == [1, 2]
    model = tiny_llama(seed=2)
    ids = torch.randint(3, 100, (2, 7))
    with torch.no_grad():
        with apply_interventions(model, [art.steer("Benevolence", "prompted", 0.3, layer=k) for k in (1, 2)]):
            want = model(ids).logits
        with sv.apply(model, multiplier=0.3):  # their multiplier = our relative α
            got = model(ids).logits
        plain = model(ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, plain)
    cv.save_steering_vector(sv, tmp_path / "sv.safetensors", value="Benevolence", kind="prompted")
    loaded, meta = cv.load_steering_vector(tmp_path / "sv.safetensors")
    assert meta["value"] == "Benevolence" and loaded.layer_type == "decoder_block"
    for k, v in sv.layer_activations.items():
        assert torch.equal(loaded.layer_activations[k], v)
    back = cv.from_steering_vector(loaded, "Benevolence", "prompted", n_layers=4)
    assert torch.equal(back.vector("Benevolence", "prompted", 2), sv.layer_activations[2])
    assert main(["convert", str(art.save_pretrained(tmp_path / "v")), str(tmp_path / "cli_sv.safetensors"),
                 "--to", "steering-vectors", "--value", "Power"]) is None
    assert cv.load_steering_vector(tmp_path / "cli_sv.safetensors")[1]["value"] == "Power"
