"""``vectors``: how intrinsic and prompted value vectors relate, with uncertainty.

Two of the paper's claims are about the vectors themselves, not about interventions:

* **distinct mechanisms** — v_int and v_prompt are related but distinct: the mean over values of
  cos(v_int, v_prompt) at the analysis layer is above what label noise gives, and clearly below 1;
* **compliance direction** — the differences δ_s = v_prompt − v_int share a common direction: their mean pairwise
  cosine (paper: 0.476) is above what label noise gives.

Both statistics are recomputed on bootstrap resamples of the responses (the unit) for a CI, and on label
permutations (expressing vs not, shuffled within each value × condition) for the control; see
:mod:`valuelens.analysis.resample`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from ..errors import ConfigError
from ..stats import Finding, mde, shifted_percentile_ci
from .base import Context, Section, SectionFiles, register_section
from .common import fmt_effect, write_csv
from .resample import Key, distribution, load_layer_data


def vector_stats(vecs: dict[Key, np.ndarray], values: list[str]) -> dict[str, float]:
    """Mean cos(v_int, v_prompt) over values, the δ's mean pairwise cosine and projection share, per-value cos."""
    from ..vectors import compliance_direction

    out: dict[str, float] = {}
    cos, deltas_i, deltas_p = [], [], []
    for v in values:
        a, b = vecs.get((v, "intrinsic")), vecs.get((v, "prompted"))
        if a is None or b is None or not (np.isfinite(a).all() and np.isfinite(b).all()):
            out[f"cos/{v}"] = np.nan
            continue
        c = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-300))
        out[f"cos/{v}"] = c
        cos.append(c)
        deltas_i.append(a)
        deltas_p.append(b)
    out["mean_cos"] = float(np.mean(cos)) if cos else np.nan
    if len(deltas_i) >= 2:
        _, st = compliance_direction(torch.from_numpy(np.stack(deltas_i)), torch.from_numpy(np.stack(deltas_p)))
        out["delta_pairwise_cos"] = float(st.mean_pairwise_cosine[0])
        out["delta_projection_share"] = float(st.projection_share[0])
    else:
        out["delta_pairwise_cos"] = out["delta_projection_share"] = np.nan
    return out


def resample_finding(res: pd.DataFrame, point: float, stat: str, **kw: Any) -> Finding:
    """A finding from a resample table (rows of kind bootstrap / null): bias-shifted percentile CI from the
    bootstrap rows (:func:`~valuelens.stats.shifted_percentile_ci`),
    one-sided p from the null rows (how often label noise reaches the observed value), MDE from the bootstrap
    SE."""
    boot = res.loc[res["kind"] == "bootstrap", stat].to_numpy(dtype=float)
    null = res.loc[res["kind"] == "null", stat].to_numpy(dtype=float)
    boot, null = boot[np.isfinite(boot)], null[np.isfinite(null)]
    if not np.isfinite(point) or len(boot) < 10 or len(null) < 10:
        return Finding.untestable("too few usable resamples (groups emptied)", **kw)
    lo, hi, _ = shifted_percentile_ci(boot, point)
    se = float(boot.std(ddof=1))
    p = (1 + int(np.sum(null >= point))) / (1 + len(null))
    f = Finding(effect=float(point), ci_low=float(lo), ci_high=float(hi), p_value=p, mde=mde(se), **kw)
    f.extra = {**f.extra, "null_mean": float(null.mean()), "null_p95": float(np.quantile(null, 0.95))}
    return f.decided()


