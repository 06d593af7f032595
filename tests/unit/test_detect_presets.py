"""Training options behind the presets, on a tiny randomly initialised BERT (real code, no weights to learn):
length-bucketed batches, multi-task heads and hierarchy consistency, calibration saved with the detector, no
per-epoch scoring, an unlabelled evaluation split (run file), presets and ``ensure_preset``, ``detect
evaluate`` on any labelled file with CIs, and the detector judge's calibrated scores."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from valuelens.detect.data import load_split, write_tsv
from valuelens.detect.finetune import TrainConfig, ValueDetector, _bucketed, load_detector, train_detector
from valuelens.errors import ConfigError
from valuelens.values import VALUEEVAL_CATEGORIES

os.environ["HF_HUB_OFFLINE"] = "1"
DATA = Path(__file__).resolve().parents[2].parent / "shared/data/valueeval23"


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A 2-layer, 32-wide BERT with MiniLM's tokenizer, saved as a Hugging Face folder."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from valuelens.detect.encoders import resolve_encoder

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(resolve_encoder("minilm").path)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=256)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def splits() -> tuple:
    train = load_split(DATA, "training", level1=True).head(240)
    return train, load_split(DATA, "validation").head(120)


def _cfg(enc: str, **kw: object) -> TrainConfig:
    base = TrainConfig(encoder=enc, epochs=2, batch_size=16, lr=1e-3, head_lr=1e-2, max_len=64, patience=5,
                       length_buckets=True, heldout_frac=0.25)
    return replace(base, **kw)  # type: ignore[arg-type]


def test_bucketed_batches_cover_every_index_once_and_group_lengths() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 500, size=1000)
    perm = rng.permutation(1000)
    batches = _bucketed(perm, lengths, 32, seed=1)
    assert sorted(np.concatenate(batches).tolist()) == list(range(1000))
    assert all(len(b) <= 32 for b in batches)
    padded_bucketed = sum(lengths[b].max() * len(b) for b in batches)
    padded_random = sum(lengths[perm[i:i + 32]].max() * len(perm[i:i + 32]) for i in range(0, 1000, 32))
    assert padded_bucketed < 0.75 * padded_random
    again = _bucketed(perm, lengths, 32, seed=1)
    assert all((a == b).all() for a, b in zip(batches, again, strict=True))  # a resumed epoch sees the same


def test_multitask_hierarchy_calibration_round_trip(tiny_encoder: str, splits: tuple, tmp_path: Path) -> None:
    train, valid = splits
    cfg = _cfg(tiny_encoder, aux_heads="values,level1", hierarchy=True)
    res = train_detector(train, valid, cfg, tmp_path, progress=False)
    model = res.model
    assert set(model.aux) == {"values", "level1"} and model.aux["level1"] == train.level1.shape[1]
    hier = model.info["hierarchy"]
    assert hier["weight"] in (0.0, 0.25, 0.5) and set(hier["heldout_f1_by_weight"]) == {"0.0", "0.25", "0.5"}
    assert hier["heldout_f1_by_weight"][str(hier["weight"])] == max(hier["heldout_f1_by_weight"].values())
    cal = res.scores["calibration"]
    assert cal["method"] == "platt" and set(cal["ece"]) == set(VALUEEVAL_CATEGORIES)
    assert (tmp_path / "model" / "calibration.json").exists()
    back = load_detector(tmp_path / "model")
    assert isinstance(back, ValueDetector) and back.calibrator is not None
    assert back.hierarchy_weight == hier["weight"]
    texts = valid.texts()[:12]
    np.testing.assert_allclose(back.predict_proba(texts), model.predict_proba(texts), atol=1e-6)
    # The hierarchy combination is p_c^(1-w) * p_value(c)^w with the values head.
    p0 = back.predict_proba(texts, hierarchy_weight=0.0)
    p5 = back.predict_proba(texts, hierarchy_weight=0.5)
    enc = back.tokenize(texts)
    with torch.no_grad():
        feats = back.features(enc["input_ids"], enc["attention_mask"])
        pv = torch.sigmoid(back.aux_heads["values_head"](feats)).numpy()
    from valuelens.values import valueeval_to_schwartz_matrix

    expect = np.sqrt(p0 * (pv @ valueeval_to_schwartz_matrix().T))
    np.testing.assert_allclose(p5, expect, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="values"):
        _cfg(tiny_encoder, hierarchy=True).validate()
    with pytest.raises(ConfigError, match="level1"):
        train_detector(load_split(DATA, "training").head(80), None, _cfg(tiny_encoder, aux_heads="level1"),
                       tmp_path / "x", progress=False)


def test_no_epoch_scoring_no_eval_split_and_resume_with_buckets(tiny_encoder: str, splits: tuple,
                                                               tmp_path: Path) -> None:
    train, _ = splits
    cfg = _cfg(tiny_encoder, eval_each_epoch=False, epochs=2)
    full = train_detector(train, None, cfg, tmp_path / "full", progress=False)
    assert full.scores["train_seconds"] > 0 and "f1" not in full.scores
    assert [h["epoch"] for h in full.history] == [1, 2] and "dev_f1_tuned" not in full.history[0]
    assert not (tmp_path / "full" / "best.safetensors").exists()
    th = json.loads((tmp_path / "full" / "model" / "thresholds.json").read_text())
    assert th["source"] == "heldout"
    # Interrupted after 3 steps and resumed: the same weights as the uninterrupted run.
    part = tmp_path / "part"
    train_detector(train, None, cfg, part, progress=False, stop_after_steps=3)
    resumed = train_detector(train, None, cfg, part, progress=False)
    for (k, a), (_, b) in zip(full.model.state_dict().items(), resumed.model.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    with pytest.raises(ConfigError, match="heldout"):
        replace(cfg, threshold_source="validation").validate()


def test_unlabelled_eval_split_writes_a_run_file(tiny_encoder: str, splits: tuple, tmp_path: Path) -> None:
    train, valid = splits
    test = load_split(DATA, "validation").head(30)
    test = replace(test, name="test", labels=None)
    res = train_detector(train, test, _cfg(tiny_encoder, epochs=1), tmp_path, progress=False)
    from valuelens.detect.predict import read_run_file

    ids, labels = read_run_file(tmp_path / "run-test.tsv")
    assert ids == test.ids and labels.shape == (30, 20)
    assert "f1" not in res.scores and res.scores["inference_per_second"] > 0
    assert valid.labels is not None


def test_presets_resolve_and_ensure_preset_trains_once(tiny_encoder: str, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from valuelens.detect.presets import PRESETS, ensure_preset, preset_config
    from valuelens.precision import native_bf16

    assert set(PRESETS) == {"fast", "best", "pipeline"}
    fast = preset_config("fast")
    assert (fast.encoder, fast.epochs, fast.lr, fast.head_lr) == ("minilm", 4, 1e-4, 2e-3)
    assert fast.bf16 == native_bf16()  # "auto": never emulated bf16
    best = preset_config("best", bf16=False)
    assert best.encoder == "mpnet" and PRESETS["best"].tfidf and best.threshold_source == "heldout"
    assert PRESETS["best"].members == 2 and best.hierarchy and best.aux_names() == ["values", "level1"]
    pipe = preset_config("pipeline", bf16=False)
    assert pipe.length_buckets and not pipe.eval_each_epoch and pipe.calibration != "none"
    assert preset_config("pipeline", bf16=False, epochs=1).epochs == 1
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("huge")
    with pytest.raises(ConfigError, match="unknown training option"):
        preset_config("fast", epochz=3)

    monkeypatch.setenv("VALUELENS_CACHE", str(tmp_path / "cache"))
    small = {"encoder": tiny_encoder, "max_train": 120, "epochs": 1, "max_len": 48, "heldout_frac": 0.25}
    monkeypatch.setitem(PRESETS, "pipeline", replace(PRESETS["pipeline"], config=replace(
        PRESETS["pipeline"].config, **small)))
    folder = ensure_preset("pipeline", DATA, bf16=False, log=None)
    assert folder == tmp_path / "cache" / "detectors" / PRESETS["pipeline"].cache_name
    det = load_detector(folder)
    assert det.calibrator is not None
    stamp = (folder / "head.safetensors").stat().st_mtime_ns
    assert ensure_preset("pipeline", DATA, bf16=False, log=None) == folder  # cached: not retrained
    assert (folder / "head.safetensors").stat().st_mtime_ns == stamp


def test_preset_with_several_members_shares_the_held_out_split(tiny_encoder: str, splits: tuple, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``members=2``: two seeds of the recipe on one held-out split, averaged (+ TF-IDF for ``best``); the
    ensemble's probabilities are the weighted mean of its members'; a rerun resumes to the same detector."""
    from valuelens.detect.finetune import EnsembleDetector
    from valuelens.detect.presets import PRESETS, train_preset

    train, valid = splits
    small = {"encoder": tiny_encoder, "epochs": 1, "max_len": 48, "heldout_frac": 0.25, "aux_heads": "",
             "hierarchy": False}
    monkeypatch.setitem(PRESETS, "best", replace(PRESETS["best"], config=replace(PRESETS["best"].config, **small)))
    res = train_preset("best", train, valid, tmp_path / "run", bf16=False, members=2, progress=False)
    assert res.model_dir == tmp_path / "run" / "ensemble"
    ens = load_detector(res.model_dir)
    tf = json.loads((res.model_dir / "detector.json").read_text())["info"]["tfidf"]
    assert set(tf["heldout_f1_by_weight"]) == {"0", "0.1", "0.2", "0.3", "0.4", "0.5"}
    n_tf = int(tf["weight"] > 0)  # weight 0 (chosen on the held-out part): the TF-IDF member is left out
    assert tf["heldout_f1_by_weight"][f"{tf['weight']:g}"] == max(tf["heldout_f1_by_weight"].values())
    assert isinstance(ens, EnsembleDetector) and len(ens.members) == 2 + n_tf  # two seeds (+ TF-IDF)
    seeds = [json.loads((d / "train_config.json").read_text()) for d in (tmp_path / "run",
                                                                        tmp_path / "run/members/seed1")]
    assert [c["seed"] for c in seeds] == [0, 1] and {c["heldout_seed"] for c in seeds} == {0}
    a, b = (ValueDetector.from_pretrained(d) for d in (tmp_path / "run/model", tmp_path / "run/members/seed1/model"))
    texts = valid.texts()[:8]
    pa, pb = a.predict_proba(texts), b.predict_proba(texts)
    assert not np.allclose(pa, pb)  # different seeds, different members
    w = ens.weights
    assert w[0] == pytest.approx(w[1])
    mixed = w[0] * pa + w[1] * pb + (w[2] * ens.members[2].predict_proba(texts) if n_tf else 0)
    np.testing.assert_allclose(ens.predict_proba(texts), mixed, atol=1e-5)
    assert "f1" in res.scores and "member_scores" in res.scores
    again = train_preset("best", train, None, tmp_path / "run", bf16=False, members=2, progress=False)
    np.testing.assert_array_equal(load_detector(again.model_dir).predict_proba(texts), ens.predict_proba(texts))
    with pytest.raises(ConfigError, match="members"):
        train_preset("best", train, None, tmp_path / "x", bf16=False, members=0)


