"""Schwartz's basic human values: taxonomy, circumplex geometry and the ValueEval'23 20 → 10 map.

>>> from valuelens.values import get_value, VALUES
>>> get_value("self direction").name
'Self-Direction'
>>> [v.name for v in VALUES][:3]
['Self-Direction', 'Stimulation', 'Hedonism']
>>> round(get_value("power").angle_deg)
144

Geometry. The ten values sit on a circle in the order of :data:`VALUE_NAMES` (Schwartz 1992, Fig. 1), one every
36°, starting with Self-Direction at 0°. Theory puts Tradition outside Conformity in a shared wedge; we keep
equal spacing because it is what a Procrustes fit to "the theoretical circle" can be tested against without
free parameters, and say so in every report.

ValueEval'23 map (20 level-2 categories → 10 basic values). The sub-values of the refined theory (Schwartz et
al. 2012) go to their parent. The two boundary values go where the original 1992 survey put their items:

* **Face** → **Power**: "preserving my public image" was a Power item in the Schwartz Value Survey; Face sits
  on the Power/Security border of the refined circle, on the Self-Enhancement side.
* **Humility** → **Tradition**: "humble" was a Tradition item in the SVS; Humility sits on the
  Conservation/Self-Transcendence border, on the Conservation side.

``Universalism: objectivity`` is a ValueEval addition (not in Schwartz 2012) that the dataset places under
Universalism; we follow it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

__all__ = [
    "HIGHER_ORDER",
    "VALUEEVAL_CATEGORIES",
    "VALUEEVAL_TO_SCHWARTZ",
    "VALUES",
    "VALUE_NAMES",
    "SchwartzValue",
    "circumplex_coordinates",
    "get_value",
    "resolve_values",
    "theoretical_cosine_matrix",
    "valueeval_category",
    "valueeval_to_schwartz_matrix",
]


@dataclass(frozen=True)
class SchwartzValue:
    name: str
    key: str
    definition: str
    higher_order: str
    index: int  # position in circumplex order, 0..9

    @property
    def angle_deg(self) -> float:
        return 36.0 * self.index

    @property
    def angle_rad(self) -> float:
        return math.radians(self.angle_deg)


_DEFS: list[tuple[str, str, str, str]] = [
    ("Self-Direction", "self_direction",
     "Independent thought and action: choosing, creating, exploring.", "Openness to Change"),
    ("Stimulation", "stimulation", "Excitement, novelty and challenge in life.", "Openness to Change"),
    ("Hedonism", "hedonism", "Pleasure and sensuous gratification for oneself.", "Openness to Change"),
    ("Achievement", "achievement",
     "Personal success through demonstrating competence according to social standards.", "Self-Enhancement"),
    ("Power", "power",
     "Social status and prestige, control or dominance over people and resources.", "Self-Enhancement"),
    ("Security", "security",
     "Safety, harmony and stability of society, of relationships, and of self.", "Conservation"),
    ("Conformity", "conformity",
     "Restraint of actions, inclinations and impulses likely to upset or harm others and violate social "
     "expectations or norms.", "Conservation"),
    ("Tradition", "tradition",
     "Respect, commitment and acceptance of the customs and ideas that one's culture or religion provides.",
     "Conservation"),
    ("Benevolence", "benevolence",
     "Preserving and enhancing the welfare of those with whom one is in frequent personal contact.",
     "Self-Transcendence"),
    ("Universalism", "universalism",
     "Understanding, appreciation, tolerance and protection for the welfare of all people and for nature.",
     "Self-Transcendence"),
]

VALUES: tuple[SchwartzValue, ...] = tuple(
    SchwartzValue(name=n, key=k, definition=d, higher_order=h, index=i) for i, (n, k, d, h) in enumerate(_DEFS)
)
VALUE_NAMES: tuple[str, ...] = tuple(v.name for v in VALUES)

HIGHER_ORDER: dict[str, tuple[str, ...]] = {
    "Openness to Change": ("Self-Direction", "Stimulation", "Hedonism"),
    "Self-Enhancement": ("Achievement", "Power"),
    "Conservation": ("Security", "Conformity", "Tradition"),
    "Self-Transcendence": ("Benevolence", "Universalism"),
}

#: The 20 level-2 categories of Touché23-ValueEval, in the dataset's column order.
VALUEEVAL_CATEGORIES: tuple[str, ...] = (
    "Self-direction: thought", "Self-direction: action", "Stimulation", "Hedonism", "Achievement",
    "Power: dominance", "Power: resources", "Face", "Security: personal", "Security: societal", "Tradition",
    "Conformity: rules", "Conformity: interpersonal", "Humility", "Benevolence: caring",
    "Benevolence: dependability", "Universalism: concern", "Universalism: nature", "Universalism: tolerance",
    "Universalism: objectivity",
)

VALUEEVAL_TO_SCHWARTZ: dict[str, str] = {
    "Self-direction: thought": "Self-Direction",
    "Self-direction: action": "Self-Direction",
    "Stimulation": "Stimulation",
    "Hedonism": "Hedonism",
    "Achievement": "Achievement",
    "Power: dominance": "Power",
    "Power: resources": "Power",
    "Face": "Power",  # boundary value: SVS item "preserving my public image" was a Power item
    "Security: personal": "Security",
    "Security: societal": "Security",
    "Tradition": "Tradition",
    "Conformity: rules": "Conformity",
    "Conformity: interpersonal": "Conformity",
    "Humility": "Tradition",  # boundary value: SVS item "humble" was a Tradition item
    "Benevolence: caring": "Benevolence",
    "Benevolence: dependability": "Benevolence",
    "Universalism: concern": "Universalism",
    "Universalism: nature": "Universalism",
    "Universalism: tolerance": "Universalism",
    "Universalism: objectivity": "Universalism",
}


def _norm(s: str) -> str:
    return re.sub(r"[^a-z]", "", s.lower())


_ALIASES: dict[str, str] = {}
for _v in VALUES:
    _ALIASES[_norm(_v.name)] = _v.name
    _ALIASES[_norm(_v.key)] = _v.name
# Common alternative spellings and adjectives seen in papers and prompts.
for _alias, _name in {
    "selfdirected": "Self-Direction", "autonomy": "Self-Direction", "independence": "Self-Direction",
    "sd": "Self-Direction", "stimulating": "Stimulation", "hedonistic": "Hedonism", "pleasure": "Hedonism",
    "achieving": "Achievement", "success": "Achievement", "powerful": "Power", "safety": "Security",
    "conforming": "Conformity", "traditional": "Tradition", "traditions": "Tradition",
    "benevolent": "Benevolence", "universalist": "Universalism", "universal": "Universalism",
}.items():
    _ALIASES[_norm(_alias)] = _name


def get_value(name: str | SchwartzValue) -> SchwartzValue:
    """Look a value up by name, key or a common spelling (case, spaces, hyphens ignored).

    Raises :class:`ConfigError` listing the valid names for anything unknown.
    """
    if isinstance(name, SchwartzValue):
        return name
    canonical = _ALIASES.get(_norm(str(name)))
    if canonical is None:
        raise ConfigError(f"unknown value {name!r}; valid values: {', '.join(VALUE_NAMES)}")
    return VALUES[VALUE_NAMES.index(canonical)]


def resolve_values(names: str | list[str] | tuple[str, ...] | None) -> list[SchwartzValue]:
    """Resolve a list (or comma-separated string, or ``"all"``/``None``) of value names, keeping order."""
    if names is None or names == "all" or names == ["all"]:
        return list(VALUES)
    if isinstance(names, str):
        names = [n for n in names.split(",") if n.strip()]
    out: list[SchwartzValue] = []
    for n in names:
        v = get_value(n.strip())
        if v not in out:
            out.append(v)
    if not out:
        raise ConfigError("no values given")
    return out


def valueeval_category(name: str) -> str:
    """Canonical ValueEval'23 level-2 category for a name (case/spacing-insensitive)."""
    key = _norm(name)
    for c in VALUEEVAL_CATEGORIES:
        if _norm(c) == key:
            return c
    raise ConfigError(f"unknown ValueEval category {name!r}; valid: {', '.join(VALUEEVAL_CATEGORIES)}")


def valueeval_to_schwartz_matrix() -> np.ndarray:
    """0/1 matrix ``[20, 10]``: entry (c, v) = 1 when category c maps to value v."""
    m = np.zeros((len(VALUEEVAL_CATEGORIES), len(VALUES)), dtype=np.int64)
    for i, c in enumerate(VALUEEVAL_CATEGORIES):
        m[i, VALUE_NAMES.index(VALUEEVAL_TO_SCHWARTZ[c])] = 1
    return m


def circumplex_coordinates() -> np.ndarray:
    """Theoretical 2-D positions ``[10, 2]`` on the unit circle, in :data:`VALUE_NAMES` order."""
    a = np.array([v.angle_rad for v in VALUES])
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def theoretical_cosine_matrix() -> np.ndarray:
    """``[10, 10]`` cosine of the angle between values on the theoretical circle (neighbours +, opposites −)."""
    c = circumplex_coordinates()
    return c @ c.T
