"""``circumplex``: do the values' shared axes lie on Schwartz's circle, and the difference axes not?

PCA of the shared axes (one per value) at the analysis layer → top-2 PC scores → Procrustes fit to the theoretical
circle → R², against a permutation baseline (value labels shuffled on the circle). Effects carry a bootstrap CI
over responses (every vector recomputed from resampled responses, :mod:`valuelens.analysis.resample`). Paper:
top-2 PCs 72.5 % of the variance, R² ≈ 0.6–0.7 for the shared axes; the difference axes show no such structure.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from ..stats import Finding, mde, shifted_percentile_ci
from .base import Context, Section, SectionFiles, register_section
from .common import fmt_effect, write_csv
from .resample import Key, distribution, load_layer_data


def _axes(vecs: dict[Key, np.ndarray], values: list[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    from ..vectors import svd_axes

    names, shared, diff = [], [], []
    for v in values:
        a, b = vecs.get((v, "intrinsic")), vecs.get((v, "prompted"))
        if a is None or b is None or not (np.isfinite(a).all() and np.isfinite(b).all()):
            continue
        ax = svd_axes(torch.from_numpy(a), torch.from_numpy(b))
        names.append(v)
        shared.append(ax.shared.numpy())
        diff.append(ax.diff_int.numpy())
    return names, np.array(shared), np.array(diff)


def circle_r2(vecs: dict[Key, np.ndarray], values: list[str]) -> dict[str, float]:
    """Procrustes R² of the shared and the difference axes' top-2 PCs against the circle."""
    from ..evals.circumplex import pca_2d, procrustes_fit
    from ..values import VALUE_NAMES, circumplex_coordinates

    names, shared, diff = _axes(vecs, values)
    if len(names) < 3:
        return {"r2_shared": np.nan, "r2_diff": np.nan}
    target = circumplex_coordinates()[[VALUE_NAMES.index(v) for v in names]]
    out = {}
    for key, x in (("r2_shared", shared), ("r2_diff", diff)):
        out[key] = procrustes_fit(pca_2d(x).coords, target).r2
    out["shared_minus_diff"] = out["r2_shared"] - out["r2_diff"]
    return out


