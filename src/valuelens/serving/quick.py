"""Quick prompt-contrast vectors: a vector folder in seconds, to try serving and sharing without a full run.

For each value: the mean residual stream over the *prompt tokens* of shipped queries rendered with a system
prompt that asks for the value, minus the same queries rendered with no system turn (difference in means, as
in the pipeline, but over prompts instead of judged responses). Stored as kind ``prompted``. These are not the
paper's value vectors (no generation, no judge): use ``valuelens run`` for those. Tests and demos use them
because they are real directions of the real model that steer it measurably.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import torch

from ..models import NO_SYSTEM, LoadedModel

__all__ = ["quick_vectors"]


def quick_vectors(lm: LoadedModel, values: Sequence[str] = ("Benevolence", "Power"), *, n_queries: int = 8,
                  layers: Sequence[int] | None = None, default_layer: int | None = None,
                  norms: Sequence[float] | None = None, batch_size: int = 8) -> Any:
    """A :class:`~valuelens.serving.artifacts.VectorArtifact` of prompt-contrast vectors (kind ``prompted``).

    ``norms``: residual norms to store as the α unit (default: measured with
    :func:`valuelens.evals.capability.residual_norms`). ``default_layer``: default ⅔ of the depth.
    """
    from ..datasets import data_path
    from ..evals.capability import residual_norms
    from ..hooks import forward_capture
    from ..values import get_value
    from ..vectors import ValueVectors, diff_in_means
    from .artifacts import VectorArtifact

    layer_ids = lm.spec.check_layers(layers)
    queries = [json.loads(x)["text"] for x in data_path("queries.jsonl").read_text().splitlines() if x.strip()]
    queries = queries[:n_queries]
    prompts = [json.loads(x) for x in data_path("system_prompts.jsonl").read_text().splitlines() if x.strip()]

    def mean_acts(texts: list[str]) -> torch.Tensor:
        out = []
        for b in range(0, len(texts), batch_size):
            enc = lm.tokenizer(texts[b:b + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            acts = forward_capture(lm.model, enc["input_ids"], enc["attention_mask"], layers=layer_ids, spec=lm.spec)
            assert isinstance(acts, torch.Tensor)
            out.append(acts)
        return torch.cat(out)

    plain = mean_acts([lm.chat.render(q, NO_SYSTEM).text for q in queries])
    vv = ValueVectors(model_hash=lm.model_hash, n_layers=lm.spec.n_layers, d_model=lm.spec.d_model,
                      layers=layer_ids, judge="none (prompt contrast)")
    for value in values:
        name = get_value(value).name
        sys_prompts = [p["text"] for p in prompts if p["value"] == name][:n_queries] or [f"Always prioritise {name}."]
        texts = [lm.chat.render(q, sys_prompts[i % len(sys_prompts)]).text for i, q in enumerate(queries)]
        vv.set(name, "prompted", diff_in_means(mean_acts(texts), plain).float(), pos=len(texts), neg=len(queries))
    if norms is None:
        norms = [float(x) for x in residual_norms(lm)]
    layer = default_layer if default_layer is not None else layer_ids[(2 * len(layer_ids)) // 3]
    return VectorArtifact(vv, model_id=lm.name, default_layer=layer, residual_norms=list(norms),
                          info={"family": lm.spec.arch.family,
                                "made_from": {"quick_vectors": {"values": list(values), "n_queries": n_queries}}})
