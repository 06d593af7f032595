"""``dose``: the questionnaire effect over a range of α, including α past the capability guard (flagged), against
a random direction of the same norm.

Steerability per unit (Tan et al. 2024): the least-squares slope of ``y(α)`` (Δ target item − mean Δ of the other
values' items) against α. The finding's effect is the mean over (value, item) units of the value vector's slope
minus the random direction's slope on the same unit, with a bootstrap CI, sign-flip p-value and MDE; the fraction
of anti-steerable units (slope beyond the control's in the wrong direction) is reported beside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..stats import Finding
from .base import Context, Section, SectionFiles, register_section
from .common import DIRECTION_CONDITIONS, direction_conditions, item_rows, pvq_items, steer_finding, write_csv


def unit_slopes(items: pd.DataFrame, kind: str) -> pd.DataFrame:
    """Per (target, item): slope over α of y = Δ target item − mean Δ others, for ``kind`` and for ``random``."""
    ys = _unit_ys(items[items["kind"].isin([kind, "random"])]) if len(items) else pd.DataFrame()
    out = []
    if not ys.empty:
        for (target, item), g in ys.groupby(["target", "item"], sort=False):
            sl = {k: float(np.polyfit(gk["alpha"].to_numpy(float), gk["y"].to_numpy(float), 1)[0])
                  for k, gk in g.groupby("kind") if gk["alpha"].nunique() >= 2}
            if kind in sl and "random" in sl:
                out.append({"target": target, "item": item, "slope": sl[kind], "slope_control": sl["random"],
                            "d": sl[kind] - sl["random"]})
    return pd.DataFrame(out, columns=["target", "item", "slope", "slope_control", "d"])


def _unit_ys(items: pd.DataFrame) -> pd.DataFrame:
    """Per (kind, α, target, item): y = Δ target item − mean Δ of the other values' items."""
    rows = []
    for (target, alpha, k), g in items.groupby(["target", "alpha", "kind"], sort=False):
        delta = g["steered"] - g["baseline"]
        others = float(delta[g["item_value"] != target].mean())
        mine = g[g["item_value"] == target]
        for item, d in zip(mine["item"], (mine["steered"] - mine["baseline"]).to_numpy(), strict=True):
            rows.append({"kind": k, "alpha": alpha, "target": target, "item": item, "y": float(d) - others})
    return pd.DataFrame(rows)


def _dose_figure(items: pd.DataFrame, kinds: list[str], guard_alpha: float, ctx: Context, path: Any) -> None:
    """Value effect (top) and capability cost (bottom) against α, each with its random-direction control and
    95 % CI bands: where, if anywhere, does the value effect rise before capability falls?"""
    from ..plots import plt, savefig
    from ..stats import mean_ci

    ys = _unit_ys(items)
    fig, axes = plt().subplots(2, 1, figsize=(6.8, 6.4), sharex=True)
    ax = axes[0]
    for kind in kinds:
        g = ys[ys["kind"] == kind]
        rows = [(a, mean_ci(gg["y"].to_numpy(float), n_boot=1000)) for a, gg in g.groupby("alpha")]
        if not rows:
            continue
        a = np.array([r[0] for r in rows])
        style = {"color": "black", "ls": "--"} if kind == "random" else {}
        line = ax.plot(a, [r[1].estimate for r in rows], marker="o", ms=3, label=kind, **style)[0]
        ax.fill_between(a, [r[1].low for r in rows], [r[1].high for r in rows], alpha=0.15, color=line.get_color())
    ax.axhline(0, color="grey", lw=0.5)
    ax.axvline(guard_alpha, color="grey", ls=":", label=f"guard α = {guard_alpha:g}")
    ax.set(ylabel="Δ target − Δ others (6-point)", title=f"Dose-response at layer {ctx.layer} (bands: 95 % CI)")
    ax.legend(fontsize=7)
    ax = axes[1]
    guard = ctx.run / "analyze" / "capability" / "tables" / "guard.csv"
    if guard.exists():
        cur = pd.read_csv(guard)
        for d, g in cur.groupby("direction", sort=False):
            g = g.sort_values("alpha")
            style = {"color": "black", "ls": "--"} if d == "random" else {}
            line = ax.plot(g["alpha"], g["mc_loss"], marker="o", ms=3, label=d, **style)[0]
            ax.fill_between(g["alpha"], g["mc_loss_ci_low"], g["mc_loss_ci_high"], alpha=0.12, color=line.get_color())
        ax.axhline(ctx.cfg.max_capability_loss, color="red", lw=0.8, ls=":", label="limit")
        ax.legend(fontsize=6)
    else:
        ax.text(0.5, 0.5, "capability guard not swept (α fixed by config)", ha="center", transform=ax.transAxes)
    ax.axvline(guard_alpha, color="grey", ls=":")
    ax.set(xscale="log", xlabel="α (relative to mean residual norm)", ylabel="capability cost (MC points)")
    savefig(fig, path)


