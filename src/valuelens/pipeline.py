"""``valuelens run``: detector → extract → analyze → report in one run folder, resumable stage by stage.

The default judge is the trained value detector (system 2). If none is trained on this machine, the first stage
trains the ``pipeline`` preset detector once (cached in ``$VALUELENS_CACHE/detectors/minilm-pipeline-v1``, reused
by later runs). ``--quick`` uses the default detector if present, else a small one trained in about a minute, labels by rank
(top vs bottom half of judge scores), and small sweeps, so the whole pipeline runs in a few minutes.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .analysis import AnalyzeConfig, run_analyze
from .calibrate import CalibrateConfig, run_calibrate
from .extract import ExtractConfig, run_extract
from .models import load_model
from .progress import log
from .runio import write_manifest

__all__ = ["RUN_PARTS", "default_detector", "ensure_detector", "run_pipeline"]

# Calibration parts `valuelens run` includes by default (minutes); the organisms need LoRA training.
RUN_PARTS = ("planted", "judge", "ceiling")


def _run_calibrate_options(acfg: AnalyzeConfig, overrides: dict[str, Any] | None) -> dict[str, Any]:
    """The instrument check inside `valuelens run`: the cheap parts, the prompt ceiling on the questionnaire
    section's own items (so steering effects divide by a ceiling measured on the same items) and one system
    prompt per value (31 administrations of 60 items would add ~7 min to the default run on 2 cores)."""
    return {"parts": list(RUN_PARTS), "ceiling_templates": 1, "pvq_items_per_value": acfg.pvq_items_per_value,
            **(overrides or {})}


def default_detector() -> Path:
    from .detect.presets import default_detector_dir

    return default_detector_dir()


def ensure_detector(data_dir: str | None = None, *, bf16: bool | str = "auto", quick: bool = False) -> Path:
    """The default detector folder, training it once per machine if it does not exist yet: the ``pipeline``
    preset (MiniLM, 3 epochs, length-bucketed; valuelens.detect.presets), resumable.

    ``quick``: if the default detector is missing, train a small one (1 epoch on 1,200 arguments, ~1 min) into
    ``detectors/minilm-quick`` — enough to rank responses for ``label_mode="rank"`` in smoke runs.
    """
    from .detect.data import load_split, resolve_data_dir
    from .detect.finetune import TrainConfig, train_detector
    from .detect.presets import ensure_preset
    from .precision import use_bf16

    target = default_detector()
    if (target / "detector.json").exists():
        return target
    if not quick:
        return ensure_preset("pipeline", data_dir, bf16=bf16, log=log)
    target = target.parent / "minilm-quick"
    if (target / "detector.json").exists():
        return target
    tcfg = TrainConfig(encoder="minilm", bf16=use_bf16(bf16), lr=1e-4, head_lr=2e-3, epochs=1, max_train=1200,
                       max_len=96)
    train_dir = target.parent / f"{target.name}-training"
    folder = resolve_data_dir(data_dir)
    log(f"valuelens: training the default value detector (MiniLM) into {target} — once per machine")
    res = train_detector(load_split(folder, "training"), load_split(folder, "validation"),
                         tcfg, train_dir, log=log)
    model_dir = Path(getattr(res, "model_dir", train_dir / "model"))
    target.parent.mkdir(parents=True, exist_ok=True)
    if not target.exists():
        model_dir.rename(target)
    return target


def _model_info(out: Path, lm: Any) -> dict[str, Any]:
    """The model's description: from the loaded model, or (Ray runs load it in the workers) from model.json."""
    import json

    return lm.describe() if lm is not None else json.loads((out / "model.json").read_text())


