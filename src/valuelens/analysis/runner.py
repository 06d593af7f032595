"""Running the sections of an extract run folder, resumably, and deriving ``findings.json`` from their files.

Each section's result is cached in ``analyze/<name>/summary.json`` under a hash of its options, the options it
uses and the hashes of the sections it requires (:meth:`AnalyzeConfig.section_hash`): rerunning with a changed
option recomputes exactly the sections that depend on it. ``findings.json`` is always re-derived from the
sections' files (never from memory), so a section rerun alone with ``--section`` updates it too, and
``--findings-only`` rebuilds it without a model.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import DataError
from ..runio import atomic_write_json, write_manifest
from ..stats import STATUSES, Finding
from .base import AnalyzeConfig, Context, SectionFiles, iter_sections, registry

__all__ = ["FINDINGS_SCHEMA", "derive_findings", "run_analyze", "write_findings"]

FINDINGS_SCHEMA = 2


def _log_default(msg: str) -> None:
    from ..progress import log

    log(msg)


def _calibration(run: Path) -> dict[str, Any]:
    p = run / "calibration.json"
    try:
        return json.loads(p.read_text()) if p.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _apply_calibration(f: Finding, judged: bool, cal: dict[str, Any]) -> None:
    """Read a finding against the instrument check: a judged outcome is untestable when the judge is not better
    than chance on chat answers; a questionnaire steering effect is also given as a fraction of the shift the
    value's own system prompt causes (the ceiling)."""
    judge = cal.get("judge") or {}
    if judged and judge and not judge.get("better_than_chance_in_domain", True) and f.status != "untestable":
        f.extra = {**f.extra, "status_before_judge_check": f.status}
        f.status = "untestable"
        f.reason = (f"the judge is not better than chance on labelled chat answers (top-1 "
                    f"{judge.get('in_domain_top1')} vs chance {judge.get('chance_top1')}; calibration.json)")
    c = cal.get("ceiling") or {}
    ceiling, ci = c.get("mean"), c.get("mean_ci") or [None, None]
    y = f.extra.get("y_condition") if isinstance(f.extra, dict) else None
    if ceiling and y is not None and f.section in ("questionnaire", "crosslingual"):
        f.extra = {**f.extra, "prompt_ceiling": ceiling, "prompt_ceiling_ci": ci}
        if ci[0] is not None and ci[0] > 0:  # a ratio to a ceiling indistinguishable from 0 means nothing
            f.extra["fraction_of_prompt_ceiling"] = round(y / ceiling, 3)
            f.ours += f"; {100 * y / ceiling:.0f} % of the value prompt's own shift ({ceiling:+.3f})"
        else:
            f.ours += f"; the value prompt itself does not move the questionnaire ({ceiling:+.3f}, CI {ci})"


