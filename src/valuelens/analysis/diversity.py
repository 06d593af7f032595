"""``diversity``: lexical and semantic diversity of the free-form steered answers, and the logit-lens entropy of
each vector.

One group per (value, condition) holds the same ``n_free`` queries' answers, so Distinct-n (which falls with
sample size) compares fairly. The paper's claims are paired comparisons within each value — intrinsic steering
gives more diverse text than prompted steering, and much more so for the orthogonalised vectors (paper
Distinct-2: int 0.362 vs prompt 0.342; int⊥ 0.402 vs prompt⊥ 0.203) — so a finding's unit is the value: the
mean over values of the within-value difference, with a bootstrap CI over values and a sign-flip p-value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import torch

from ..errors import DataError
from ..runio import read_jsonl
from ..stats import Finding
from .base import Context, Section, SectionFiles, register_section
from .common import STEER_KINDS, embedder, steer_finding, write_csv


@register_section
class DiversitySection(Section):
    name = "diversity"
    title = "Diversity"
    about = ("Distinct-n, EAD, semantic diversity and logit-lens entropy of steered responses. Paper Distinct-2: "
             "0.362 intrinsic, 0.342 prompted, 0.402 intrinsic⊥, 0.203 prompted⊥.")
    requires = ("steering",)
    uses = ("layer",)
    reads = ("analyze/steering/responses/*.jsonl", "vectors.safetensors")
    writes = ("tables/diversity_per_condition.csv", "tables/diversity.csv", "tables/logit_lens.csv", "summary.json")
    version = 2

    def run(self, ctx: Context) -> dict[str, Any]:
        from ..evals.diversity import distinct_n, ead_n, logit_lens_entropy, semantic_diversity
        from ..models import _get_attr_path

        sec = ctx.dir()
        resp_dir = ctx.run / "analyze" / "steering" / "responses"
        if not resp_dir.is_dir():
            raise DataError(f"{ctx.run}: the 'steering' section has not run (needed for diversity)")
        groups: dict[str, list[str]] = {}
        for f in sorted(resp_dir.glob("*.jsonl")):
            for r in read_jsonl(f):
                groups.setdefault(r["condition"], []).append(r["response"])
        embed = embedder()
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
        write_csv(sec / "tables" / "diversity_per_condition.csv", pg)
        metrics = ["distinct_1", "distinct_2", "ead_2", "semantic_diversity"]
        agg = pg.groupby("kind")[metrics].agg(["mean", "std"])
        agg.columns = [f"{m}_{s}" if s == "std" else m for m, s in agg.columns]
        df = agg.reset_index()
        df.insert(1, "groups", pg.groupby("kind").size().reindex(df["kind"]).to_numpy())
        df.insert(2, "group_size", pg.groupby("kind")["n"].max().reindex(df["kind"]).to_numpy())
        for ref in ("random", "baseline"):  # each kind against the same-norm random direction and the baseline
            if ref in set(df["kind"]):
                r = df.set_index("kind").loc[ref]
                for m in ("distinct_2", "semantic_diversity"):
                    df[f"{m}_minus_{ref}"] = df[m] - float(r[m])
        write_csv(sec / "tables" / "diversity.csv", df)
        unembed = _get_attr_path(ctx.lm.model, ctx.lm.spec.arch.unembed).weight.detach().float()
        norm = _get_attr_path(ctx.lm.model, ctx.lm.spec.arch.final_norm)
        lens_rows = []
        for v in ctx.values:
            for kind in STEER_KINDS:
                with torch.no_grad():
                    ll = logit_lens_entropy(ctx.vec(v, kind).float(), unembed, final_norm=norm, top_k=8)
                toks = [ctx.lm.tokenizer.decode([int(t)]) for t in ll.top_ids]
                lens_rows.append({"value": v, "kind": kind, "entropy": float(ll.entropy),
                                  "top_tokens": " | ".join(toks)})
        lens = pd.DataFrame(lens_rows)
        write_csv(sec / "tables" / "logit_lens.csv", lens)
        return {"group_size": int(pg["n"].max()), "groups": len(pg),
                "distinct_2": {r["kind"]: round(float(r["distinct_2"]), 4) for _, r in df.iterrows()},
                "semantic_diversity": {r["kind"]: round(float(r["semantic_diversity"]), 4)
                                       for _, r in df.iterrows()},
                "mean_logit_lens_entropy": {k: round(float(x), 4)
                                            for k, x in lens.groupby("kind")["entropy"].mean().items()}}

    def findings(self, files: SectionFiles) -> list[Finding]:
        pg = files.table("diversity_per_condition.csv")
        out = []
        for fid, a, b, paper, claim in (
                ("diversity-intrinsic-vs-prompted", "intrinsic", "prompted", 0.362 - 0.342,
                 "steering by v_int gives more diverse text than steering by v_prompt"),
                ("diversity-orth", "intrinsic_orth", "prompted_orth", 0.402 - 0.203,
                 "the orthogonalised v_int gives much more diverse text than the orthogonalised v_prompt")):
            kw = dict(id=fid, claim=claim, paper=f"Distinct-2 difference {paper:+.3f}", paper_effect=paper,
                      section=self.name, unit="values (one group of answers per value and kind)",
                      control=f"the same value's {b} group (paired by value)",
                      metric=f"Distinct-2({a}) − Distinct-2({b}) within a value",
                      evidence=files.rel("tables", "diversity_per_condition.csv"))
            if pg is None or pg.empty:
                out.append(Finding.untestable("no diversity results", **kw))
                continue
            piv = pg[pg["kind"].isin([a, b])].pivot_table(index="value", columns="kind", values="distinct_2")
            if a not in piv or b not in piv:
                out.append(Finding.untestable(f"no {a}/{b} groups", **kw))
                continue
            d = (piv[a] - piv[b]).dropna()
            units = pd.DataFrame({"target": d.index, "d": d.to_numpy()})
            out.append(steer_finding(units, seed=0, strata_col=None, ours_prefix=f"Distinct-2 {a} − {b}", **kw))
        return out