def run_pipeline(out: str | Path, *, quick: bool = False, model: str | None = None,
                 extract_overrides: dict[str, Any] | None = None, analyze_overrides: dict[str, Any] | None = None,
                 data_dir: str | None = None, ray_address: str | None = None,
                 calibrate_overrides: dict[str, Any] | None = None, skip_analyze: bool = False) -> Path:
    """``ray_address``: run the extract stages as Ray tasks (``"local"``: start a local Ray instance; else the
    address of a cluster) — same records and vectors as one process (valuelens.distributed).

    Between extract and analyze the instrument is checked (valuelens.calibrate): by default the planted
    direction, the judge in its own domain and the prompt ceiling — a few minutes; the model organisms (LoRA
    training) run with ``valuelens calibrate`` or ``calibrate_overrides={"parts": [..., "organism"]}``. ``skip_analyze``: stop after the
    calibration (``valuelens calibrate`` on a folder without an extract run)."""
    from .check import check_pipeline

    out = Path(out)
    t0 = time.time()
    # valuelens check first: nothing is trained, loaded or written before the whole run's inputs pass.
    checked = check_pipeline(out, quick=quick, model=model, extract_overrides=extract_overrides,
                             analyze_overrides=analyze_overrides, data_dir=data_dir)
    for line in checked.lines():
        log(f"check: {line}")
    ex = dict(extract_overrides or {})
    if model:
        ex["model"] = model
    timings: dict[str, float] = {}
    if quick:
        if "judge" not in ex:
            t = time.time()
            ex["judge"], ex["judge_options"] = "detector", {"model": str(ensure_detector(data_dir, quick=True)),
                                                            "chat_calibration": "dev"}
            timings["detector"] = round(time.time() - t, 1)
        ecfg = ExtractConfig.quick(**ex)
        acfg = AnalyzeConfig.quick(**(analyze_overrides or {}))
        ccfg = CalibrateConfig.quick(**_run_calibrate_options(acfg, calibrate_overrides))
    else:
        if ex.get("judge", "auto") in ("auto", "detector") and "model" not in ex.get("judge_options", {}):
            t = time.time()
            det = ensure_detector(data_dir)
            ex["judge"] = "detector"
            # Recalibrated for chat text on the labelled chat answers' dev split (docs/judges.md: with its
            # ValueEval thresholds the detector says "yes" to Power and Benevolence on every chat answer).
            ex["judge_options"] = {"chat_calibration": "dev", **ex.get("judge_options", {}), "model": str(det)}
            timings["detector"] = round(time.time() - t, 1)
        # Rank labels by default: the detector, trained on arguments, labels some values on (almost) every chat
        # answer (e.g. 240/240 Universalism, 234/240 Benevolence on SmolLM2 with its tuned thresholds), which
        # leaves no "non-expressing" side. `label_mode: judge` (the paper's definition) is one override away.
        ex.setdefault("label_mode", "rank")
        ecfg = ExtractConfig.from_dict(ex)
        acfg = AnalyzeConfig.from_dict(analyze_overrides or {})
        ccfg = CalibrateConfig.from_dict(_run_calibrate_options(acfg, calibrate_overrides))
    # With Ray only the workers load the model (this process would hold a GPU they need).
    lm = load_model(ecfg.model) if ray_address is None else None
    if not (out / "items.jsonl").exists():
        from .estimate import estimate_extract
        from .progress import log as _log

        # A fresh run: what it will cost (measured on this device for long runs; counts only with Ray).
        _log(estimate_extract(ecfg, lm, warmup=None if lm is not None else False)[0].text())
    t = time.time()
    if ray_address is not None:
        from .distributed import RayOptions, connect, run_analyze_ray, run_extract_ray

        # One Ray instance for both: the extract stages, then the analysis sections, all as tasks.
        opts = RayOptions(address=ray_address)
        with connect(opts):
            run_extract_ray(out, ecfg, opts=opts)
            timings["extract"] = round(time.time() - t, 1)
            t = time.time()
            if ccfg.parts:
                run_calibrate(out, ccfg)
                timings["calibrate"] = round(time.time() - t, 1)
                t = time.time()
            if not skip_analyze:
                run_analyze_ray(out, acfg, opts=opts)
    else:
        run_extract(out, ecfg, lm=lm, pool=checked.pool)
        timings["extract"] = round(time.time() - t, 1)
        t = time.time()
        if ccfg.parts:
            run_calibrate(out, ccfg, lm=lm)
            timings["calibrate"] = round(time.time() - t, 1)
            t = time.time()
        if not skip_analyze:
            run_analyze(out, acfg, lm=lm)
    timings["analyze"] = round(time.time() - t, 1)
    from .report import build_report

    write_manifest(out, stage="run", config={"extract": ecfg.to_dict(), "calibrate": ccfg.to_dict(),
                                             "analyze": acfg.to_dict(), "quick": quick},
                   name="manifest-run.json", extra={"model": _model_info(out, lm), "timings_s": timings,
                                                    "total_s": round(time.time() - t0, 1)})
    return build_report(out)
