"""AnalyzeConfig: strict parsing, validation, and which config fields each section's cache depends on."""

from __future__ import annotations

import dataclasses

import pytest

from valuelens.analyze import SECTION_FIELDS, SECTIONS, AnalyzeConfig
from valuelens.errors import ConfigError


def test_every_field_is_claimed_by_a_section_and_every_section_has_fields() -> None:
    fields = {f.name for f in dataclasses.fields(AnalyzeConfig)} - {"sections"}
    claimed = set().union(*SECTION_FIELDS.values())
    assert fields == claimed  # a new option must say which sections' cached results it invalidates
    assert set(SECTION_FIELDS) == set(SECTIONS)
    # Everything that steers depends on the guard's choice of α.
    for name in ("questionnaire", "dose", "steering", "diversity", "compliance", "crosslingual"):
        assert set(SECTION_FIELDS["capability"]) <= set(SECTION_FIELDS[name]), name


def test_strict_config_errors() -> None:
    with pytest.raises(ConfigError, match="unknown analyze section"):
        AnalyzeConfig.from_dict({"sections": ["vibes"]})
    with pytest.raises(ConfigError):
        AnalyzeConfig.from_dict({"dose_alpha": [0.1]})  # a typo of dose_alphas
    with pytest.raises(ConfigError, match="top_k_percent"):
        AnalyzeConfig.from_dict({"top_k_percent": 0})
    with pytest.raises(ConfigError, match="unknown dose_conditions: ablate_shared"):
        AnalyzeConfig.from_dict({"dose_conditions": ["prompted", "ablate_shared"]})  # dose steers only
    with pytest.raises(ConfigError, match="unknown crosslingual_conditions: vibes"):
        AnalyzeConfig.from_dict({"crosslingual_conditions": ["vibes"]})
    q = AnalyzeConfig.quick(n_free=2)
    assert q.n_free == 2 and q.dose_values == 2
