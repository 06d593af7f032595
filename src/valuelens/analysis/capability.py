"""``capability``: residual norms (the unit of α) and a capability guard with resolution, which chooses the
steering strength.

α is relative: ``h ← h + α·mean‖h_l‖·v̂`` (:func:`valuelens.evals.capability.relative_steer`), so the same α means
the same push at any layer and in any model. The guard sweeps α over ``alphas`` (0.01 … 1.0 by default) for v_int
and v_prompt of the first ``guard_values`` values and for a random direction of the same norm (the control), and
measures two *continuous* capability costs, each with a bootstrap CI over its unit:

* **multiple choice** — the mean probability of the correct answer among the options (an "expected accuracy"
  that moves in steps far finer than one item; the old argmax accuracy moved in 1.7-point steps on 60 items),
  loss in points against the unsteered model; unit: items;
* **held-out perplexity** of shipped prose, as a relative increase; unit: windows of 128 tokens.

The chosen α is the largest grid α at which every guarded direction — and every smaller α — keeps the MC loss
within ``max_capability_loss`` (the paper: < 5 points; α = 4 for Qwen2.5-7B in its units) and the perplexity
increase within ``max_ppl_increase``. If none passes, the smallest α is used and every steering finding is
flagged. All α share one unsteered pass per batch; each steer only reruns the layers above its layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..stats import Finding, mean_ci, sign_flip_test
from .base import Context, Section, SectionFiles, register_section
from .common import fmt_effect, write_csv

DEFAULT_ALPHAS = [0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.7, 1.0]


def _ci_rows(df: pd.DataFrame, value: str, seed: int = 0) -> pd.DataFrame:
    """Per (direction, alpha): mean of ``value`` over units with its 95 % bootstrap CI."""
    rows = []
    for (d, a), g in df.groupby(["direction", "alpha"], sort=False):
        ci = mean_ci(g[value].to_numpy(float), seed=seed, n_boot=1000)
        rows.append({"direction": d, "alpha": a, value: ci.estimate, f"{value}_ci_low": ci.low,
                     f"{value}_ci_high": ci.high, "n": ci.n})
    return pd.DataFrame(rows)


def guard_curves(items: pd.DataFrame, windows: pd.DataFrame | None) -> pd.DataFrame:
    """Per (direction, α): MC loss (points of expected accuracy) and perplexity increase, each with its CI."""
    base_mc = items[items["direction"] == "baseline"].set_index("item")["p_correct"]
    st = items[items["direction"] != "baseline"].copy()
    st["mc_loss"] = base_mc.reindex(st["item"]).to_numpy() - st["p_correct"].to_numpy()
    out = _ci_rows(st, "mc_loss")
    if windows is not None and len(windows):
        base_w = windows[windows["direction"] == "baseline"].set_index("window")
        w = windows[windows["direction"] != "baseline"].copy()
        # Per window: relative increase of its NLL per token (log-perplexity), exp'd at the end for the table.
        w["dlogppl"] = (w["nll"] / w["tokens"]).to_numpy() - (base_w["nll"] / base_w["tokens"]).reindex(
            w["window"]).to_numpy()
        pp = _ci_rows(w, "dlogppl")
        for c in ("dlogppl", "dlogppl_ci_low", "dlogppl_ci_high"):
            pp[c.replace("dlogppl", "ppl_increase")] = np.expm1(pp[c])
        out = out.merge(pp[["direction", "alpha", "ppl_increase", "ppl_increase_ci_low", "ppl_increase_ci_high"]],
                        on=["direction", "alpha"], how="left")
    return out


def _stages(grid: list[float]) -> list[list[float]]:
    """The sweep's stages: the lower half of the grid, then two α at a time."""
    half = max(1, (len(grid) + 1) // 2)
    return [grid[:half]] + [grid[i:i + 2] for i in range(half, len(grid), 2)]


def choose_guarded_alpha(curves: pd.DataFrame, directions: list[str], max_loss: float,
                         max_ppl: float | None) -> tuple[float, bool]:
    """Largest α such that it and every smaller grid α keep each guarded direction within both limits;
    (smallest α, True) when none does."""
    alphas = sorted(curves["alpha"].unique())
    chosen = None
    for a in alphas:
        sub = curves[(curves["alpha"] == a) & curves["direction"].isin(directions)]
        ok = bool(len(sub)) and bool((sub["mc_loss"] <= max_loss + 1e-12).all())
        if ok and max_ppl is not None and "ppl_increase" in sub:
            ok = bool((sub["ppl_increase"].fillna(np.inf) <= max_ppl + 1e-12).all())
        if not ok:
            break
        chosen = a
    if chosen is None:
        return float(alphas[0]), True
    return float(chosen), False


@register_section
class CapabilitySection(Section):
    name = "capability"
    title = "Capability guard"
    about = ("Capability cost of steering against α (relative to the layer's mean residual norm): the mean "
             "probability of correct multiple-choice answers and held-out perplexity, each with a 95 % CI, for the "
             "guarded value vectors and a same-norm random direction; the largest α within the limits is used "
             "(paper: < 5 points, α = 4 for Qwen2.5-7B).")
    uses = ("layer", "seed", "batch_size")
    reads = ("vectors.safetensors", "data/capability_mc.jsonl", "data/heldout.txt")
    writes = ("tables/residual_norms.csv", "tables/mc_items.csv", "tables/ppl_windows.csv", "tables/guard.csv",
              "figures/guard.png", "summary.json")
    version = 4

    @dataclass
    class Config:
        alphas: list[float] = field(default_factory=lambda: list(DEFAULT_ALPHAS))
        max_capability_loss: float = 0.05  # points of expected MC accuracy (0.05 = 5 points)
        max_ppl_increase: float | None = 0.10  # relative held-out perplexity increase (None: MC only)
        mc_items: int = 60  # capability items used by the guard (100 shipped)
        ppl_tokens: int = 2048  # held-out tokens scored (16 windows of 128)
        guard_values: int = 3  # values whose v_int and v_prompt the guard checks (0 = all)
        alpha: float | None = None  # fix α instead of running the guard
        guard_full_sweep: bool = False  # evaluate every grid α (default: stop once the choice is made)

        def validate(self) -> None:
            if not self.alphas and self.alpha is None:
                raise ConfigError("give alphas to sweep or a fixed alpha")
            if any(a <= 0 for a in self.alphas):
                raise ConfigError("alphas must be > 0 (relative strengths; the sign is the vector's)")
            if self.max_capability_loss < 0 or (self.max_ppl_increase is not None and self.max_ppl_increase < 0):
                raise ConfigError("max_capability_loss and max_ppl_increase must be >= 0")
            if self.ppl_tokens < 128:
                raise ConfigError("ppl_tokens must be >= 128 (one window)")

    quick: ClassVar[dict[str, Any]] = {"alphas": [0.02, 0.1, 0.4], "mc_items": 40, "ppl_tokens": 512}

    def restore(self, ctx: Context, summary: dict[str, Any]) -> None:
        ctx.alpha = summary.get("alpha")
        ctx.norms = pd.read_csv(ctx.run / "analyze" / "capability" / "tables" / "residual_norms.csv")[
            "mean_norm"].to_numpy()

    def run(self, ctx: Context) -> dict[str, Any]:
        from ..evals.capability import mc_answers_many, nll_windows, random_direction_like, residual_norms
        from ..evals.items import load_capability_mc

        o = ctx.options
        sec = ctx.dir()
        norms = residual_norms(ctx.lm, batch_size=ctx.cfg.batch_size)
        ctx.norms = norms
        write_csv(sec / "tables" / "residual_norms.csv", pd.DataFrame({"layer": range(len(norms)),
                                                                       "mean_norm": norms}))
        if o.alpha is not None:
            ctx.alpha = float(o.alpha)
            return {"alpha": ctx.alpha, "guard": "fixed by config", "layer": ctx.layer}
        probes = ctx.values if o.guard_values == 0 else ctx.values[: o.guard_values]
        dirs = {f"{v}/{k}": ctx.vec(v, k) for v in probes for k in ("prompted", "intrinsic")}
        dirs["random"] = random_direction_like(ctx.vec(probes[0], "prompted"), seed=ctx.cfg.seed + 4242)
        mc = load_capability_mc()[: o.mc_items]
        guarded = [d for d in dirs if d != "random"]
        item_rows: list[dict[str, Any]] = []
        win_rows: list[dict[str, Any]] = []
        grid = sorted(o.alphas)
        done: list[float] = []
        # The sweep runs in stages of increasing α (half the grid, then pairs) and stops after the stage holding
        # the first α that fails: no larger α can be chosen (the rule needs every smaller α to pass), so the
        # rest of the curve would cost time and change nothing. `guard_full_sweep` draws the whole curve.
        stages = [grid] if o.guard_full_sweep else _stages(grid)
        for k, stage in enumerate(stages):
            conds: dict[str, Any] = {"baseline": []} if k == 0 else {}
            for d, v in dirs.items():
                for a in stage:
                    conds[f"{d}@{a:g}"] = ctx.steer(v, a)
            for name, recs in mc_answers_many(ctx.lm, mc, conds, batch_size=ctx.cfg.batch_size).items():
                d, _, a = name.partition("@")
                for r in recs:
                    item_rows.append({"direction": d, "alpha": float(a or 0), "item": r["id"],
                                      "p_correct": r["p_correct"], "correct": int(r["correct"])})
            for name, arr in nll_windows(ctx.lm, conds, max_tokens=o.ppl_tokens,
                                         batch_size=ctx.cfg.batch_size).items():
                d, _, a = name.partition("@")
                for w, (nll, n) in enumerate(arr):
                    win_rows.append({"direction": d, "alpha": float(a or 0), "window": w, "nll": nll, "tokens": n})
            done += stage
            curves = guard_curves(pd.DataFrame(item_rows), pd.DataFrame(win_rows))
            alpha, _ = choose_guarded_alpha(curves, guarded, o.max_capability_loss, o.max_ppl_increase)
            if alpha < max(stage):  # some α up to here failed: the choice is made
                break
        items, windows = pd.DataFrame(item_rows), pd.DataFrame(win_rows)
        write_csv(sec / "tables" / "mc_items.csv", items)
        write_csv(sec / "tables" / "ppl_windows.csv", windows)
        curves = guard_curves(items, windows)
        write_csv(sec / "tables" / "guard.csv", curves)
        alpha, exceeded = choose_guarded_alpha(curves, guarded, o.max_capability_loss, o.max_ppl_increase)
        ctx.alpha = alpha
        _guard_figure(curves, alpha, o, ctx.layer, sec / "figures" / "guard.png")
        base_acc = float(items[items["direction"] == "baseline"]["p_correct"].mean())
        return {"alpha": alpha, "layer": ctx.layer, "guard_values": list(probes), "directions": guarded,
                "max_loss": o.max_capability_loss, "max_ppl_increase": o.max_ppl_increase, "mc_items": len(mc),
                "alpha_grid": o.alphas, "alphas_evaluated": done, "guard_exceeded": exceeded, "baseline_expected_accuracy": round(base_acc, 4),
                "note": ("no grid α kept the capability cost within the limits; evaluations use the smallest α and "
                         "are flagged" if exceeded else
                         "largest grid α within both limits for every guarded direction (and all smaller α)")}

    def findings(self, files: SectionFiles) -> list[Finding]:
        s = files.summary
        kw = dict(id="capability-guard", claim="a steering strength exists that costs < 5 points of capability",
                  paper="α = 4 for Qwen2.5-7B (largest α within 5 points)",
                  metric="loss of expected MC accuracy at the chosen α (0.05 = 5 points), mean over guarded "
                         "directions", unit="items", control="the unsteered model on the same items",
                  section=self.name, evidence=files.rel("tables", "guard.csv"), direction=-1)
        items = files.table("mc_items.csv")
        if s.get("alpha") is None:
            return [Finding.untestable("the guard did not run", **kw)]
        if items is None or items.empty or "p_correct" not in items:
            return [Finding.untestable(f"α fixed at {s['alpha']:g} by config: no guard sweep", **kw)]
        alpha = float(s["alpha"])
        base = items[items["direction"] == "baseline"].set_index("item")["p_correct"]
        at = items[items["direction"].isin(s.get("directions", [])) & np.isclose(items["alpha"], alpha)]
        if at.empty or base.empty:
            return [Finding.untestable("no guard results at the chosen α", **kw)]
        steered = at.groupby("item")["p_correct"].mean()
        loss = (base.reindex(steered.index) - steered).to_numpy(dtype=float)
        ci = mean_ci(loss, seed=0)
        limit = float(s.get("max_loss", 0.05))
        p = sign_flip_test(loss - limit, alternative="less")  # one-sided: the cost is below the limit
        f = Finding(effect=ci.estimate, ci_low=ci.low, ci_high=ci.high, p_value=p, n=ci.n, mde=ci.mde, **kw)
        if np.isfinite(ci.high) and ci.high < limit and p < 0.05:
            f.status = "reproduced"
        elif np.isfinite(ci.low) and ci.low > limit:
            f.status = "contradicted"
        else:
            f.status = "not detected"
        f.ours = (f"α = {alpha:g} at layer {s.get('layer')}: loss " + fmt_effect(f)
                  + (" — no grid α passed; evaluations use the smallest α (flagged)" if s.get("guard_exceeded")
                     else ""))
        f.extra = {"alpha": alpha, "guard_exceeded": bool(s.get("guard_exceeded")), "limit": limit}
        return [f]


def _guard_figure(curves: pd.DataFrame, alpha: float, o: Any, layer: int, path: Any) -> None:
    from ..plots import plt, savefig

    has_ppl = "ppl_increase" in curves
    fig, axes = plt().subplots(1, 2 if has_ppl else 1, figsize=(11 if has_ppl else 6, 3.8), squeeze=False)
    panels = [("mc_loss", "MC loss (points of expected accuracy)", o.max_capability_loss)]
    if has_ppl:
        panels.append(("ppl_increase", "held-out perplexity increase (relative)", o.max_ppl_increase))
    for ax, (col, label, limit) in zip(axes[0], panels, strict=True):
        for d, g in curves.groupby("direction", sort=False):
            g = g.sort_values("alpha")
            style = {"color": "black", "ls": "--"} if d == "random" else {}
            line = ax.plot(g["alpha"], g[col], marker="o", ms=3, label=d, **style)[0]
            ax.fill_between(g["alpha"], g[f"{col}_ci_low"], g[f"{col}_ci_high"], alpha=0.15,
                            color=line.get_color())
        if limit is not None:
            ax.axhline(limit, color="red", lw=0.8, ls=":", label="limit")
        ax.axvline(alpha, color="grey", ls=":")
        ax.set(xscale="log", xlabel="α (relative to mean residual norm)", ylabel=label)
    axes[0][0].set_title(f"Capability guard at layer {layer} (chosen α = {alpha:g}; bands: 95 % CI)", fontsize=9)
    axes[0][-1].legend(fontsize=6)
    savefig(fig, path)
