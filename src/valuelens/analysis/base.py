"""The section interface, the registry, the analysis configuration and the context sections run in.

A **section** is one registered class (:class:`Section`) that declares in one place:

* ``name``, ``title``, ``about`` — its folder under ``<run>/analyze/``, and how the report introduces it;
* ``Config`` — a dataclass of its own options (flat keys in ``--set key=value`` and config files);
* ``uses`` — options of *other* sections or of :class:`CommonConfig` its result depends on (with its own
  options and the hashes of the sections in ``requires`` they make its cache key);
* ``requires`` — sections whose results it needs (run first, e.g. ``capability`` chooses α);
* ``reads`` / ``writes`` — the files it reads and writes (documentation, shown by ``valuelens analyze --list``);
* :meth:`Section.run` — does the work, writes tables/figures into its folder, returns its summary (JSON);
* :meth:`Section.findings` — the paper's claims it checks, as :class:`~valuelens.stats.Finding` records computed
  from its own files only (so ``valuelens analyze RUN --findings-only`` can re-derive them without a model).

Example: a section is a class plus a registration::

    >>> from dataclasses import dataclass
    >>> from valuelens.analysis import Section, register_section
    >>> @register_section
    ... class NormsSection(Section):
    ...     name = "doc_norms"
    ...     title = "Vector norms"
    ...     about = "The norm of each value's prompted vector at the analysis layer."
    ...     @dataclass
    ...     class Config:
    ...         norm_scale: float = 1.0
    ...     def run(self, ctx):
    ...         return {v: float(ctx.vec(v, "prompted").norm()) * ctx.options.norm_scale for v in ctx.values}
    >>> "doc_norms" in registry()
    True
    >>> _ = unregister_section("doc_norms")
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Iterator
from dataclasses import MISSING, asdict, dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import ConfigError
from ..stats import Finding

__all__ = [
    "AnalyzeConfig",
    "CommonConfig",
    "Context",
    "Section",
    "SectionFiles",
    "register_section",
    "registry",
    "unregister_section",
]

ENTRY_POINT_GROUP = "valuelens.sections"


@dataclass
class CommonConfig:
    """Options shared by every section."""

    layer: int | None = None  # analysis layer; default: the layer chosen by extract
    seed: int = 0
    # Prompts per forward pass when scoring items and options (and held-out windows). 32 scores the 30 PVQ items
    # of a condition in one batch: 1.4x faster than 8 on 2 CPU cores (one common-prefix pass, larger matrix
    # products). Lower it for large vocabularies on small GPUs (the option pass holds [B, 18, vocab] logits).
    batch_size: int = 32
    gen_batch_size: int = 48  # free-form generation (steering, compliance)
    gen_bf16: bool | str = "auto"  # bf16 autocast for free-form generation where native (valuelens.precision)


@dataclass
class _NoOptions:
    pass


class SectionFiles:
    """Read access to a section's own folder (``<run>/analyze/<name>``) and to the run folder, for findings."""

    def __init__(self, run: Path, name: str) -> None:
        self.run = Path(run)
        self.name = name
        self.dir = self.run / "analyze" / name

    @property
    def summary(self) -> dict[str, Any]:
        p = self.dir / "summary.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def table(self, name: str) -> Any:
        """``tables/<name>`` as a DataFrame (None when absent)."""
        import pandas as pd

        p = self.dir / "tables" / name
        return pd.read_csv(p) if p.exists() else None

    def rel(self, *parts: str) -> str:
        return "/".join(("analyze", self.name, *parts))


class Section:
    """Base class of an analysis section (see the module docstring)."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    about: ClassVar[str] = ""
    Config: ClassVar[type] = _NoOptions
    uses: ClassVar[tuple[str, ...]] = ()
    requires: ClassVar[tuple[str, ...]] = ()
    reads: ClassVar[tuple[str, ...]] = ("vectors.safetensors",)
    writes: ClassVar[tuple[str, ...]] = ("summary.json",)
    needs_vectors: ClassVar[bool] = True  # needs at least one value with both an intrinsic and a prompted vector
    needs_alpha: ClassVar[bool] = False  # needs the capability guard's α > 0
    version: ClassVar[int] = 1  # bump when the outputs change meaning: cached results are then recomputed
    quick: ClassVar[dict[str, Any]] = {}  # option overrides of `--quick`
    # The findings' outcome is the judge's labels: untestable when the judge is not better than chance on
    # labelled chat answers (calibration.json, valuelens calibrate).
    judged: ClassVar[bool] = False

    def run(self, ctx: Context) -> dict[str, Any]:
        raise NotImplementedError

    def restore(self, ctx: Context, summary: dict[str, Any]) -> None:
        """Put what later sections need from this section's cached result back into ``ctx`` (default: nothing)."""

    def findings(self, files: SectionFiles) -> list[Finding]:
        """The paper's claims this section checks, from its own files (default: none)."""
        return []

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls.Config)] if is_dataclass(cls.Config) else []


