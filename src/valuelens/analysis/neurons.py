"""``neurons``: value neurons — MLP neurons whose output columns write into the plane span(shared axis, difference
axis) — with their shared / intrinsic-unique / prompted-unique labels, counts, overlaps and top-activating
contexts (MISSION.md §2 step 7). Their causal test (amplify the shared set vs a random set of the same size) is a
condition of the ``questionnaire`` section."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..errors import ConfigError
from .base import Context, Section, register_section


@register_section
class NeuronsSection(Section):
    name = "neurons"
    title = "Value neurons"
    about = ("MLP neurons whose output columns project most onto span(shared axis, difference axis); top-k % "
             "kept and labelled shared / intrinsic-unique / prompted-unique by the 30° rule, with a random-neuron "
             "control of equal size (its causal test is in the questionnaire section).")
    uses = ("layer", "batch_size")
    reads = ("vectors.safetensors", "responses/*.jsonl")
    writes = ("tables/neurons.csv", "tables/neuron_counts.csv", "tables/neuron_overlap.csv",
              "tables/neuron_explanations.csv", "summary.json")

    @dataclass
    class Config:
        top_k_percent: float = 1.0
        angle_deg: float = 30.0
        neuron_explain: int = 3  # neurons explained per value (top shared at the layer)

        def validate(self) -> None:
            if not 0 < self.top_k_percent <= 100:
                raise ConfigError("top_k_percent must be in (0, 100]")
            if not 0 < self.angle_deg < 90:
                raise ConfigError("angle_deg must be in (0, 90)")

    quick: ClassVar[dict[str, Any]] = {"neuron_explain": 1}

    def run(self, ctx: Context) -> dict[str, Any]:
        from ..extract import load_responses
        from ..neurons import (
            neuron_sets,
            neuron_table,
            summarize,
            top_activating_contexts,
            write_neuron_outputs,
        )

        o = ctx.options
        sec = ctx.dir()
        table = neuron_table(ctx.lm, ctx.vv, values=ctx.values, top_k_percent=o.top_k_percent,
                             angle_deg=o.angle_deg)
        summ = summarize(table)
        records = [r for r in load_responses(ctx.run) if r["response_ids"]][:64]
        expl: list[dict[str, Any]] = []
        at_layer = table[(table["layer"] == ctx.layer) & (table["label"] == "shared")]
        owners: dict[int, list[str]] = {}  # neuron -> the values it is explained for
        for v in ctx.values:
            top = at_layer[at_layer["value"] == v].sort_values("score", ascending=False).head(o.neuron_explain)
            for n in top["neuron"].tolist():
                owners.setdefault(int(n), []).append(v)
        if owners:  # one pass over the responses for every value's neurons
            for e in top_activating_contexts(ctx.lm, records, {ctx.layer: sorted(owners)}, k=5, window=8,
                                             batch_size=ctx.cfg.batch_size):
                for v in owners.get(int(e["neuron"]), []):
                    expl.append({"value": v, **e})
        write_neuron_outputs(sec / "tables", table, summ, expl)
        counts = summ["counts"]
        by_label = counts.groupby("label")["n"].sum().to_dict() if len(counts) else {}
        sizes = {v: {lab: int(sum(len(x) for x in neuron_sets(table, v, lab).values()))
                     for lab in ("shared", "intrinsic_unique", "prompted_unique")} for v in ctx.values}
        return {"n_selected": len(table), "by_label": {k: int(x) for k, x in by_label.items()},
                "set_sizes": sizes, "top_k_percent": o.top_k_percent, "angle_deg": o.angle_deg,
                "explained_neurons": len({(e.get("layer"), e.get("neuron")) for e in expl})}
