"""``capability``: residual norms (the unit of α) and the capability guard that chooses the steering strength.

α is relative: ``h ← h + α·mean‖h_l‖·v̂`` (:func:`valuelens.evals.capability.relative_steer`), so the same α
means the same push at any layer and in any model. The guard sweeps ``alphas`` for v_int and v_prompt of the
first ``guard_values`` values and keeps the largest α whose multiple-choice accuracy loss stays within
``max_capability_loss`` for every guarded direction (the paper: < 5 points; α = 4 for Qwen2.5-7B). If no α
passes, the smallest α is used and every steering finding is flagged.
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


@register_section
class CapabilitySection(Section):
    name = "capability"
    title = "Capability guard"
    about = ("The capability score under steering, used to pick the largest α within the allowed loss (paper: "
             "< 5 points, α = 4 for Qwen2.5-7B). α is relative to the layer's mean residual norm.")
    uses = ("layer", "seed", "batch_size")
    reads = ("vectors.safetensors", "data/capability_mc.jsonl", "data/heldout.txt")
    writes = ("tables/residual_norms.csv", "tables/alpha_sweep.csv", "tables/mc_items.csv",
              "figures/alpha_sweep.png", "summary.json")
    version = 2

    @dataclass
    class Config:
        alphas: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2, 0.4, 0.8])
        max_capability_loss: float = 0.05  # 5 points of MC accuracy
        mc_items: int = 60  # capability items used by the guard
        guard_values: int = 3  # values whose v_int and v_prompt the guard checks (0 = all)
        alpha: float | None = None  # fix α instead of running the guard

        def validate(self) -> None:
            if not self.alphas and self.alpha is None:
                raise ConfigError("give alphas to sweep or a fixed alpha")
            if self.max_capability_loss < 0:
                raise ConfigError("max_capability_loss must be >= 0")

    quick: ClassVar[dict[str, Any]] = {"alphas": [0.05, 0.1], "mc_items": 40}

    def restore(self, ctx: Context, summary: dict[str, Any]) -> None:
        ctx.alpha = summary.get("alpha")
        ctx.norms = pd.read_csv(ctx.run / "analyze" / "capability" / "tables" / "residual_norms.csv")[
            "mean_norm"].to_numpy()

    def run(self, ctx: Context) -> dict[str, Any]:
        from ..evals.capability import CapabilityMetric, choose_alpha, mc_answers, residual_norms
        from ..evals.items import load_capability_mc
        from ..plots import plt, savefig

        o = ctx.options
        sec = ctx.dir()
        norms = residual_norms(ctx.lm, batch_size=ctx.cfg.batch_size)
        ctx.norms = norms
        write_csv(sec / "tables" / "residual_norms.csv", pd.DataFrame({"layer": range(len(norms)),
                                                                       "mean_norm": norms}))
        if o.alpha is not None:
            ctx.alpha = float(o.alpha)
            return {"alpha": ctx.alpha, "guard": "fixed by config", "layer": ctx.layer}
        mc = load_capability_mc()[: o.mc_items]
        item_rows: list[dict[str, Any]] = []
        current: dict[str, Any] = {}

        def score(ivs: Any) -> float:  # MC accuracy, keeping every item's result for the finding's CI
            res = mc_answers(ctx.lm, mc, ivs, batch_size=ctx.cfg.batch_size)
            for r in res:
                item_rows.append({**current, "item": r["id"], "correct": int(r["correct"])})
            return float(np.mean([r["correct"] for r in res]))

        metric = CapabilityMetric(score, higher_is_better=True, relative=False, name="mc")
        # Guard directions: v_prompt and v_int of the first `guard_values` values (0 = all). The first value gets
        # the full sweep (the figure); the others stop at their first ineligible α, which cannot change the choice.
        probes = ctx.values if o.guard_values == 0 else ctx.values[: o.guard_values]
        rows, chosen = [], []
        base_score: float | None = None
        for n, probe in enumerate(probes):
            for kind in ("prompted", "intrinsic"):
                v = ctx.vec(probe, kind)
                direction = f"{probe}/{kind}"

                def make(a: float, v: Any = v, direction: str = direction) -> Any:
                    current.update(direction=direction, alpha=a)
                    return ctx.steer(v, a)
                if base_score is None:
                    current.update(direction="baseline", alpha=0.0)
                res = choose_alpha(ctx.lm, make, o.alphas, metric=metric, max_loss=o.max_capability_loss,
                                   batch_size=ctx.cfg.batch_size, baseline_score=base_score,
                                   stop_early=n > 0 and any(a > 0 for a in o.alphas))
                base_score = res.baseline
                for r in res.table:
                    rows.append({"direction": direction, **{k: x for k, x in r.items() if not isinstance(x, list)}})
                chosen.append(res.alpha)
        alpha = float(min(chosen))
        guard_exceeded = alpha <= 0
        if guard_exceeded:
            # No α passes the guard: evaluate at the smallest grid α anyway, flagged, rather than report nothing.
            alpha = float(min(a for a in o.alphas if a > 0))
        ctx.alpha = alpha
        df = pd.DataFrame(rows)
        write_csv(sec / "tables" / "alpha_sweep.csv", df)
        write_csv(sec / "tables" / "mc_items.csv", pd.DataFrame(item_rows))
        fig, ax = plt().subplots(figsize=(6, 3.6))
        for d, g in df.groupby("direction", sort=False):
            if len(g) >= 2:
                ax.plot(g["alpha"], g["score"], marker="o", label=d)
        ax.axvline(alpha, color="grey", ls=":")
        ax.set(xscale="log", xlabel="α (relative to mean residual norm)", ylabel="MC accuracy",
               title=f"Capability guard at layer {ctx.layer} (chosen α = {alpha:g})")
        ax.legend(fontsize=7)
        savefig(fig, sec / "figures" / "alpha_sweep.png")
        return {"alpha": alpha, "layer": ctx.layer, "guard_values": list(probes), "max_loss": o.max_capability_loss,
                "mc_items": len(mc), "alpha_grid": o.alphas, "guard_exceeded": guard_exceeded,
                "note": ("no grid α kept the capability loss within the limit; evaluations use the smallest α and "
                         "are flagged" if guard_exceeded else
                         "largest grid α within the limit for every guarded direction")}

    def findings(self, files: SectionFiles) -> list[Finding]:
        s = files.summary
        kw = dict(id="capability-guard", claim="a steering strength exists that costs < 5 points of capability",
                  paper="α = 4 for Qwen2.5-7B (largest α within 5 points)",
                  metric="MC accuracy loss at the chosen α (fraction; 0.05 = 5 points), mean over guarded directions",
                  unit="items", control="the unsteered model on the same items", section=self.name,
                  evidence=files.rel("tables", "mc_items.csv"), direction=-1)
        items = files.table("mc_items.csv")
        if s.get("alpha") is None:
            return [Finding.untestable("the guard did not run", **kw)]
        if items is None or items.empty:
            return [Finding.untestable(f"α fixed at {s['alpha']:g} by config: no guard sweep", **kw)]
        alpha = float(s["alpha"])
        base = items[items["direction"] == "baseline"].set_index("item")["correct"]
        at = items[(items["direction"] != "baseline") & np.isclose(items["alpha"], alpha)]
        if at.empty or base.empty:
            return [Finding.untestable("no guard results at the chosen α", **kw)]
        # Loss per item = baseline correct − mean over guarded directions of steered correct.
        steered = at.groupby("item")["correct"].mean()
        loss = (base.reindex(steered.index) - steered).to_numpy(dtype=float)
        ci = mean_ci(loss, seed=0)
        limit = float(s.get("max_loss", 0.05))
        # One-sided test that the cost is below the limit (the claim), on the per-item losses.
        p = sign_flip_test(loss - limit, alternative="less")
        f = Finding(effect=ci.estimate, ci_low=ci.low, ci_high=ci.high, p_value=p, n=ci.n, mde=ci.mde, **kw)
        if not np.isfinite(ci.high):
            f.status = "not detected"
        elif ci.high < limit and p < 0.05:
            f.status = "reproduced"
        elif ci.low > limit:
            f.status = "contradicted"
        else:
            f.status = "not detected"
        f.ours = (f"α = {alpha:g} at layer {s.get('layer')}: loss " + fmt_effect(f)
                  + (" — no grid α passed; evaluations use the smallest α (flagged)" if s.get("guard_exceeded")
                     else ""))
        f.extra = {"alpha": alpha, "guard_exceeded": bool(s.get("guard_exceeded")), "limit": limit}
        return [f]
