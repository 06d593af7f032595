"""Time the detector presets end to end and score them on validation (a benchmark, not a test).

For each preset: wall-clock minutes from start to the saved detector (training + held-out pass + TF-IDF member;
no evaluation split is touched while training), then validation macro-F1 with the saved (held-out) thresholds,
its bootstrap CI, the mean expected calibration error (raw → calibrated) and the inference throughput in
arguments per second. ``--baseline`` also trains today's pipeline recipe (MiniLM, 4 epochs, per-epoch early
stopping, random batches: what ``valuelens run`` trained before the ``pipeline`` preset) in the same run and
prints each preset's time as a ratio to it.

The machine is shared: the report gives the load average before/after and the CPU time the process got per
wall-clock second (2.0 = both cores to itself), so a reader can tell an idle-machine time from a contended one.

    .venv/bin/python benchmarks/bench_detect.py --preset pipeline --baseline --json pipeline.json
    .venv/bin/python benchmarks/bench_detect.py --preset best --json best.json
    .venv/bin/python benchmarks/bench_detect.py --preset pipeline --max-train 200 --encoder FOLDER   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _run(label: str, train_fn: Any, valid: Any, n_boot: int) -> dict[str, Any]:
    from valuelens.detect.evaluate import evaluate_detector
    from valuelens.detect.finetune import load_detector

    load0, cpu0, t0 = os.getloadavg()[0], _cpu_seconds(), time.time()
    model_dir, bf16 = train_fn()
    wall = time.time() - t0
    cpu = _cpu_seconds() - cpu0
    det = load_detector(model_dir)
    ev = evaluate_detector(det, valid, n_boot=n_boot, bf16=bf16)
    cal = ev.get("calibration", {})
    return {"preset": label, "train_minutes": wall / 60, "cpu_per_wall_second": cpu / max(wall, 1e-9),
            "load_before": load0, "load_after": os.getloadavg()[0], "f1": ev["saved"]["f1"],
            "precision": ev["saved"]["precision"], "recall": ev["saved"]["recall"], "f1_ci": ev["ci"]["macro"]["f1"],
            "crossfit_f1": ev["crossfit"]["f1"], "ece_raw": cal.get("ece_raw_mean"), "ece": cal.get("ece_mean"),
            "arguments_per_second": ev["inference_per_second"], "model": str(model_dir), "bf16": bf16}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", action="append", choices=["fast", "best", "pipeline"],
                    help="preset(s) to time (repeatable; default pipeline)")
    ap.add_argument("--baseline", action="store_true",
                    help="also train the previous pipeline recipe in the same run and print time ratios")
    ap.add_argument("--data", default=None, help="ValueEval'23 folder (default: as `valuelens detect`)")
    ap.add_argument("--out", default=None, help="folder for the trained detectors (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--max-train", type=int, default=None, help="train on the first N arguments (smoke runs)")
    ap.add_argument("--max-eval", type=int, default=None, help="score the first N validation arguments")
    ap.add_argument("--encoder", default=None, help="override the presets' encoder (smoke runs on a tiny model)")
    ap.add_argument("--epochs", type=int, default=None, help="override the presets' epochs (smoke runs)")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--json", default=None, help="write all figures to this file")
    args = ap.parse_args(argv)

    import torch

    from valuelens.detect.data import load_split, resolve_data_dir
    from valuelens.detect.finetune import TrainConfig, train_detector
    from valuelens.detect.presets import train_preset
    from valuelens.precision import use_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = resolve_data_dir(args.data)
    train = load_split(folder, "training", level1=True)
    valid = load_split(folder, "validation").head(args.max_eval)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_detect_"))
    over: dict[str, Any] = {k: v for k, v in (("max_train", args.max_train), ("encoder", args.encoder),
                                              ("epochs", args.epochs)) if v is not None}
    rows: list[dict[str, Any]] = []
    if args.baseline:
        def baseline() -> tuple[Path, bool]:
            bf16 = use_bf16("auto")
            cfg = TrainConfig(**{"encoder": "minilm", "lr": 1e-4, "head_lr": 2e-3, "bf16": bf16,
                                 "calibration": "none", **over})
            train_detector(train, None, cfg, out / "baseline", progress=False)
            return out / "baseline" / "model", bf16
        rows.append(_run("previous pipeline recipe (baseline)", baseline, valid, args.bootstrap))
        print(f"baseline: {rows[-1]['train_minutes']:.2f} min, F1 {rows[-1]['f1']:.4f}", flush=True)
    for name in args.preset or ["pipeline"]:
        def run(name: str = name) -> tuple[Path, bool]:
            res = train_preset(name, train, None, out / name, progress=False, **over)
            assert res.config is not None
            return res.model_dir, res.config.bf16
        rows.append(_run(name, run, valid, args.bootstrap))
        print(f"{name}: {rows[-1]['train_minutes']:.2f} min, F1 {rows[-1]['f1']:.4f}", flush=True)

    base = rows[0]["train_minutes"] if args.baseline else None
    print("\n| preset | train min | × baseline time | CPU s per wall s | load before/after | val macro-F1 [95% CI] "
          "| crossfit F1 | ECE raw → cal | arguments/s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        ratio = f"{r['train_minutes'] / base:.2f}" if base else "–"
        ece = f"{r['ece_raw']:.3f} → {r['ece']:.3f}" if r["ece"] is not None else "–"
        print(f"| {r['preset']} | {r['train_minutes']:.2f} | {ratio} | {r['cpu_per_wall_second']:.2f} | "
              f"{r['load_before']:.1f}/{r['load_after']:.1f} | {r['f1']:.4f} [{r['f1_ci'][0]:.3f}, "
              f"{r['f1_ci'][1]:.3f}] | {r['crossfit_f1']:.4f} | {ece} | {r['arguments_per_second']:.1f} |")
    print("\nTimes are wall-clock on this machine at its load then (CPU s per wall s < 2 means other jobs took "
          "cores); ratios compare runs made moments apart.")
    res = {"rows": rows, "n_valid": len(valid), "overrides": over, "threads": torch.get_num_threads(),
           "python": sys.version.split()[0]}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
