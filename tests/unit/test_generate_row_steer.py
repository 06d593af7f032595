"""Items steered differently (or not at all) share a generation batch and get what steering each alone gives."""

from __future__ import annotations

import pytest
import torch

from valuelens.errors import ConfigError
from valuelens.generate import GenerationConfig, GenItem, generate_to_file
from valuelens.hooks import Steer
from valuelens.testing import tiny_chat_lm


def test_per_item_steering_equals_steering_each_item_alone(tmp_path) -> None:
    lm = tiny_chat_lm()
    torch.manual_seed(0)
    v = torch.randn(lm.spec.d_model) * 3.0
    qs = ["Should I move abroad?", "Is it fine to skip a family tradition?", "How do I ask for a raise?"]
    steers = [v, None, -v]
    cfg = GenerationConfig(max_new_tokens=8, batch_size=3)
    items = [GenItem(id=f"q{i}", prompt=lm.chat.render(q), meta={"i": i}, steer=s)
             for i, (q, s) in enumerate(zip(qs, steers, strict=True))]
    mixed = generate_to_file(lm, items, tmp_path / "mixed.jsonl", cfg, steer_layer=2)
    for i, (q, s) in enumerate(zip(qs, steers, strict=True)):
        ivs = [] if s is None else [Steer(s, (2,), 1.0)]
        alone = generate_to_file(lm, [GenItem(id="x", prompt=lm.chat.render(q), meta={})],
                                 tmp_path / f"alone{i}.jsonl", cfg, interventions=ivs)
        assert mixed[i]["response_ids"] == alone[0]["response_ids"], i
    assert mixed[0]["response_ids"] != mixed[2]["response_ids"]  # opposite pushes, different answers
    assert "steer" not in mixed[0]  # the vector is not written to the record
    with pytest.raises(ConfigError, match="steer_layer"):
        generate_to_file(lm, items, tmp_path / "x.jsonl", cfg)