@register_section
class VectorsSection(Section):
    name = "vectors"
    title = "Value vectors: intrinsic vs prompted"
    about = ("cos(v_int, v_prompt) per value and the compliance direction's structure at the analysis layer, "
             "with 95 % bootstrap CIs over responses and a label-permutation null (paper: partly aligned vectors; "
             "mean pairwise cos of δ_s = 0.476, the mean explains 48–68 %).")
    uses = ("layer", "seed")
    reads = ("activations/chunk-*.safetensors", "judgments.jsonl", "responses/*.jsonl", "vectors.safetensors")
    writes = ("tables/cos_int_prompt.csv", "tables/resamples.csv", "figures/cos_int_prompt.png", "summary.json")

    @dataclass
    class Config:
        vector_resamples: int = 300  # bootstrap and permutation resamples of the responses

        def validate(self) -> None:
            if self.vector_resamples < 20:
                raise ConfigError("vector_resamples must be >= 20")

    quick: ClassVar[dict[str, Any]] = {"vector_resamples": 100}

    def run(self, ctx: Context) -> dict[str, Any]:
        from ..plots import plt, savefig

        sec = ctx.dir()
        data = load_layer_data(ctx)
        point = vector_stats(data.vectors(), ctx.values)
        rows = distribution(data, lambda v: vector_stats(v, ctx.values), ctx.options.vector_resamples,
                            seed=ctx.cfg.seed)
        res = pd.DataFrame(rows)
        write_csv(sec / "tables" / "resamples.csv", res)
        boot = res[res["kind"] == "bootstrap"]
        null = res[res["kind"] == "null"]
        per = []
        for v in ctx.values:
            col = f"cos/{v}"
            lo, hi, bias = shifted_percentile_ci(boot[col].dropna().to_numpy(), point[col])
            per.append({"value": v, "cos": point[col], "ci_low": lo, "ci_high": hi, "bootstrap_bias": bias,
                        "null_p95": float(null[col].dropna().quantile(0.95)) if null[col].notna().any() else np.nan})
        tab = pd.DataFrame(per)
        write_csv(sec / "tables" / "cos_int_prompt.csv", tab)
        fig, ax = plt().subplots(figsize=(7, 3.6))
        x = np.arange(len(tab))
        ax.bar(x, tab["cos"], color="#4c78a8", label="cos(v_int, v_prompt)")
        ax.errorbar(x, tab["cos"], yerr=np.clip([tab["cos"] - tab["ci_low"], tab["ci_high"] - tab["cos"]], 0, None), fmt="none",
                    ecolor="black", capsize=3, label="95 % bootstrap CI")
        ax.scatter(x, tab["null_p95"], color="red", marker="_", s=200, label="label-permutation null, 95th pct")
        ax.set_xticks(x, tab["value"], rotation=30, ha="right")
        ax.set(ylabel="cosine", title=f"Intrinsic vs prompted value vectors at layer {ctx.layer}")
        ax.legend(fontsize=7)
        savefig(fig, sec / "figures" / "cos_int_prompt.png")
        return {"layer": ctx.layer, "values": list(ctx.values), "n_responses": data.n,
                "resamples": ctx.options.vector_resamples, **{k: v for k, v in point.items() if "/" not in k}}

    def findings(self, files: SectionFiles) -> list[Finding]:
        s = files.summary
        res = files.table("resamples.csv")
        base = dict(section=self.name, unit="responses", evidence=files.rel("tables", "resamples.csv"),
                    control="expressing labels permuted within each value × condition")
        if res is None or not s:
            return [Finding.untestable("the vectors section has no results", id=i, claim=c, paper=p, metric=m,
                                       **base)
                    for i, c, p, m in (("distinct-mechanisms", "v_int and v_prompt are related but distinct", "",
                                        "mean cos"), ("compliance-direction", "δ_s share a common direction", "",
                                                      "mean pairwise cos"))]
        out = []
        f = resample_finding(res, float(s.get("mean_cos", np.nan)), "mean_cos", id="distinct-mechanisms",
                             claim="intrinsic and prompted vectors are related but distinct",
                             paper="partly aligned, separable shared and unique components",
                             metric=f"mean over values of cos(v_int, v_prompt) at layer {s.get('layer')}", **base)
        if f.status == "reproduced" and f.ci_high is not None and f.ci_high >= 0.95:
            f.status = "not detected"  # related, but not shown to be distinct
            f.reason = "cos indistinguishable from 1: the two vectors may be one mechanism"
        elif f.ci_low is not None and f.ci_low > 0.95:
            f.status = "contradicted"
        f.ours = "mean cos " + fmt_effect(f) + f"; label-noise null p95 {f.extra.get('null_p95', np.nan):.3f}"
        out.append(f)
        f = resample_finding(res, float(s.get("delta_pairwise_cos", np.nan)), "delta_pairwise_cos",
                             id="compliance-direction", claim="prompted − intrinsic differences share a common direction",
                             paper="mean pairwise cos 0.476; the mean explains 48–68 %", paper_effect=0.476,
                             metric=f"mean pairwise cos of δ_s = v_prompt − v_int at layer {s.get('layer')}", **base)
        f.ours = (f"mean pairwise cos {fmt_effect(f)}; projection share {s.get('delta_projection_share', np.nan):.2f}; "
                  f"label-noise null p95 {f.extra.get('null_p95', np.nan):.3f}")
        out.append(f)
        return out
