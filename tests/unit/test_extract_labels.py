"""How judged responses become the expressing / non-expressing groups of a value vector."""

from __future__ import annotations

import pytest

from valuelens.errors import ConfigError
from valuelens.extract import ExtractConfig, label_groups


def _resp(i: int, cond: str = "intrinsic", target: str | None = None) -> dict:
    return {"id": f"r{i}", "condition": cond, "target_value": target}


def test_judge_mode_uses_binary_labels_and_counts_invalid():
    cfg = ExtractConfig.from_dict({"values": ["Power", "Hedonism"]})
    responses = [_resp(0), _resp(1), _resp(2, "prompted", "Power")]
    judgments = {
        "r0": {"labels": {"Power": 1, "Hedonism": None}, "scores": {"Power": 0.9, "Hedonism": None}},
        "r1": {"labels": {"Power": 0, "Hedonism": 1}, "scores": {"Power": 0.1, "Hedonism": 0.7}},
        "r2": {"labels": {"Power": 1, "Hedonism": 0}, "scores": {"Power": 0.8, "Hedonism": 0.2}},
    }
    g = label_groups(cfg, responses, judgments)
    assert g[("Power", "intrinsic")] == {"pos": ["r0"], "neg": ["r1"], "invalid": []}
    assert g[("Hedonism", "intrinsic")] == {"pos": ["r1"], "neg": [], "invalid": ["r0"]}
    # Prompted responses count only for their target value.
    assert g[("Power", "prompted")] == {"pos": ["r2"], "neg": [], "invalid": []}
    assert g[("Hedonism", "prompted")] == {"pos": [], "neg": [], "invalid": []}


def test_rank_mode_splits_by_score_deterministically():
    cfg = ExtractConfig.from_dict({"values": ["Power"], "label_mode": "rank", "rank_fraction": 0.4})
    scores = [0.5, 0.9, 0.1, 0.5, 0.3]
    responses = [_resp(i) for i in range(5)]
    judgments = {f"r{i}": {"labels": {"Power": 1}, "scores": {"Power": s}} for i, s in enumerate(scores)}
    g = label_groups(cfg, responses, judgments)[("Power", "intrinsic")]
    # 5 × 0.4 = 2 per side; the middle one is dropped; ties (r0, r3 at 0.5) broken by id.
    assert g["neg"] == ["r2", "r4"] and g["pos"] == ["r3", "r1"]
    with pytest.raises(ConfigError, match="rank_fraction"):
        ExtractConfig.from_dict({"label_mode": "rank", "rank_fraction": 0.7})
    with pytest.raises(ConfigError, match="label_mode"):
        ExtractConfig.from_dict({"label_mode": "vibes"})
