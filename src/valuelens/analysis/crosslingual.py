"""``crosslingual``: vectors extracted from English data, the questionnaire administered in Chinese, Spanish,
French and Korean (and English again with the same conditions, as the reference).

The finding pools the non-English languages: per (language, value, item) unit, the mean of the v_int and
v_prompt effects (``Δ target − Δ others``) minus the same-norm random direction's, with a bootstrap CI over units
(stratified by language), a sign-flip p-value and the MDE. English-only models (the embedded SmolLM2) skip the
section with the reason; run with ``--model qwen2.5-0.5b``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..stats import Finding
from .base import Context, Section, SectionFiles, register_section
from .common import CONDITIONS, steer_finding, unit_contrast, write_csv
from .questionnaire import administer_conditions

MULTILINGUAL_FAMILIES = ("qwen2", "qwen3", "gemma2", "gemma3", "gemma3_text")


@register_section
class CrosslingualSection(Section):
    name = "crosslingual"
    title = "Cross-lingual transfer"
    about = ("Vectors extracted from English data, questionnaire administered in English, Chinese, Spanish, "
             "French and Korean, against a same-norm random direction in each language.")
    requires = ("capability",)
    uses = ("layer", "seed", "batch_size", "pvq_items_per_value", "top_k_percent", "angle_deg", "neuron_beta")
    reads = ("vectors.safetensors", "data/pvq.jsonl")
    writes = ("tables/items_<lang>.csv", "tables/by_language.csv", "figures/by_language.png", "summary.json")
    needs_alpha = True
    version = 2

    @dataclass
    class Config:
        languages: list[str] | None = None  # None: English-only models skip; multilingual ones run all five
        crosslingual_conditions: list[str] = field(default_factory=lambda: ["intrinsic", "prompted", "shared",
                                                                            "random"])

        def validate(self) -> None:
            unknown = sorted(set(self.crosslingual_conditions) - set(CONDITIONS))
            if unknown:
                raise ConfigError(f"unknown crosslingual_conditions: {', '.join(unknown)}; "
                                  f"choose from {', '.join(CONDITIONS)}")
            if "random" not in self.crosslingual_conditions:
                raise ConfigError("crosslingual_conditions must include 'random' (the control)")

    def run(self, ctx: Context) -> dict[str, Any]:
        from ..plots import grouped_bars, plt, savefig

        o = ctx.options
        langs = o.languages
        if langs is None:
            multilingual = ctx.lm.spec.arch.family in MULTILINGUAL_FAMILIES
            langs = ["en", "zh", "es", "fr", "ko"] if multilingual else []
        langs = [x for x in langs if x != "en"]
        if not langs:
            return {"status": "not run",
                    "reason": f"{ctx.lm.name} is English-only; run with the multilingual model "
                              "(--model qwen2.5-0.5b) or set languages"}
        by_lang = {}
        for lang in ["en", *langs]:  # English with the same conditions: the reference
            df = administer_conditions(ctx, lang, ctx.cfg.pvq_items_per_value, o.crosslingual_conditions, self.name)
            by_lang[lang] = df
        rows = []
        for lang, df in by_lang.items():
            for cond in [c for c in o.crosslingual_conditions if c != "random"]:
                u = unit_contrast(df, cond, "random")
                rows.append({"lang": lang, "condition": cond, "y": float(u["y"].mean()),
                             "beyond_random": float(u["d"].mean()), "n": len(u)})
        tab = pd.DataFrame(rows)
        write_csv(ctx.dir() / "tables" / "by_language.csv", tab)
        fig, ax = plt().subplots(figsize=(7, 3.8))
        order = list(by_lang)
        grouped_bars(ax, order, {c: g.set_index("lang").reindex(order)["beyond_random"]
                                 for c, g in tab.groupby("condition", sort=False)})
        ax.set_xticks(np.arange(len(order)), order)
        ax.set(ylabel="(Δ target − Δ others) − random's", title=f"English vectors, questionnaire per language "
               f"(α={ctx.alpha:g}, layer {ctx.layer})")
        ax.legend(fontsize=8)
        savefig(fig, ctx.dir() / "figures" / "by_language.png")
        return {"languages": langs, "conditions": list(o.crosslingual_conditions)}

    def findings(self, files: SectionFiles) -> list[Finding]:
        s = files.summary
        kw = dict(id="cross-lingual", claim="English vectors steer the questionnaire in other languages",
                  paper="English-extracted vectors steer all five languages (mean over languages)",
                  section=self.name, unit="items (language × value × item)",
                  control="random direction of the same norm, same language",
                  metric="mean of the v_int and v_prompt effects (Δ target − Δ others) minus random's, "
                         "non-English languages pooled", evidence=files.rel("tables", "by_language.csv"))
        langs = s.get("languages") or []
        if not langs:
            return [Finding.untestable(s.get("reason", "not run"), **kw)]
        units = []
        for lang in langs:
            df = files.table(f"items_{lang}.csv")
            if df is None:
                continue
            parts = [unit_contrast(df, c, "random").set_index(["target", "item"])["d"]
                     for c in ("intrinsic", "prompted") if c in set(df["condition"])]
            if not parts:
                continue
            d = pd.concat(parts, axis=1).mean(axis=1)
            units += [{"target": f"{lang}/{t}", "item": i, "d": float(x)} for (t, i), x in d.items()]
        f = steer_finding(pd.DataFrame(units, columns=["target", "item", "d"]), seed=0,
                          ours_prefix="pooled " + ", ".join(langs), **kw)
        return [f]
