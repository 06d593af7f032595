"""Option scoring (the questionnaire's inner loop): the padded one-row-per-option pass at 8 prompts per batch
(before session 20) against the option tree at 8 and at 32 prompts per batch, on the same items and conditions.

    .venv/bin/python benchmarks/bench_scoring.py                 # SmolLM2, 30 PVQ items, 9 conditions
    .venv/bin/python benchmarks/bench_scoring.py --tiny --repeats 1

Conditions: the unsteered model, 4 directions ablated at every layer (full passes, as the questionnaire's
ablation / neuron controls) and 4 single-layer steers (replayed from their layer). Ratios are per repeat against
the padded/8 baseline measured moments apart (median over repeats); ``max_abs_diff`` is the largest difference
of any option's log-probability from the baseline's (the layouts must agree).
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from _common import finish, interleaved, machine_note, median, paired_ratio, table
from valuelens.evals import scoring


@contextlib.contextmanager
def _layout(packed: bool) -> Iterator[None]:
    real = scoring.tree_mask_ok
    scoring.tree_mask_ok = (lambda model, length=0: real(model, length)) if packed else (lambda model, length=0: False)
    try:
        yield
    finally:
        scoring.tree_mask_ok = real


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tiny", action="store_true", help="a tiny random chat model (smoke test)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from valuelens.evals.items import load_pvq, pvq_scale
    from valuelens.evals.questionnaire import item_prompt
    from valuelens.hooks import Ablate, Steer

    if args.tiny:
        from valuelens.testing import tiny_chat_lm

        lm = tiny_chat_lm()
    else:
        from valuelens.models import load_model

        lm = load_model("smollm2")
    q, opts = pvq_scale("en")
    items = load_pvq("en")[:60:2]
    prompts = [lm.chat.render(item_prompt(it, q)) for it in items]
    options = [list(opts)] * len(prompts)
    g = torch.Generator().manual_seed(0)
    vs = [torch.randn(lm.spec.d_model, generator=g) for _ in range(4)]
    layer = lm.spec.n_layers * 2 // 3
    conds: dict[str, Any] = {"base": []}
    conds.update({f"ablate{i}": [Ablate(v)] for i, v in enumerate(vs)})
    conds.update({f"steer{i}": [Steer(v / v.norm() * 3, (layer,), 1.0)] for i, v in enumerate(vs)})

    def run(packed: bool, bs: int) -> Any:
        def call() -> Any:
            with _layout(packed):
                return scoring.option_logprobs_conditions(lm, prompts, options, conds, batch_size=bs)
        return call

    methods = {"padded, batch 8": run(False, 8), "tree, batch 8": run(True, 8), "tree, batch 32": run(True, 32)}
    times, results = interleaved(methods, args.repeats, progress=print)
    base = results["padded, batch 8"]
    rows = []
    for name in methods:
        diff = max(float(np.abs(a.sum - b.sum).max()) for c in conds for a, b in zip(results[name][c], base[c],
                                                                                         strict=True))
        rows.append({"method": name, "median_s": median(times[name]),
                     "ratio_vs_padded8": paired_ratio(times, name, "padded, batch 8"), "max_abs_diff": diff})
    res = {"machine": machine_note(), "items": len(prompts), "conditions": len(conds), "rows": rows}
    text = table(["method", "median s", "ratio vs padded/8", "max |Δ log p|"],
                 [[r["method"], r["median_s"], r["ratio_vs_padded8"], r["max_abs_diff"]] for r in rows])
    return finish(res, text, args.json)


if __name__ == "__main__":
    main()
