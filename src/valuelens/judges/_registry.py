"""Imports every built-in judge module so that each registers itself in ``JUDGES``."""

from __future__ import annotations

import importlib
import importlib.util

for _mod in ("detector", "llm", "lexicon"):
    # Only skip modules that do not exist; an import error inside one is a real bug and must surface.
    if importlib.util.find_spec(f"{__package__}.{_mod}") is not None:
        importlib.import_module(f"{__package__}.{_mod}")
