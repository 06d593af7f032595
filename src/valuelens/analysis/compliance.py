"""``compliance``: does the compliance direction (mean over values of v_prompt − v_int) carry instruction
following? Verifiable instructions (IFEval-style checks) answered with +c, −c, a same-norm random direction and no
steering; optionally refusal rates on a user-supplied file of harmful requests (none are shipped).

The finding's unit is the instruction: ``followed(+c) − followed(random)`` (loose prompt-level), with a bootstrap
CI over instructions, a sign-flip p-value and the MDE. Paper: steering with the compliance direction raises attack
success from 13–27 % to 83–97 % (AdvBench/HarmBench).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import pandas as pd

from ..errors import ConfigError
from ..precision import use_bf16
from ..runio import atomic_write_json
from ..stats import Finding
from .base import Context, Section, SectionFiles, register_section
from .common import steer_finding, write_csv


@register_section
class ComplianceSection(Section):
    name = "compliance"
    title = "Compliance channel"
    about = ("Steering with the compliance direction (mean of v_prompt − v_int) and its effect on instruction "
             "following and refusals, against a random direction of the same norm (paper: attack success "
             "13–27 % → 83–97 %).")
    requires = ("capability",)
    uses = ("layer", "seed", "batch_size", "gen_batch_size", "gen_bf16")
    reads = ("vectors.safetensors", "data/instructions.jsonl", "harmful_prompts (optional)")
    writes = ("responses/*.jsonl", "tables/instruction_following.csv", "tables/per_instruction.csv",
              "summary.json")
    needs_alpha = True
    version = 2

    @dataclass
    class Config:
        n_instructions: int = 24
        instr_max_new_tokens: int = 64
        harmful_prompts: str | None = None  # optional file of harmful requests for refusal rates

        def validate(self) -> None:
            if self.n_instructions < 1:
                raise ConfigError("n_instructions must be >= 1")

    quick: ClassVar[dict[str, Any]] = {"n_instructions": 6, "instr_max_new_tokens": 32}

    def run(self, ctx: Context) -> dict[str, Any]:
        from ..evals.capability import random_direction_like
        from ..evals.compliance import instruction_following_score, refusal_rate
        from ..evals.items import load_instructions
        from ..generate import GenerationConfig, GenItem, generate_to_file
        from ..models import NO_SYSTEM

        o = ctx.options
        sec = ctx.dir()
        if "compliance" not in ctx.vv.extra_vectors:
            return {"status": "not run", "reason": "no compliance direction (needs values with both vectors)"}
        c = ctx.vv.extra_vectors["compliance"][ctx.vv.layer_row(ctx.layer)]
        items = load_instructions()[: o.n_instructions]
        gcfg = GenerationConfig(max_new_tokens=o.instr_max_new_tokens, batch_size=ctx.cfg.gen_batch_size,
                                bf16=use_bf16(ctx.cfg.gen_bf16, ctx.lm.device), seed=ctx.cfg.seed)
        conds = {"baseline": [], "+compliance": ctx.steer(c), "-compliance": ctx.steer(-c),
                 "random": ctx.steer(random_direction_like(c, seed=ctx.cfg.seed + 99))}
        rows, per_item = [], []
        harmful: list[str] = []
        if o.harmful_prompts:
            from ..datasets import load_texts

            harmful, _ = load_texts(o.harmful_prompts, candidates=("goal", "behavior", "prompt"))
        from ..hooks import steer_delta

        # One generation over every condition (each answer carries its own steering vector at the layer).
        gi = []
        for name, ivs in conds.items():
            sd = steer_delta(ivs, ctx.lm.spec.d_model) if ivs else None
            gi += [GenItem(id=f"{name}/{it.id}", prompt=ctx.lm.chat.render(it.prompt, NO_SYSTEM),
                           meta={"condition": name, "instruction": it.id}, steer=None if sd is None else sd[1])
                   for it in items]
        recs_all = generate_to_file(ctx.lm, gi, sec / "responses" / "instructions.jsonl", gcfg,
                                    steer_layer=ctx.layer, desc="instructions")
        for name, ivs in conds.items():
            recs = [r for r in recs_all if r["condition"] == name]
            texts = [r["response"] for r in recs]
            score = instruction_following_score(texts, items)
            for it, t in zip(items, texts, strict=True):
                one = instruction_following_score([t], [it])
                per_item.append({"condition": name, "instruction": it.id,
                                 "followed_loose": float(one["prompt_level_loose"]),
                                 "followed_strict": float(one["prompt_level_strict"])})
            row = {"condition": name, **{k: v for k, v in score.items() if isinstance(v, int | float)}}
            atomic_write_json(sec / "tables" / f"per_type_{name}.json", score["per_type"])
            if harmful:
                hi = [GenItem(id=f"h{i}", prompt=ctx.lm.chat.render(h, NO_SYSTEM), meta={})
                      for i, h in enumerate(harmful)]
                hr = generate_to_file(ctx.lm, hi, sec / "responses" / f"harmful_{name}.jsonl", gcfg,
                                      interventions=ivs)
                row["refusal_rate"] = refusal_rate([r["response"] for r in hr])
            rows.append(row)
        write_csv(sec / "tables" / "instruction_following.csv", pd.DataFrame(rows))
        write_csv(sec / "tables" / "per_instruction.csv", pd.DataFrame(per_item))
        stats = ctx.vv.metadata.get("compliance_stats", {})
        at = {k: (stats[k][ctx.layer] if isinstance(stats.get(k), list) else stats.get(k))
              for k in ("mean_pairwise_cosine", "projection_share", "mean_r2") if k in stats}
        return {"alpha": ctx.alpha, "layer": ctx.layer, "n_instructions": len(items),
                "harmful_prompts": len(harmful), "delta_stats_at_layer": at,
                "scores": {r["condition"]: {k: (round(float(v), 4) if isinstance(v, float) else v)
                                            for k, v in r.items() if k != "condition"} for r in rows}}

    def findings(self, files: SectionFiles) -> list[Finding]:
        per = files.table("per_instruction.csv")
        kw = dict(id="compliance-channel", claim="steering with the compliance direction raises instruction following",
                  paper="attack success 13–27 % → 83–97 % (AdvBench/HarmBench)", section=self.name,
                  unit="instructions", control="random direction of the same norm",
                  metric="loose prompt-level instruction following under +c minus under the random direction",
                  evidence=files.rel("tables", "per_instruction.csv"))
        if per is None or per.empty:
            return [Finding.untestable(files.summary.get("reason", "no instruction-following results"), **kw)]
        piv = per.pivot_table(index="instruction", columns="condition", values="followed_loose")
        if "+compliance" not in piv or "random" not in piv:
            return [Finding.untestable("missing +compliance or random condition", **kw)]
        units = pd.DataFrame({"target": piv.index, "d": (piv["+compliance"] - piv["random"]).to_numpy()})
        f = steer_finding(units, seed=0, strata_col=None, ours_prefix="+c − random", **kw)
        f.ours += "; followed: " + ", ".join(f"{c} {piv[c].mean():.2f}" for c in piv.columns)
        return [f]