_REGISTRY: dict[str, type[Section]] = {}
_ENTRY_POINTS_LOADED = False


def register_section(cls: type[Section]) -> type[Section]:
    """Class decorator: add a section to the registry (its ``name`` must be new and a valid folder name)."""
    if not cls.name or not cls.name.replace("_", "").isalnum():
        raise ConfigError(f"section {cls.__name__}: name must be letters, digits and '_', got {cls.name!r}")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ConfigError(f"an analysis section named {cls.name!r} is already registered")
    if not is_dataclass(cls.Config):
        raise ConfigError(f"section {cls.name}: Config must be a dataclass")
    for f in fields(cls.Config):
        if f.default is MISSING and f.default_factory is MISSING:  # type: ignore[misc]
            raise ConfigError(f"section {cls.name}: option {f.name} needs a default")
    _REGISTRY[cls.name] = cls
    return cls


def unregister_section(name: str) -> type[Section] | None:
    return _REGISTRY.pop(name, None)


def _load_entry_points() -> None:
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            obj = ep.load()
        except Exception as exc:  # a broken plugin must not break the built-in sections
            raise ConfigError(f"analysis section plugin {ep.name!r} ({ep.value}) failed to load: {exc}") from None
        if isinstance(obj, type) and issubclass(obj, Section) and obj.name not in _REGISTRY:
            register_section(obj)


def registry() -> dict[str, type[Section]]:
    """Name → section class, built-in sections first in report order, then plugins and user sections."""
    importlib.import_module("valuelens.analysis")  # registers the built-in sections

    _load_entry_points()
    return dict(_REGISTRY)


def _ordered(names: list[str], reg: dict[str, type[Section]]) -> list[str]:
    """``names`` plus everything they require, dependencies first (registry order otherwise)."""
    out: list[str] = []

    def visit(n: str, stack: tuple[str, ...]) -> None:
        if n in out:
            return
        if n in stack:
            raise ConfigError(f"analysis sections require each other in a cycle: {' -> '.join((*stack, n))}")
        if n not in reg:
            raise ConfigError(f"unknown analysis section {n!r}; sections: {', '.join(reg)}")
        for dep in reg[n].requires:
            visit(dep, (*stack, n))
        out.append(n)
    for n in sorted(names, key=list(reg).index):
        visit(n, ())
    return out


