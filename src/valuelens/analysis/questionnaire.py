"""``questionnaire``: steerability measured judge-free — PVQ-style portrait items scored by option log-probability
under each steering direction, directional ablation and neuron scaling, each against its control.

Per target value s and condition c the model answers *every* value's items; for each of s's items
``y = Δ(item) − mean Δ(other values' items)`` (Δ = steered − unsteered expected score on the 6-point scale), which
removes a shift all values share (our items are all positively keyed). A finding's effect is the mean over
(value, item) units of ``y_c − y_control`` (control: a random direction of the same norm, a random direction
ablated, a random neuron set of the same size), with a bootstrap CI over units (stratified by value), a sign-flip
permutation p-value and the MDE. Paper (Qwen2.5-7B, Δ target, 6-point): +1.74 intrinsic, +2.21 prompted,
+0.47 intrinsic⊥, +1.62 prompted⊥.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from ..errors import ConfigError
from ..stats import Finding
from .base import Context, Section, SectionFiles, register_section
from .common import (
    ABLATION_CONDITIONS,
    CONDITIONS,
    NEURON_CONDITIONS,
    direction_conditions,
    item_rows,
    neuron_conditions,
    pvq_items,
    steer_finding,
    unit_contrast,
    write_csv,
)

# (finding id, condition, control, paper's Δ target, claim, direction)
STEER_FINDINGS: tuple[tuple[str, str, str, float | None, str, int], ...] = (
    ("steer-intrinsic", "intrinsic", "random", 1.74, "steering by v_int raises the target value's score", 1),
    ("steer-prompted", "prompted", "random", 2.21, "steering by v_prompt raises the target value's score", 1),
    ("steer-intrinsic-orth", "intrinsic_orth", "random", 0.47,
     "v_int with its v_prompt component removed still raises the target value (less)", 1),
    ("steer-prompted-orth", "prompted_orth", "random", 1.62,
     "v_prompt with its v_int component removed still raises the target value", 1),
    ("value-neurons", "neurons_shared", "neurons_random", None,
     "amplifying the shared value neurons raises the target value's score", 1),
    ("ablation", "ablate_shared", "ablate_random", None,
     "ablating the value's shared axis lowers the target value's score", -1),
)
PAPER = {1.74: "+1.74 (Qwen2.5-7B, Δ target, 6-point)", 2.21: "+2.21", 0.47: "+0.47", 1.62: "+1.62"}


def administer_conditions(ctx: Context, lang: str, per_value: int, conditions: Sequence[str] | None,
                          folder: str) -> pd.DataFrame:
    """Score every value's items under every condition for every target value; write the per-item table
    ``tables/items_<lang>.csv`` and the per-target means into ``folder``; return the item table."""
    from ..evals.questionnaire import administer, steering_effect
    from ..plots import plt, savefig

    sec = ctx.dir(folder)
    items = pvq_items(lang, per_value)
    base = administer(ctx.lm, items, lang, batch_size=ctx.cfg.batch_size)  # once, shared by every value
    wanted = set(CONDITIONS if conditions is None else conditions)
    rows: list[dict[str, Any]] = []
    targets: list[dict[str, Any]] = []
    # Every target value's conditions in one call: per batch of items the unsteered pass is traced once and
    # each single-layer steer replays only the layers above it (one call per value traced it ten times).
    per_value: dict[str, dict[str, Any]] = {}
    for v in ctx.values:
        conds = direction_conditions(ctx, v, ablations=bool(wanted & set(ABLATION_CONDITIONS)))
        if wanted & set(NEURON_CONDITIONS):
            conds.update(neuron_conditions(ctx, v))
        per_value[v] = {k: x for k, x in conds.items() if k in wanted}
    sep = "\x1f"
    eff = steering_effect(ctx.lm, items, {f"{v}{sep}{c}": x for v, cs in per_value.items() for c, x in cs.items()},
                          lang=lang, targets={f"{v}{sep}{c}": v for v, cs in per_value.items() for c in cs},
                          batch_size=ctx.cfg.batch_size, baseline_results=base)
    for v, cs in per_value.items():
        res = {"baseline": eff.results["baseline"], **{c: eff.results[f"{v}{sep}{c}"] for c in cs}}
        rows += item_rows(res, v, lang=lang)
        targets += [{"lang": lang, "target": v, **r, "condition": r["condition"].split(sep, 1)[1]}
                    for r in eff.target_rows() if r["condition"].split(sep, 1)[0] == v]
    df = pd.DataFrame(rows)
    write_csv(sec / "tables" / f"items_{lang}.csv", df)
    tdf = pd.DataFrame(targets)
    write_csv(sec / "tables" / f"steering_effect_{lang}.csv", tdf)
    mean = tdf.groupby("condition")[["delta", "delta_others", "delta_vs_others"]].mean().reset_index()
    write_csv(sec / "tables" / f"mean_effect_{lang}.csv", mean)
    order = [c for c in CONDITIONS if c in set(mean["condition"])]
    m = mean.set_index("condition").loc[order]
    fig, ax = plt().subplots(figsize=(7, 3.8))
    x = np.arange(len(order))
    ax.bar(x - 0.2, m["delta"], 0.4, label="Δ target value")
    ax.bar(x + 0.2, m["delta_others"], 0.4, label="Δ other values")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks(x, order, rotation=30, ha="right")
    ax.set(ylabel="Δ expected score (6-point)",
           title=f"Questionnaire steering ({lang}), α={ctx.alpha:g}, layer {ctx.layer}")
    ax.legend(fontsize=8)
    savefig(fig, sec / "figures" / f"steering_effect_{lang}.png")
    return df


@register_section
class QuestionnaireSection(Section):
    name = "questionnaire"
    title = "Questionnaire (steerability)"
    about = ("PVQ-style portrait items scored by option log-probabilities, with and without steering, against a "
             "same-norm random direction, a random ablated direction and a same-size random neuron set. Paper "
             "(Qwen2.5-7B, 6-point scale): +1.74 intrinsic, +2.21 prompted, +0.47 intrinsic⊥, +1.62 prompted⊥.")
    requires = ("capability",)
    uses = ("layer", "seed", "batch_size", "top_k_percent", "angle_deg")
    reads = ("vectors.safetensors", "data/pvq.jsonl")
    writes = ("tables/items_en.csv", "tables/steering_effect_en.csv", "tables/mean_effect_en.csv",
              "figures/steering_effect_en.png", "summary.json")
    needs_alpha = True
    version = 2

    @dataclass
    class Config:
        pvq_items_per_value: int = 3  # of the 6 shipped per value
        neuron_beta: float = 4.0  # scale factor for value-neuron sets (β > 1 amplifies)

        def validate(self) -> None:
            if not 1 <= self.pvq_items_per_value <= 6:
                raise ConfigError("pvq_items_per_value must be in 1..6 (6 items per value are shipped)")

    quick: ClassVar[dict[str, Any]] = {"pvq_items_per_value": 2}

    def run(self, ctx: Context) -> dict[str, Any]:
        df = administer_conditions(ctx, "en", ctx.options.pvq_items_per_value, None, self.name)
        return {"lang": "en", "alpha": ctx.alpha, "layer": ctx.layer,
                "items": int(df[["item"]].drop_duplicates().shape[0]), "values": list(ctx.values)}

    def findings(self, files: SectionFiles) -> list[Finding]:
        items = files.table("items_en.csv")
        s = files.summary
        out = []
        for fid, cond, ctrl, paper, claim, direction in STEER_FINDINGS:
            kw = dict(id=fid, claim=claim, paper=PAPER.get(paper or -1, "causal effect (no number)"),
                      paper_effect=paper, direction=direction, section=self.name, unit="items (value × item)",
                      metric="Δ target − Δ other values, minus the same under the control (6-point scale)",
                      control={"random": "random direction of the same norm",
                               "neurons_random": "random neuron set of the same size in the same layers",
                               "ablate_random": "a random direction ablated at every layer"}[ctrl],
                      evidence=files.rel("tables", "items_en.csv"))
            if items is None or cond not in set(items["condition"]):
                out.append(Finding.untestable(f"condition {cond} was not run (no value vector / neuron set)", **kw))
                continue
            units = unit_contrast(items, cond, ctrl)
            f = steer_finding(units, seed=0, ours_prefix=f"{cond} vs {ctrl}", **kw)
            raw = units["y"].mean() if len(units) else np.nan
            f.extra = {"y_condition": round(float(raw), 4), "y_control": round(float(units["y_control"].mean()), 4)
                       if len(units) else None, "alpha": s.get("alpha")}
            f.ours += f"; Δ target − others under {cond} alone {raw:+.3f}"
            out.append(f)
        return out