@register_section
class CircumplexSection(Section):
    name = "circumplex"
    title = "Circumplex structure"
    about = ("PCA of the shared axes and a Procrustes fit to the theoretical circle, R² against a permutation "
             "baseline, with bootstrap CIs over responses (paper: top-2 PCs 72.5 % of variance, R² ≈ 0.6–0.7; "
             "difference axes show no structure).")
    requires = ("vectors",)
    uses = ("layer", "seed", "vector_resamples")
    reads = ("activations/chunk-*.safetensors", "judgments.jsonl", "vectors.safetensors")
    writes = ("tables/circumplex.csv", "tables/resamples.csv", "figures/circumplex_pca.png", "summary.json")
    version = 2

    def run(self, ctx: Context) -> dict[str, Any]:
        from ..evals.circumplex import circumplex_analysis
        from ..plots import plt, savefig

        sec = ctx.dir()
        if len(ctx.values) < 3:
            return {"status": "not run",
                    "reason": f"needs at least 3 values with both vectors, have {len(ctx.values)}"}
        out: dict[str, Any] = {"layer": ctx.layer}
        fig, axes = plt().subplots(1, 2, figsize=(10, 4.6))
        for ax, kind in zip(axes, ("shared", "diff_intrinsic"), strict=True):
            res = circumplex_analysis({v: ctx.vec(v, kind).double().numpy() for v in ctx.values},
                                      seed=ctx.cfg.seed)
            pca, fit, perm = res["pca"], res["procrustes"], res["permutation"]
            coords = np.asarray(pca["coords"])
            ax.scatter(coords[:, 0], coords[:, 1])
            for (x, y), n in zip(coords, res["values"], strict=True):
                ax.annotate(n, (x, y), fontsize=7)
            pc12 = float(np.sum(pca["explained_variance_ratio"][:2]))
            ax.set_title(f"{kind}: PC1+2 {100 * pc12:.1f}%, R²={fit['r2']:.2f} "
                         f"(perm. mean {perm['mean']:.2f}, p={perm['p_value']:.3f})", fontsize=8)
            out[kind] = {"pc12_variance": pc12, "r2": float(fit["r2"]), "perm_mean": float(perm["mean"]),
                         "perm_p95": float(perm["p95"]), "p_value": float(perm["p_value"]),
                         "cosine_corr_theory": res["cosine_correlation"]["pearson"]}
        savefig(fig, sec / "figures" / "circumplex_pca.png")
        write_csv(sec / "tables" / "circumplex.csv",
                  pd.DataFrame([{"axes": k, **v} for k, v in out.items() if isinstance(v, dict)]))
        data = load_layer_data(ctx)
        rows = distribution(data, lambda v: circle_r2(v, ctx.values), ctx.cfg.vector_resamples, seed=ctx.cfg.seed)
        write_csv(sec / "tables" / "resamples.csv", pd.DataFrame(rows))
        return out

    def findings(self, files: SectionFiles) -> list[Finding]:
        s = files.summary
        res = files.table("resamples.csv")
        kw = dict(section=self.name, evidence=files.rel("tables", "circumplex.csv"))
        if "shared" not in s or res is None:
            reason = s.get("reason", "the circumplex section has no results")
            return [Finding.untestable(reason, id="circumplex", claim="shared axes follow the circumplex",
                                       paper="R² ≈ 0.6–0.7", metric="Procrustes R²", unit="responses",
                                       control="value labels permuted", **kw)]
        sh, df_ = s["shared"], s.get("diff_intrinsic", {})
        boot = res[res["kind"] == "bootstrap"]
        out = []
        # 1. Shared axes vs the permutation baseline (labels shuffled on the circle).
        b = boot["r2_shared"].dropna().to_numpy() - sh["perm_mean"]
        f = Finding(id="circumplex", claim="the values' shared axes lie on the theoretical circle",
                    paper="top-2 PCs 72.5 %, R² ≈ 0.6–0.7", metric="Procrustes R² of the shared axes minus the "
                    "permutation mean", unit="responses (bootstrap) / value labels (permutation)",
                    control="value labels shuffled on the circle (permutation baseline)",
                    effect=sh["r2"] - sh["perm_mean"], p_value=sh["p_value"], n=len(s.get("values", [])) or 10,
                    **kw)
        if len(b) >= 10:
            f.ci_low, f.ci_high, _ = shifted_percentile_ci(b, f.effect)
            f.mde = mde(float(b.std(ddof=1)))
        f.decided()
        f.ours = (f"R² {sh['r2']:.2f} vs permutation mean {sh['perm_mean']:.2f}: " + fmt_effect(f, "values")
                  + f"; PC1+2 {100 * sh['pc12_variance']:.1f} %")
        out.append(f)
        # 2. Shared axes fit the circle better than the difference axes (the paper: those show no structure).
        d = boot["shared_minus_diff"].dropna().to_numpy()
        g = Finding(id="circumplex-shared-vs-diff", claim="the shared axes follow the circle, the difference axes "
                    "do not", paper="difference axes show no circumplex structure",
                    metric="R²(shared) − R²(difference axes)", unit="responses (bootstrap)",
                    control="the same values' difference axes", effect=sh["r2"] - df_.get("r2", np.nan),
                    n=len(s.get("values", [])) or 10, **kw)
        if len(d) >= 10:
            g.ci_low, g.ci_high, _ = shifted_percentile_ci(d, g.effect)
            g.p_value = float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)) + 1 / (len(d) + 1)))
            g.mde = mde(float(d.std(ddof=1)))
        g.decided()
        g.ours = (f"R² shared {sh['r2']:.2f} vs difference {df_.get('r2', np.nan):.2f}: " + fmt_effect(g, "values"))
        out.append(g)
        return out
