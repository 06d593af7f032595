"""``valuelens analyze``: steps 7–9 of the value-mechanism pipeline, as a package of registered sections.

One module per section, each declaring its options, what it reads and writes, and the paper's claims it checks
(:class:`~valuelens.analysis.base.Section`)::

    capability     residual norms, α sweep with the capability guard (MC accuracy), chosen α
    vectors        cos(v_int, v_prompt) and the compliance direction, bootstrap CIs over responses
    neurons        value neurons: projection, top-k %, shared/unique labels, counts, overlaps, explanations
    questionnaire  PVQ-style items scored by option log-probability under each steer + controls
    dose           the questionnaire effect over α (steerability slopes) vs the random control
    steering       free-form answers under steering, judged: expression rate of the target value
    diversity      Distinct-n, EAD, semantic diversity of those answers; logit-lens entropy of each vector
    circumplex     PCA of the shared (and difference) axes, Procrustes R² vs a permutation baseline
    compliance     verifiable instructions with and without the compliance direction
    crosslingual   the questionnaire in other languages, steered by English vectors (multilingual models)
    agreement      the extract's judge vs other judges (kappa per value) and each judge's prompted-target check

Built-in sections are listed in :data:`BUILTIN`; a user's own section is one module with a
:func:`register_section` class (import it before running), or an entry point in the group
``valuelens.sections`` of another package (docs/extending.md). Steering strength everywhere:
``h ← h + α·mean‖h_l‖·v̂`` at the analysis layer, during prefill and every decoding step, α chosen once by the
capability guard; every steering condition has a control of the same norm (a random direction) and every neuron
set a random set of the same size.
"""

from __future__ import annotations

import importlib

from .base import (
    AnalyzeConfig,
    CommonConfig,
    Context,
    Section,
    SectionFiles,
    register_section,
    registry,
    unregister_section,
)
from .runner import derive_findings, run_analyze, write_findings

# Built-in sections, in report order (each module registers its section on import).
BUILTIN = ("capability", "vectors", "neurons", "questionnaire", "dose", "steering", "diversity", "circumplex",
           "compliance", "crosslingual", "agreement")
for _name in BUILTIN:
    importlib.import_module(f"{__name__}.{_name}")

__all__ = [
    "BUILTIN",
    "AnalyzeConfig",
    "CommonConfig",
    "Context",
    "Section",
    "SectionFiles",
    "derive_findings",
    "register_section",
    "registry",
    "run_analyze",
    "unregister_section",
    "write_findings",
]