def derive_findings(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every registered section's findings, computed from the files in ``run_dir`` only (no model), read against
    the instrument check in ``calibration.json`` when there is one."""
    run = Path(run_dir)
    cal = _calibration(run)
    out: list[dict[str, Any]] = []
    for name, cls in registry().items():
        files = SectionFiles(run, name)
        summary = files.summary
        try:
            found = cls().findings(files)
        except (KeyError, ValueError, TypeError) as exc:  # a damaged or old-format file: say so, keep going
            found = [Finding.untestable(f"could not compute from analyze/{name}: {type(exc).__name__}: {exc}",
                                        id=name, claim=cls.title, paper="", metric="", unit="", control="",
                                        section=name)]
        for f in found:
            if f.status == "untestable" and summary.get("status") == "not run" and summary.get("reason"):
                f.reason = f.ours = str(summary["reason"])
            elif f.status == "untestable" and not (files.dir / "summary.json").exists():
                f.reason = f.ours = f"section {name} has not run on this folder"
            _apply_calibration(f, cls.judged, cal)
            if f.status not in STATUSES:
                raise ValueError(f"finding {f.id}: unknown status {f.status!r}")
            out.append(f.to_dict())
    return out


def write_findings(run_dir: str | Path) -> dict[str, Any]:
    """Re-derive and atomically write ``findings.json``; returns its content."""
    run = Path(run_dir)
    findings = derive_findings(run)
    cap = SectionFiles(run, "capability").summary
    doc = {"schema": FINDINGS_SCHEMA, "alpha": cap.get("alpha"), "layer": cap.get("layer"),
           "guard_exceeded": bool(cap.get("guard_exceeded")),
           "counts": {s: sum(f["status"] == s for f in findings) for s in STATUSES}, "findings": findings}
    atomic_write_json(run / "findings.json", doc)
    return doc


def _write_index(run: Path, status: dict[str, dict[str, Any]]) -> None:
    """``analyze/index.json``: every registered section in report order with its title, description and state,
    so the report can render sections (including users' own) from files alone."""
    rows = []
    for name, cls in registry().items():
        st = status.get(name) or {}
        if not st and (run / "analyze" / name / "summary.json").exists():
            st = {"state": "cached"}
        rows.append({"name": name, "title": cls.title or name, "about": cls.about, "reads": list(cls.reads),
                     "writes": list(cls.writes), **st})
    atomic_write_json(run / "analyze" / "index.json", {"sections": rows})


def run_analyze(run_dir: str | Path, cfg: AnalyzeConfig, *, lm: Any = None,
                log: Callable[[str], None] | None = _log_default) -> list[dict[str, Any]]:
    """Run (or resume) the configured sections on an extract run folder; returns the findings (dicts)."""
    from ..models import load_model
    from ..vectors import ValueVectors

    log = log or (lambda _m: None)
    run = Path(run_dir)
    cfg.validate()
    vpath = run / "vectors.safetensors"
    if not vpath.exists():
        raise DataError(f"{run}: no vectors.safetensors; run `valuelens extract --out {run}` first")
    ecfg = json.loads((run / "config.json").read_text()).get("extract", {})
    if lm is None:
        lm = load_model(ecfg.get("model", "smollm2"))
    vv = ValueVectors.load(vpath)
    vv.check_compatible(lm.model_hash, lm.spec.d_model, lm.spec.n_layers)
    values = [v for v in vv.values if (v, "intrinsic") in vv.vectors and (v, "prompted") in vv.vectors]
    summary = json.loads((run / "vectors_summary.json").read_text())
    layer = lm.spec.check_layer(cfg.layer) if cfg.layer is not None else int(summary["layer"])
    ctx = Context(run=run, cfg=cfg, lm=lm, vv=vv, layer=layer, values=values, extract_cfg=ecfg, state={})
    hashes: dict[str, str] = {}
    status: dict[str, dict[str, Any]] = {}
    timings: dict[str, float] = {}
    order = list(iter_sections(cfg.sections))
    for i, cls in enumerate(order, 1):
        sec = cls()
        name = sec.name
        h = cfg.section_hash(name, hashes)
        hashes[name] = h
        spath = run / "analyze" / name / "summary.json"
        if spath.exists():
            prev = json.loads(spath.read_text())
            if prev.get("_config_hash") == h:
                sec.restore(ctx, prev)
                status[name] = {"state": "cached", "seconds": prev.get("_seconds")}
                log(f"analyze [{i}/{len(order)}] {name}: cached")
                continue
        log(f"analyze [{i}/{len(order)}] {name} …")
        t = time.time()
        ctx.current = name
        if sec.needs_vectors and not values:
            result: dict[str, Any] = {"status": "not run",
                                      "reason": "no value has both an intrinsic and a prompted vector"}
        elif sec.needs_alpha and not ctx.alpha:
            result = {"status": "not run", "reason": "the capability guard allowed no α > 0"}
        else:
            result = sec.run(ctx)
        result["_config_hash"] = h
        result["_seconds"] = round(time.time() - t, 1)
        timings[name] = result["_seconds"]
        ctx.dir(name)
        atomic_write_json(spath, result)
        status[name] = {"state": result.get("status", "done"), "seconds": result["_seconds"]}
        log(f"analyze [{i}/{len(order)}] {name}: {status[name]['state']} in {result['_seconds']:.0f}s")
    _write_index(run, status)
    doc = write_findings(run)
    write_manifest(run, stage="analyze", config=cfg.to_dict(), name="manifest-analyze.json",
                   extra={"model": lm.describe(), "layer": layer, "alpha": ctx.alpha, "timings_s": timings,
                          "values": values, "section_hashes": hashes})
    return doc["findings"]