class AnalyzeConfig:
    """The options of every registered section plus :class:`CommonConfig`, given as one flat mapping.

    Each key belongs to exactly one place (a section's ``Config`` or the common options), so a config file, a
    ``--set`` override and ``AnalyzeConfig.quick(key=...)`` all use the same flat names. Unknown keys are an error
    naming the known ones. Options are read as attributes (``cfg.n_free``) or per section
    (``cfg.section("steering")``).
    """

    def __init__(self, common: CommonConfig, options: dict[str, Any], sections: list[str]) -> None:
        self.common = common
        self._options = options  # section name -> its Config instance
        self.sections = sections

    @classmethod
    def _owners(cls) -> dict[str, str]:
        owners: dict[str, str] = {f.name: "common" for f in fields(CommonConfig)}
        for name, sec in registry().items():
            for opt in sec.option_names():
                if opt in owners:
                    raise ConfigError(f"option {opt!r} is declared by both {owners[opt]!r} and section {name!r}")
                owners[opt] = name
        return owners

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None = None) -> AnalyzeConfig:
        d = dict(d or {})
        reg = registry()
        owners = cls._owners()
        sections = d.pop("sections", None)
        if sections is None:
            sections = list(reg)
        if isinstance(sections, str):
            sections = [s for s in sections.split(",") if s]
        unknown_s = [s for s in sections if s not in reg]
        if unknown_s:
            raise ConfigError(f"unknown analyze section(s) {', '.join(unknown_s)}; sections: {', '.join(reg)}")
        unknown = sorted(k for k in d if k not in owners)
        if unknown:
            raise ConfigError(f"unknown analyze config keys: {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(owners))})")
        per: dict[str, dict[str, Any]] = {}
        for k, v in d.items():
            per.setdefault(owners[k], {})[k] = v
        try:
            common = CommonConfig(**per.pop("common", {}))
            options = {name: sec.Config(**per.get(name, {})) for name, sec in reg.items()}
        except TypeError as exc:
            raise ConfigError(f"analyze config: {exc}") from None
        cfg = cls(common, options, list(sections))
        cfg.validate()
        return cfg

    @classmethod
    def quick(cls, **overrides: Any) -> AnalyzeConfig:
        """Small sweeps and few items for smoke runs (each section's ``quick`` overrides), then ``overrides``."""
        base: dict[str, Any] = {}
        for sec in registry().values():
            base.update(sec.quick)
        base.update(overrides)
        return cls.from_dict(base)

    def validate(self) -> None:
        for opts in self._options.values():
            check = getattr(opts, "validate", None)
            if check is not None:
                check()

    def section(self, name: str) -> Any:
        return self._options[name]

    def __getattr__(self, key: str) -> Any:
        if key.startswith("_") or key in ("common", "sections"):
            raise AttributeError(key)
        if hasattr(self.common, key):
            return getattr(self.common, key)
        for opts in self._options.values():
            if hasattr(opts, key) and key in {f.name for f in fields(opts)}:
                return getattr(opts, key)
        raise AttributeError(f"no analyze option {key!r}")

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping (every option, and ``sections``) — what ``from_dict`` accepts back."""
        out = asdict(self.common)
        for opts in self._options.values():
            out.update(asdict(opts))
        out["sections"] = list(self.sections)
        return out

    def section_hash(self, name: str, dep_hashes: dict[str, str]) -> str:
        """Cache key of a section's result: its version, its own options, the options it ``uses`` and the
        hashes of the sections it ``requires``."""
        sec = registry()[name]
        flat = self.to_dict()
        keys = sorted({*sec.option_names(), *sec.uses})
        missing = [k for k in keys if k not in flat]
        if missing:
            raise ConfigError(f"section {name} uses unknown options: {', '.join(missing)}")
        payload = {"section": name, "version": sec.version, "options": {k: flat[k] for k in keys},
                   "requires": {d: dep_hashes.get(d, "") for d in sec.requires}}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Context:
    """What a section runs with: the run folder, the options, the model, the vectors, the layer and the values
    that have both vectors, plus what earlier sections established (the guard's α and residual norms)."""

    run: Path
    cfg: AnalyzeConfig
    lm: Any  # LoadedModel
    vv: Any  # ValueVectors with decomposition
    layer: int
    values: list[str]
    extract_cfg: dict[str, Any]
    norms: np.ndarray | None = None
    alpha: float | None = None
    current: str = ""  # the section being run (for `options` and `dir`)
    state: dict[str, Any] | None = None  # free-form results later sections may use

    @property
    def options(self) -> Any:
        """The running section's own options."""
        return self.cfg.section(self.current)

    def dir(self, name: str | None = None) -> Path:
        p = self.run / "analyze" / (name or self.current)
        (p / "tables").mkdir(parents=True, exist_ok=True)
        (p / "figures").mkdir(parents=True, exist_ok=True)
        return p

    def vec(self, value: str, kind: str) -> torch.Tensor:
        return self.vv.get(value, kind)[self.vv.layer_row(self.layer)]

    def steer(self, v: torch.Tensor, alpha: float | None = None) -> list[Any]:
        """Activation addition of ``v`` at the analysis layer with relative strength α (default: the guard's)."""
        from ..evals.capability import relative_steer

        if self.norms is None:
            raise ConfigError("residual norms are unknown: the capability section must run first")
        a = self.alpha if alpha is None else alpha
        if a is None:
            raise ConfigError("no steering strength: the capability section must run first (or set alpha)")
        return [relative_steer(v, self.layer, a, self.norms)]


def iter_sections(names: list[str]) -> Iterator[type[Section]]:
    reg = registry()
    for n in _ordered(names, reg):
        yield reg[n]
