"""Train and evaluate several detection methods on the same split; one table (CSV, Markdown, bar chart).

Each method writes ``<out>/<method>/result.json`` when it has finished; a rerun skips finished methods and
resumes an interrupted neural one from its checkpoint. The table has, per method: the official macro
precision/recall/F1 with *honest* thresholds (never tuned on the evaluation split), the F1 with thresholds
tuned on the evaluation split itself (the paper's setup, optimistic), per-category F1, training time (minutes
from start to the saved detector, evaluation excluded) and inference throughput (evaluation arguments per
second on this machine), and for calibrated detectors the mean expected calibration error (raw → calibrated).
``reliability.png`` draws the calibrated methods' reliability curves (all categories pooled).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..runio import atomic_path, atomic_write_json, atomic_write_text, read_jsonl, write_manifest
from ..values import VALUEEVAL_CATEGORIES
from .data import ValueEvalSplit, load_split
from .measure import apply_thresholds, evaluate, tune_thresholds

__all__ = ["METHODS", "compare", "render_table"]

METHODS: dict[str, str] = {
    "all-ones": "predict every category (official lower bound)",
    "tfidf": "TF-IDF 1-2-grams + logistic regression, thresholds from grouped out-of-fold training predictions",
    "finetune": "full fine-tuning of the encoder, mean pooling, linear head; thresholds on held-out training",
    "finetune-top2": "fine-tuning of the top 2 encoder layers only",
    "soft-prompt": "prompt tuning: 20 soft-prompt vectors + head, frozen encoder",
    "hard-template": "prompt tuning: hard template, head on the mask token, frozen encoder",
    "preset-fast": "preset fast: MiniLM fine-tune, 4 epochs, early stopping (the default recipe)",
    "preset-best": "preset best: mpnet fine-tune (3 epochs, length buckets) + TF-IDF member",
    "preset-pipeline": "preset pipeline: MiniLM, 3 epochs, length buckets, no per-epoch scoring (judge of valuelens run)",
    "llm-zero": "instruction-tuned LLM, zero-shot",
    "llm-few": "instruction-tuned LLM, few-shot (3 examples)",
    "llm-cot": "instruction-tuned LLM, zero-shot with step-by-step reasoning",
}


def _row(name: str, gold: np.ndarray, pred: np.ndarray, probs: np.ndarray | None, train_s: float,
         infer_s: float, extra: dict[str, Any]) -> dict[str, Any]:
    s = evaluate(gold, pred)
    tuned_f1 = s.f1
    if probs is not None:
        tuned_f1 = evaluate(gold, apply_thresholds(probs, tune_thresholds(probs, gold))).f1
    return {"method": name, "precision": s.precision, "recall": s.recall, "f1": s.f1,
            "f1_eval_tuned": tuned_f1, "train_seconds": train_s,
            "inference_per_second": len(gold) / max(infer_s, 1e-9), "n_eval": len(gold),
            "per_category_f1": {c: d["f1"] for c, d in s.per_category.items()}, **extra}


def _neural(method: str, train: ValueEvalSplit, valid: ValueEvalSplit, folder: Path, *, encoder: str, epochs: int,
            bf16: bool, log: Callable[[str], None], prompt_epochs: int | None = None) -> dict[str, Any]:
    from .finetune import TrainConfig, ValueDetector, train_detector
    from .prompt_tune import hard_template_config, soft_prompt_config

    base = TrainConfig(encoder=encoder, epochs=epochs, bf16=bf16)
    cfg = {"finetune": base, "finetune-top2": replace(base, train_layers=2, lr=1e-4),
           "soft-prompt": replace(soft_prompt_config(base), epochs=prompt_epochs or epochs),
           "hard-template": hard_template_config(base)}[method]
    res = train_detector(train, valid, cfg, folder / "run", log=log)
    det = ValueDetector.from_pretrained(folder / "run" / "model")
    t0 = time.time()
    probs = det.predict_proba(valid.texts(), bf16=bf16)
    infer = time.time() - t0
    assert valid.labels is not None
    row = _row(method, valid.labels, apply_thresholds(probs, det.thresholds), probs, res.train_seconds, infer,
               {"config": asdict(cfg), "model": str(folder / "run" / "model")})
    _calibrated_row(row, det, probs, valid.labels, folder)
    return row


def _calibrated_row(row: dict[str, Any], det: Any, probs: np.ndarray, gold: np.ndarray, folder: Path) -> None:
    """Add the expected calibration error and keep calibrated probabilities for the reliability diagram."""
    from .finetune import calibration_report

    cal = getattr(det, "calibrator", None)
    if cal is None:
        return
    rep = calibration_report(probs, gold, cal)
    row.update({"ece_raw": rep["ece_raw_mean"], "ece": rep["ece_mean"], "calibration": rep["method"],
                "ece_per_category": rep["ece"]})
    with atomic_path(folder / "calibrated_probs.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, cal.transform(probs))
    row["calibrated_probs"] = str(folder / "calibrated_probs.npy")


def _preset(method: str, train: ValueEvalSplit, valid: ValueEvalSplit, folder: Path, *, bf16: bool | str,
            log: Callable[[str], None]) -> dict[str, Any]:
    from .finetune import load_detector
    from .presets import train_preset

    name = method.removeprefix("preset-")
    res = train_preset(name, train, None, folder / "run", bf16=bf16, log=log)
    det = load_detector(res.model_dir)
    assert res.config is not None and valid.labels is not None
    t0 = time.time()
    probs = det.predict_proba(valid.texts(), bf16=res.config.bf16)
    infer = time.time() - t0
    row = _row(method, valid.labels, apply_thresholds(probs, det.thresholds), probs, res.train_seconds, infer,
               {"config": asdict(res.config), "model": str(res.model_dir)})
    _calibrated_row(row, det, probs, valid.labels, folder)
    return row


def _llm(method: str, train: ValueEvalSplit, valid: ValueEvalSplit, folder: Path, llm_spec: str | None,
         log: Callable[[str], None], data_dir: str | Path | None = None) -> dict[str, Any]:
    if not llm_spec:
        raise ConfigError(f"method {method!r} needs --llm (e.g. local:smollm2 or openai:http://HOST/v1#model)")
    from .llm import LLMDetector, make_backend

    shots = 3 if method == "llm-few" else 0
    det = LLMDetector(make_backend(llm_spec), shots=shots, cot=method == "llm-cot", train=train,
                      data_dir=data_dir)
    # Per-argument cache so an interrupted LLM run resumes where it stopped.
    from ..runio import JsonlWriter

    cache = folder / "predictions.jsonl"
    done = {r["id"]: r["labels"] for r in read_jsonl(cache)}
    todo = [a for a in valid.arguments if a.id not in done]
    t0 = time.time()
    with JsonlWriter(cache) as w:
        for s in range(0, len(todo), 8):
            chunk = todo[s:s + 8]
            pred = np.asarray(det.predict(chunk))
            for a, row in zip(chunk, pred, strict=True):
                done[a.id] = [int(v) for v in row]
                w.write({"id": a.id, "labels": done[a.id]})
            log(f"{method}: {len(done)}/{len(valid)}")
    infer = time.time() - t0
    pred = np.array([done[a.id] for a in valid.arguments], dtype=np.int64)
    assert valid.labels is not None
    n_new = max(len(todo), 1)
    stats = det.parse_stats() if hasattr(det, "parse_stats") else {}  # parse failures of this session's answers
    row = _row(method, valid.labels, pred, None, 0.0, infer, {"describe": det.describe(), "parse_stats": stats})
    row["inference_per_second"] = n_new / max(infer, 1e-9) if todo else float("nan")
    return row


def compare(methods: list[str], split: str, out_dir: str | Path, *, data_dir: str | Path,
            encoder: str = "minilm", epochs: int = 4, bf16: bool | str | None = "auto", max_train: int | None = None,
            max_eval: int | None = None, llm_spec: str | None = None, prompt_epochs: int | None = None,
            log: Callable[[str], None] | None = None) -> str:
    """Run every method in ``methods`` on ``split`` and write ``results.csv``, ``results.md``,
    ``results.png`` and ``manifest.json`` into ``out_dir``. Returns the Markdown table."""
    from ..precision import use_bf16

    say = log or (lambda s: None)
    bf16 = use_bf16(bf16)  # None/"auto": only where bf16 is native (emulated bf16 is many times slower)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; available: {', '.join(METHODS)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = load_split(data_dir, "training", level1=True).head(max_train)
    valid = load_split(data_dir, split).head(max_eval)
    assert train.labels is not None and valid.labels is not None
    _gold_cache[str(out)] = valid.labels
    rows: list[dict[str, Any]] = []
    for m in methods:
        folder = out / m
        result = folder / "result.json"
        if result.exists():
            import json

            say(f"{m}: already finished, not retrained")
            rows.append(json.loads(result.read_text()))
            continue
        say(f"{m}: {METHODS[m]}")
        if m == "all-ones":
            from .baselines import AllOnes

            t0 = time.time()
            pred = AllOnes().predict(valid.arguments)
            row = _row(m, valid.labels, pred, None, 0.0, time.time() - t0, {})
        elif m == "tfidf":
            from .baselines import TfidfLogReg

            t0 = time.time()
            model = TfidfLogReg().fit(train.arguments, train.labels)
            train_s = time.time() - t0
            t0 = time.time()
            probs = model.predict_proba(valid.arguments)
            row = _row(m, valid.labels, apply_thresholds(probs, model.thresholds), probs, train_s,
                       time.time() - t0, {"describe": model.describe()})
        elif m.startswith("llm-"):
            row = _llm(m, train, valid, folder, llm_spec, say, data_dir)
        elif m.startswith("preset-"):
            row = _preset(m, train, valid, folder, bf16=bf16, log=say)
        else:
            row = _neural(m, train, valid, folder, encoder=encoder, epochs=epochs, bf16=bf16, log=say,
                          prompt_epochs=prompt_epochs)
        row["description"] = METHODS[m]
        atomic_write_json(result, row)
        say(f"{m}: macro F1 {row['f1']:.4f} (P {row['precision']:.4f}, R {row['recall']:.4f})")
        rows.append(row)
        # Rewrite the table after every method, so a long comparison shows partial results as it goes.
        md = _write_outputs(out, rows, split)
    md = _write_outputs(out, rows, split)
    write_manifest(out, stage="detect-compare", config={
        "methods": methods, "split": split, "data_dir": str(data_dir), "encoder": encoder, "epochs": epochs,
        "bf16": bf16, "max_train": max_train, "max_eval": max_eval, "llm": llm_spec, "prompt_epochs": prompt_epochs,
        "n_train": len(train), "n_eval": len(valid)})
    return md


def _write_outputs(out: Path, rows: list[dict[str, Any]], split: str) -> str:
    md = render_table(rows)
    atomic_write_text(out / "results.md", md)
    _write_csv(out / "results.csv", rows)
    _plot(out / "results.png", rows, split)
    _reliability(out / "reliability.png", rows, split, out)
    return md


def _reliability(path: Path, rows: list[dict[str, Any]], split: str, out: Path) -> None:
    """Reliability diagram of every calibrated method (nothing written when none is calibrated)."""
    from .calibration import reliability_diagram

    cal_rows = [r for r in rows if r.get("calibrated_probs") and Path(r["calibrated_probs"]).exists()]
    if not cal_rows:
        return
    gold = _gold_cache.get(str(out))
    curves = {}
    for r in cal_rows:
        p = np.load(r["calibrated_probs"])
        if gold is None or gold.shape != p.shape:
            continue
        curves[r["method"]] = (p, gold)
    if curves:
        reliability_diagram(path, curves, title=f"calibrated probabilities, ValueEval'23 {split}")


_gold_cache: dict[str, np.ndarray] = {}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.3f}"
    return str(v)


def render_table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per method; per-category F1 in a second table (20 columns do not fit in one)."""
    head = ["method", "macro P", "macro R", "macro F1", "F1 (eval-tuned)", "train min", "arguments/s",
            "ECE raw → calibrated"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        ece = f"{r['ece_raw']:.3f} → {r['ece']:.3f}" if "ece" in r else ""
        lines.append("| " + " | ".join([r["method"], _fmt(r["precision"]), _fmt(r["recall"]), _fmt(r["f1"]),
                                         _fmt(r["f1_eval_tuned"]), f"{r['train_seconds'] / 60:.1f}",
                                         f"{r['inference_per_second']:.1f}", ece]) + " |")
    lines += ["", "Per-category F1:", "", "| category | " + " | ".join(r["method"] for r in rows) + " |",
              "|" + "---|" * (len(rows) + 1)]
    for c in VALUEEVAL_CATEGORIES:
        lines.append(f"| {c} | " + " | ".join(_fmt(r["per_category_f1"].get(c, float("nan"))) for r in rows) + " |")
    return "\n".join(lines) + "\n"


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    import pandas as pd

    flat = []
    for r in rows:
        d = {k: r[k] for k in ("method", "precision", "recall", "f1", "f1_eval_tuned", "train_seconds",
                               "inference_per_second", "n_eval")}
        d.update({k: r.get(k) for k in ("ece_raw", "ece")})
        d.update({f"f1:{c}": r["per_category_f1"].get(c) for c in VALUEEVAL_CATEGORIES})
        flat.append(d)
    atomic_write_text(path, pd.DataFrame(flat).to_csv(index=False))


def _plot(path: Path, rows: list[dict[str, Any]], split: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(rows) + 2), 3.8))
    x = np.arange(len(rows))
    w = 0.27
    for k, (key, lab) in enumerate((("precision", "macro P"), ("recall", "macro R"), ("f1", "macro F1"))):
        ax.bar(x + (k - 1) * w, [r[key] for r in rows], w, label=lab)
    ax.set_xticks(x, [r["method"] for r in rows], rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("official measure")
    ax.set_title(f"ValueEval'23 {split}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)
