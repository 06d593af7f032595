"""The analysis registry and AnalyzeConfig: strict parsing, validation, and which options each section's cached
result depends on."""

from __future__ import annotations

import pytest

from valuelens.analysis import BUILTIN, AnalyzeConfig, registry
from valuelens.analysis.base import _ordered
from valuelens.errors import ConfigError


def _hashes(cfg: AnalyzeConfig) -> dict[str, str]:
    out: dict[str, str] = {}
    for name in _ordered(list(registry()), registry()):
        out[name] = cfg.section_hash(name, out)
    return out


def test_registry_holds_the_builtin_sections_in_report_order() -> None:
    reg = registry()
    assert tuple(reg)[: len(BUILTIN)] == BUILTIN
    for name, sec in reg.items():
        assert sec.name == name and sec.title and sec.about and sec.writes
        for dep in sec.requires:
            assert list(reg).index(dep) < list(reg).index(name), f"{name} requires {dep}, registered later"
    for name in ("questionnaire", "dose", "steering", "compliance", "crosslingual"):
        assert "capability" in reg[name].requires and reg[name].needs_alpha, name


def test_every_option_belongs_to_exactly_one_place_and_round_trips() -> None:
    cfg = AnalyzeConfig.from_dict({})
    flat = cfg.to_dict()
    assert AnalyzeConfig.from_dict(flat).to_dict() == flat
    owners = AnalyzeConfig._owners()
    assert set(flat) - {"sections"} == set(owners)
    for name, sec in registry().items():  # a section's `uses` names real options
        assert set(sec.uses) <= set(owners), name


def test_hashes_change_exactly_where_an_option_is_used() -> None:
    base = _hashes(AnalyzeConfig.from_dict({}))
    dose = _hashes(AnalyzeConfig.from_dict({"dose_alphas": [0.05, 0.2]}))
    assert {n for n in base if base[n] != dose[n]} == {"dose"}
    guard = _hashes(AnalyzeConfig.from_dict({"mc_items": 40}))
    changed = {n for n in base if base[n] != guard[n]}
    # Everything that steers depends on the guard's α (through `requires`), nothing else does.
    assert changed == {"capability", "questionnaire", "dose", "steering", "diversity", "compliance", "crosslingual"}
    neuron = _hashes(AnalyzeConfig.from_dict({"top_k_percent": 2.0}))
    assert {n for n in base if base[n] != neuron[n]} == {"neurons", "questionnaire", "crosslingual"}
    layer = _hashes(AnalyzeConfig.from_dict({"layer": 3}))
    assert {n for n in base if base[n] == layer[n]} == {"agreement"}


def test_strict_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown analyze section"):
        AnalyzeConfig.from_dict({"sections": ["vibes"]})
    with pytest.raises(ConfigError, match="unknown analyze config keys: dose_alpha"):
        AnalyzeConfig.from_dict({"dose_alpha": [0.1]})  # a typo of dose_alphas
    with pytest.raises(ConfigError, match="top_k_percent"):
        AnalyzeConfig.from_dict({"top_k_percent": 0})
    with pytest.raises(ConfigError, match="unknown dose_conditions: ablate_shared"):
        AnalyzeConfig.from_dict({"dose_conditions": ["prompted", "ablate_shared"]})  # dose steers only
    with pytest.raises(ConfigError, match="unknown crosslingual_conditions: vibes"):
        AnalyzeConfig.from_dict({"crosslingual_conditions": ["vibes"]})
    with pytest.raises(ConfigError, match="pvq_items_per_value"):
        AnalyzeConfig.from_dict({"pvq_items_per_value": 7})
    q = AnalyzeConfig.quick(n_free=2)
    assert q.n_free == 2 and q.dose_values == 2 and q.section("steering").n_free == 2
    with pytest.raises(AttributeError):
        _ = q.no_such_option


def test_required_sections_are_pulled_in_first() -> None:
    reg = registry()
    assert _ordered(["diversity"], reg) == ["capability", "steering", "diversity"]
    assert _ordered(["circumplex", "agreement"], reg) == ["vectors", "circumplex", "agreement"]