def test_evaluate_any_labelled_file_and_calibrated_judge(tiny_encoder: str, splits: tuple, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    from valuelens.cli import main
    from valuelens.judges.detector import DetectorJudge
    from valuelens.values import VALUE_NAMES, valueeval_to_schwartz_matrix

    train, valid = splits
    train_detector(train, valid, _cfg(tiny_encoder, epochs=1), tmp_path / "run", progress=False)
    model = tmp_path / "run" / "model"
    # An "extra test set" in the task's format: two TSV files with any name.
    sub = valid.head(60)
    write_tsv(tmp_path / "arguments-extra.tsv", ["Argument ID", "Conclusion", "Stance", "Premise"],
              [[a.id, a.conclusion, a.stance, a.premise] for a in sub.arguments])
    write_tsv(tmp_path / "labels-extra.tsv", ["Argument ID", *VALUEEVAL_CATEGORIES],
              [[a.id, *map(str, row)] for a, row in zip(sub.arguments, sub.labels, strict=True)])
    capsys.readouterr()
    main(["detect", "evaluate", "--model", str(model), "--arguments", str(tmp_path / "arguments-extra.tsv"),
          "--labels", str(tmp_path / "labels-extra.tsv"), "--bootstrap", "50", "--reliability",
          str(tmp_path / "rel.png"), "--json-out", str(tmp_path / "ev.json")])
    out = capsys.readouterr().out
    assert "extra (60 arguments)" in out and "95 % bootstrap CIs" in out and "ECE" in out
    assert sum(c in out for c in VALUEEVAL_CATEGORIES) == 20
    ev = json.loads((tmp_path / "ev.json").read_text())
    lo, hi = ev["ci"]["macro"]["f1"]
    assert lo <= ev["saved"]["f1"] <= hi and (tmp_path / "rel.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as ei:
        main(["detect", "evaluate", "--model", str(model), "--arguments", str(tmp_path / "arguments-extra.tsv")])
    assert ei.value.code == 2 and "--labels" in capsys.readouterr().err

    judge = DetectorJudge(model)
    det = judge.detector
    texts = ["We must protect the forests for our children.", "Winning is everything to me."]
    res = judge.judge(texts, ["universalism", "achievement"])
    probs = det.predict_proba(texts)
    cal = det.calibrator.transform(probs)
    m = valueeval_to_schwartz_matrix().astype(bool)
    uni = VALUE_NAMES.index("Universalism")
    np.testing.assert_allclose(res.scores[:, 0], cal[:, m[:, uni]].max(1))
    expressed = ((probs - det.thresholds) >= 0)[:, m[:, uni]].any(1)
    assert (res.labels[:, 0] == expressed).all()  # labels still come from the tuned thresholds
    assert "platt" in judge.describe()["calibration"]


def test_bench_detect_smoke(tiny_encoder: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                            load_benchmark: object) -> None:
    """benchmarks/bench_detect.py runs end to end on the tiny encoder and prints its ratio table (no timing
    assertion: the machine is shared)."""
    bench = load_benchmark("bench_detect")  # type: ignore[operator]
    res = bench.main(["--preset", "pipeline", "--baseline", "--encoder", tiny_encoder, "--max-train", "120",
                      "--epochs", "1", "--max-eval", "40", "--bootstrap", "20", "--data", str(DATA),
                      "--out", str(tmp_path), "--json", str(tmp_path / "b.json")])
    out = capsys.readouterr().out
    assert "× baseline time" in out and "| pipeline |" in out
    rows = {r["preset"]: r for r in res["rows"]}
    assert rows["pipeline"]["train_minutes"] > 0 and 0 <= rows["pipeline"]["f1"] <= 1
    assert rows["pipeline"]["ece"] is not None and rows["previous pipeline recipe (baseline)"]["ece"] is None
    assert json.loads((tmp_path / "b.json").read_text())["overrides"]["max_train"] == 120