@register_section
class DoseSection(Section):
    name = "dose"
    title = "Dose-response"
    about = ("The questionnaire effect (Δ target − Δ others) over a range of α for a few values, including α past "
             "the capability guard (flagged beyond_guard), against a random direction of the same norm; "
             "steerability = slope of the effect against α per item (Tan et al. 2024).")
    requires = ("capability",)
    uses = ("layer", "seed", "batch_size", "alphas")
    reads = ("vectors.safetensors", "data/pvq.jsonl")
    writes = ("tables/items.csv", "tables/dose_response.csv", "tables/mean_dose_response.csv",
              "figures/dose_response.png", "summary.json")
    needs_alpha = True
    version = 2

    @dataclass
    class Config:
        dose_alphas: list[float] | None = None  # None: the capability guard's α grid (0.01 … 1.0)
        dose_conditions: list[str] = field(default_factory=lambda: ["prompted", "random"])
        dose_values: int = 2  # first N values (0 = all)
        dose_items_per_value: int = 3

        def validate(self) -> None:
            unknown = sorted(set(self.dose_conditions) - set(DIRECTION_CONDITIONS))
            if unknown:
                raise ConfigError(f"unknown dose_conditions: {', '.join(unknown)}; "
                                  f"choose from {', '.join(DIRECTION_CONDITIONS)}")
            if self.dose_alphas is not None and len(self.dose_alphas) < 2:
                raise ConfigError("dose_alphas needs at least two α (the finding is a slope)")

    quick: ClassVar[dict[str, Any]] = {"dose_values": 2, "dose_items_per_value": 2}

    def run(self, ctx: Context) -> dict[str, Any]:
        from ..evals.questionnaire import administer, steering_effect

        o = ctx.options
        sec = ctx.dir()
        wanted = list(dict.fromkeys([*o.dose_conditions, "random"]))  # the control is always measured
        alphas = list(o.dose_alphas) if o.dose_alphas is not None else list(ctx.cfg.alphas)
        items = pvq_items("en", o.dose_items_per_value)
        values = ctx.values if o.dose_values == 0 else ctx.values[: o.dose_values]
        base = administer(ctx.lm, items, "en", batch_size=ctx.cfg.batch_size)
        chosen = ctx.alpha or 0.0
        rows, unit_rows = [], []
        for v in values:
            conds = {f"{k}@{a:g}": ivs for a in alphas
                     for k, ivs in direction_conditions(ctx, v, ablations=False, alpha=float(a)).items()
                     if k in wanted}
            eff = steering_effect(ctx.lm, items, conds, targets=dict.fromkeys(conds, v),
                                  batch_size=ctx.cfg.batch_size, baseline_results=base)
            for r in item_rows(eff.results, v):
                kind, _, a = r["condition"].partition("@")
                unit_rows.append({**r, "kind": kind, "alpha": float(a)})
            for r in eff.target_rows():
                kind, _, a = r["condition"].partition("@")
                rows.append({"target": v, "kind": kind, "alpha": float(a), "beyond_guard": float(a) > chosen + 1e-12,
                             **{k: r[k] for k in ("baseline", "steered", "delta", "delta_others", "delta_vs_others")}})
        write_csv(sec / "tables" / "items.csv", pd.DataFrame(unit_rows))
        df = pd.DataFrame(rows)
        write_csv(sec / "tables" / "dose_response.csv", df)
        mean = df.groupby(["kind", "alpha"])[["delta", "delta_others", "delta_vs_others"]].mean().reset_index()
        mean["beyond_guard"] = mean["alpha"] > chosen + 1e-12
        write_csv(sec / "tables" / "mean_dose_response.csv", mean)
        _dose_figure(pd.DataFrame(unit_rows), wanted, chosen, ctx, sec / "figures" / "dose_response.png")
        return {"layer": ctx.layer, "guard_alpha": ctx.alpha, "values": values, "items": len(items),
                "alphas": alphas, "conditions": wanted}

    def findings(self, files: SectionFiles) -> list[Finding]:
        items = files.table("items.csv")
        s = files.summary
        out = []
        for kind in [k for k in s.get("conditions", []) if k != "random"]:
            kw = dict(id=f"dose-response-{kind}" if kind != "prompted" else "dose-response",
                      claim=f"the target value's score rises with the strength of {kind} steering, beyond random",
                      paper="monotone in α up to the capability limit", section=self.name,
                      unit="items (value × item)", control="random direction of the same norm, same α grid",
                      metric="steerability: slope of (Δ target − Δ others) per unit of relative α, minus random's",
                      evidence=files.rel("tables", "items.csv"))
            if items is None or items.empty:
                out.append(Finding.untestable("no dose-response results", **kw))
                continue
            units = unit_slopes(items, kind)
            f = steer_finding(units, seed=0, ours_prefix=f"slope {kind} − random", **kw)
            if len(units):
                anti = float(np.mean(units["d"] < 0))
                f.extra = {"anti_steerable_fraction": round(anti, 3), "alphas": s.get("alphas"),
                           "guard_alpha": s.get("guard_alpha")}
                f.ours += f"; anti-steerable units {100 * anti:.0f} %"
            out.append(f)
        return out
