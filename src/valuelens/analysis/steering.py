"""``steering``: free-form answers to held-out queries under each steering direction, judged for the target value.

For every value and condition (each vector kind, both combined, a same-norm random direction) the model answers
``n_free`` queries that were not used to extract the vectors (greedy decoding, so conditions differ only by the
intervention); the extract's judge labels each answer. A finding's effect is the mean over (value, query) units of
``expressed(kind) − expressed(random)`` for the target value, with a bootstrap CI over units, a sign-flip p-value
and the MDE. The answers are also the material of the ``diversity`` section.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..precision import use_bf16
from ..runio import atomic_write_json
from ..stats import Finding
from .base import Context, Section, SectionFiles, register_section
from .common import DIRECTION_CONDITIONS, direction_conditions, free_queries, steer_finding, write_csv


def judge_from_extract(ctx: Context, name: str | None = None) -> Any:
    from ..extract import ExtractConfig, make_judge

    e = ctx.extract_cfg
    opts = e.get("judge_options", {}) if name is None else {}
    return make_judge(ExtractConfig.from_dict({"judge": name or e.get("judge", "auto"), "judge_options": opts,
                                               "model": e.get("model", "smollm2")}))


@register_section
class SteeringSection(Section):
    name = "steering"
    title = "Free-form steering"
    about = ("Activation addition along v_int, v_prompt, their orthogonalised versions, the shared axis and both "
             "combined, with α relative to the residual norm, on held-out queries; the judge's expression rate of "
             "the target value against a random direction of the same norm.")
    requires = ("capability",)
    uses = ("layer", "seed", "batch_size", "gen_batch_size", "gen_bf16")
    reads = ("vectors.safetensors", "items.jsonl", "queries (extract config)", "judge (extract config)")
    writes = ("responses/*.jsonl", "tables/responses.csv", "tables/expression_rates.csv",
              "tables/mean_expression_rates.csv", "judge.json", "summary.json")
    needs_alpha = True
    judged = True
    version = 2

    @dataclass
    class Config:
        n_free: int = 6  # free-form queries per value and condition
        free_max_new_tokens: int = 48

        def validate(self) -> None:
            if self.n_free < 1 or self.free_max_new_tokens < 1:
                raise ConfigError("n_free and free_max_new_tokens must be >= 1")

    quick: ClassVar[dict[str, Any]] = {"n_free": 3, "free_max_new_tokens": 24}

    def run(self, ctx: Context) -> dict[str, Any]:
        from ..generate import GenerationConfig, GenItem, generate_to_file
        from ..hooks import Intervention, steer_delta
        from ..models import NO_SYSTEM

        o = ctx.options
        sec = ctx.dir()
        queries = free_queries(ctx, o.n_free)
        gcfg = GenerationConfig(max_new_tokens=o.free_max_new_tokens, do_sample=False,
                                batch_size=ctx.cfg.gen_batch_size, bf16=use_bf16(ctx.cfg.gen_bf16, ctx.lm.device), seed=ctx.cfg.seed)
        conds_all: dict[str, list[Intervention]] = {"baseline": []}
        for v in ctx.values:
            for name, ivs in direction_conditions(ctx, v, ablations=False).items():
                conds_all[f"{v}|{name}"] = ivs
        # Every condition is one activation addition at the analysis layer: one generation over all of them,
        # each answer with its own steering vector, so batches stay full (an unsteered row adds zero).
        items = []
        for cname, ivs in conds_all.items():
            sd = steer_delta(ivs, ctx.lm.spec.d_model) if ivs else None
            if ivs and (sd is None or sd[0] != ctx.layer):
                raise ConfigError(f"steering condition {cname} is not a single addition at layer {ctx.layer}")
            items += [GenItem(id=f"{cname}/{i}", prompt=ctx.lm.chat.render(q, NO_SYSTEM),
                              meta={"condition": cname, "query": q, "query_index": i},
                              steer=None if sd is None else sd[1]) for i, q in enumerate(queries)]
        records = generate_to_file(ctx.lm, items, sec / "responses" / "responses.jsonl", gcfg,
                                   steer_layer=ctx.layer, desc="steered answers")
        judge = judge_from_extract(ctx)
        res = judge.judge([r["response"] for r in records], ctx.values)
        rows = []
        for i, r in enumerate(records):
            target, _, kind = r["condition"].partition("|")
            row = {"condition": r["condition"], "target": target if kind else None, "kind": kind or "baseline",
                   "query_index": int(r.get("query_index", i)), "empty": not r["response"].strip()}
            for j, v in enumerate(res.values):
                row[v.name] = (float(res.labels[i, j]) if res.valid[i, j] else np.nan)
            rows.append(row)
        df = pd.DataFrame(rows)
        write_csv(sec / "tables" / "responses.csv", df)
        out = []
        base = df[df["kind"] == "baseline"]
        for v in ctx.values:
            base_rate = float(base[v].mean())
            for kind in DIRECTION_CONDITIONS:
                sub = df[(df["target"] == v) & (df["kind"] == kind)]
                out.append({"value": v, "kind": kind, "expression_rate": float(sub[v].mean()),
                            "baseline_rate": base_rate, "empty_rate": float(sub["empty"].mean()), "n": len(sub)})
        rates = pd.DataFrame(out)
        rates["delta"] = rates["expression_rate"] - rates["baseline_rate"]
        write_csv(sec / "tables" / "expression_rates.csv", rates)
        mean = rates.groupby("kind")[["expression_rate", "baseline_rate", "delta", "empty_rate"]].mean().reset_index()
        write_csv(sec / "tables" / "mean_expression_rates.csv", mean)
        atomic_write_json(sec / "judge.json", judge.describe())
        return {"alpha": ctx.alpha, "layer": ctx.layer, "n_queries": len(queries),
                "judge": judge.describe().get("name"),
                "mean_delta_expression": {r["kind"]: round(float(r["delta"]), 4) for _, r in mean.iterrows()}}

    def findings(self, files: SectionFiles) -> list[Finding]:
        df = files.table("responses.csv")
        out = []
        for kind, fid in (("intrinsic", "expression-intrinsic"), ("prompted", "expression-prompted"),
                          ("shared", "expression-shared")):
            kw = dict(id=fid, claim=f"steering by the {kind} vector raises the judged expression of the target value",
                      paper="higher value expression under steering", section=self.name,
                      unit="queries (value × held-out query)", control="random direction of the same norm",
                      metric="expression rate of the target value (judge), minus under the random direction",
                      evidence=files.rel("tables", "responses.csv"))
            if df is None or df.empty:
                out.append(Finding.untestable("no free-form results", **kw))
                continue
            units = []
            for target, g in df[df["target"].notna()].groupby("target"):
                if target not in g.columns:
                    continue
                a = g[g["kind"] == kind].set_index("query_index")[target]
                b = g[g["kind"] == "random"].set_index("query_index")[target]
                both = a.index.intersection(b.index)
                for q in both:
                    if np.isfinite(a[q]) and np.isfinite(b[q]):
                        units.append({"target": target, "query": int(q), "d": float(a[q] - b[q])})
            f = steer_finding(pd.DataFrame(units, columns=["target", "query", "d"]), seed=0,
                              ours_prefix=f"{kind} − random", **kw)
            out.append(f)
        return out
