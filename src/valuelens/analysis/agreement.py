"""``agreement``: the extract's judge against other judges on the extract's own responses (Cohen's kappa per
value), and each judge's sanity check on prompted responses — how much more often it finds value s in answers
prompted to express s than in answers prompted for another value. Not a claim of the paper: it says how far the
judge-based findings can be trusted."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import DataError
from ..runio import read_jsonl
from ..values import VALUE_NAMES
from .base import Context, Section, register_section
from .common import write_csv


@register_section
class AgreementSection(Section):
    name = "agreement"
    title = "Judge agreement"
    about = ("The extract's judge against the other judges on the same responses (Cohen's kappa per value), "
             "and each judge's sanity check on prompted responses: how much more often it finds value s in "
             "answers prompted to express s than in answers prompted for another value.")
    reads = ("judgments.jsonl", "responses/*.jsonl", "judge.json")
    writes = ("tables/judge_agreement.csv", "tables/prompted_target_rates.csv",
              "figures/prompted_target_discrimination.png", "summary.json")
    needs_vectors = False

    @dataclass
    class Config:
        # Judges compared with the extract's judge: names (lexicon, llm, detector) or a detector folder. The LLM
        # judge on the embedded 135M model is slow and near chance (docs/llm.md), hence not default.
        agreement_judges: list[str] = field(default_factory=lambda: ["lexicon"])

    def run(self, ctx: Context) -> dict[str, Any]:
        from ..extract import ExtractConfig, load_responses, make_judge
        from ..judges.agreement import agreement
        from ..judges.base import JudgeResult
        from ..plots import grouped_bars, plt, savefig
        from ..values import get_value

        sec = ctx.dir()
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
        for name in ctx.options.agreement_judges:
            judge = make_judge(ExtractConfig.from_dict({"judge": name, "model": ctx.extract_cfg.get("model",
                                                                                                   "smollm2")}))
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
                if not g.n:
                    continue
                rows.append({"judge_a": primary_name, "judge_b": label, "value": v, "n": g.n,
                             "agreement": g.agreement, "kappa": g.kappa, "yes_rate_a": g.rate_a,
                             "yes_rate_b": g.rate_b})
            pooled[label] = {"kappa": round(float(rep.pooled.kappa), 4),
                             "agreement": round(float(rep.pooled.agreement), 4),
                             "mean_kappa": round(float(rep.mean_kappa), 4)}
        if rows:
            write_csv(sec / "tables" / "judge_agreement.csv", pd.DataFrame(rows))
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
            write_csv(sec / "tables" / "prompted_target_rates.csv", tdf)
            disc = {k: round(float(x), 4) for k, x in tdf.groupby("judge")["discrimination"].mean().items()}
            fig, ax = plt().subplots(figsize=(8, 3.6))
            names = [v.name for v in vals if v.name in set(tdf["value"])]
            grouped_bars(ax, names, {jn: g.set_index("value").reindex(names)["discrimination"]
                                     for jn, g in tdf.groupby("judge", sort=False)})
            ax.set_xticks(np.arange(len(names)), names, rotation=30, ha="right")
            ax.set(ylabel="yes rate: prompted for s − prompted for others",
                   title="Does each judge find the value a response was prompted to express?")
            ax.legend(fontsize=8)
            savefig(fig, sec / "figures" / "prompted_target_discrimination.png")
        return {"primary": primary_name, "judges": list(results), "n_texts": len(recs), "pooled": pooled,
                "mean_discrimination": disc}
