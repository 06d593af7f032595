"""Per-request steering for the server: parse ``"steer"`` fields and model aliases, resolve them to deltas.

A request asks for steering in two ways (both may be combined; the alias's steers come first):

* a body field ``"steer": {"value": "Benevolence", "kind": "prompted", "alpha": 0.1, "layer": 21}`` or a list
  of such objects (``kind``, ``layer`` optional: the server's default kind and the run's analysis layer);
* a model alias ``NAME+value@alpha[:kind]`` (several joined by ``+``), e.g. ``smollm2+benevolence@0.1`` or
  ``smollm2+power@-0.05:intrinsic``; ``NAME+value`` without ``@alpha`` uses the run's guard α.

α is relative, exactly as in the pipeline: each steer becomes
:func:`valuelens.evals.capability.relative_steer` (``h ← h + α·mean‖h_l‖·v̂``) with the run's residual norms,
and its delta is ``alpha · vector`` in float32 — the arithmetic of :func:`valuelens.hooks.add_vectors` — so a
served request steers with the same numbers as the library's steered ``generate``.

>>> parse_alias("smollm2+benevolence@0.1+power@-0.05:intrinsic")
('smollm2', [{'value': 'benevolence', 'alpha': 0.1}, {'value': 'power', 'alpha': -0.05, 'kind': 'intrinsic'}])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError

__all__ = ["RequestError", "ResolvedSteer", "SteerBank", "parse_alias"]


class RequestError(ConfigError):
    """A bad request: becomes an HTTP 4xx response in OpenAI's error shape."""

    def __init__(self, message: str, *, status: int = 400, param: str | None = None,
                 code: str | None = None, type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.param, self.code, self.type = status, param, code, type


@dataclass(frozen=True)
class ResolvedSteer:
    """One steer of a request, resolved: what to add where (``delta = alpha · vector``, float32 ``[D]``)."""

    value: str
    kind: str
    layer: int
    alpha: float
    delta: torch.Tensor

    def describe(self) -> dict[str, Any]:
        return {"value": self.value, "kind": self.kind, "layer": self.layer, "alpha": self.alpha}


def parse_alias(model: str) -> tuple[str, list[dict[str, Any]]]:
    """Split ``NAME+value@alpha[:kind]+…`` into the base name and steer specs (no validation of names)."""
    parts = str(model).split("+")
    base, specs = parts[0], []
    for p in parts[1:]:
        if not p:
            raise RequestError(f"empty steer in model alias {model!r}", param="model", code="model_not_found",
                               status=404)
        kind = None
        if ":" in p:
            p, kind = p.split(":", 1)
        alpha: float | None = None
        if "@" in p:
            p, a = p.split("@", 1)
            try:
                alpha = float(a)
            except ValueError:
                raise RequestError(f"model alias {model!r}: α {a!r} is not a number", param="model") from None
        spec: dict[str, Any] = {"value": p}
        if alpha is not None:
            spec["alpha"] = alpha
        if kind:
            spec["kind"] = kind
        specs.append(spec)
    return base, specs


class SteerBank:
    """The vectors a server can steer with, and the rules for resolving a request's steers.

    ``artifact``: a :class:`~valuelens.serving.artifacts.VectorArtifact` (or None: unsteered serving only).
    ``norms``: mean residual norm per layer (the unit of α). ``max_alpha``: the largest |α| a request may ask
    (a guard against requests that only produce garbage). ``max_steers``: steers per request.
    """

    def __init__(self, artifact: Any | None, norms: Sequence[float] | None, n_layers: int, *,
                 default_kind: str = "prompted", max_alpha: float = 2.0, max_steers: int = 8) -> None:
        self.artifact = artifact
        self.norms = None if norms is None else [float(x) for x in norms]
        self.n_layers = n_layers
        self.default_kind = default_kind
        self.max_alpha = float(max_alpha)
        self.max_steers = int(max_steers)
        if artifact is not None and self.norms is None:
            raise ConfigError("steering needs the residual norms of the model (the unit of α)")
        if artifact is not None and default_kind not in artifact.kinds:
            raise ConfigError(f"default kind {default_kind!r} is not in the vectors (kinds: "
                              f"{', '.join(artifact.kinds)})")
        self._cache: dict[tuple[str, str, int, float], ResolvedSteer] = {}

    @property
    def guard_alpha(self) -> float | None:
        return None if self.artifact is None else self.artifact.guard_alpha

    def aliases(self, base: str, alpha: float | None = None) -> list[str]:
        """Model names listed by ``/v1/models``: the base, then one alias per value at ``alpha`` (default: the
        run's guard α, else 0.1 — always written out in the alias, so a client sees what it gets)."""
        if self.artifact is None:
            return [base]
        a = alpha if alpha is not None else (self.guard_alpha if self.guard_alpha is not None else 0.1)
        out = [base]
        for v in self.artifact.values:
            if (v, self.default_kind) in self.artifact.vectors.vectors:
                out.append(f"{base}+{v.lower()}@{a:g}")
        return out

    def resolve(self, specs: Any, *, param: str = "steer") -> list[ResolvedSteer]:
        """Validate steer specs (a dict or a list of dicts) and resolve each to its delta."""
        if specs is None:
            return []
        if isinstance(specs, dict):
            specs = [specs]
        if not isinstance(specs, list):
            raise RequestError(f"'{param}' must be an object or a list of objects", param=param)
        if not specs:
            return []
        if self.artifact is None:
            raise RequestError("this server has no steering vectors (start it with --vectors RUN)", param=param)
        if len(specs) > self.max_steers:
            raise RequestError(f"at most {self.max_steers} steers per request, got {len(specs)}", param=param)
        return [self._resolve_one(s, param) for s in specs]

    def _resolve_one(self, spec: Any, param: str) -> ResolvedSteer:
        from ..values import get_value

        if not isinstance(spec, dict):
            raise RequestError(f"each '{param}' entry must be an object with value, alpha (kind, layer optional)",
                               param=param)
        unknown = set(spec) - {"value", "kind", "alpha", "layer"}
        if unknown:
            raise RequestError(f"unknown {param} field(s): {', '.join(sorted(unknown))} (use value, kind, alpha, "
                               "layer)", param=param)
        art = self.artifact
        try:
            value = get_value(str(spec.get("value", ""))).name
        except ConfigError as exc:
            raise RequestError(str(exc), param=f"{param}.value", code="unknown_value") from None
        kind = spec.get("kind") or self.default_kind
        if not isinstance(kind, str) or kind not in art.kinds:
            raise RequestError(f"unknown kind {kind!r}; this server's vectors have: {', '.join(art.kinds)}",
                               param=f"{param}.kind")
        if (value, kind) not in art.vectors.vectors:
            raise RequestError(f"no {kind} vector for {value} in this server's vectors (values: "
                               f"{', '.join(art.values)})", param=f"{param}.value", code="unknown_value")
        alpha = spec.get("alpha", self.guard_alpha)
        if alpha is None:
            raise RequestError("give 'alpha' (relative steering strength): this server's vectors have no "
                               "guard α to default to", param=f"{param}.alpha")
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not math.isfinite(alpha):
            raise RequestError(f"alpha must be a finite number, got {alpha!r}", param=f"{param}.alpha")
        if abs(alpha) > self.max_alpha:
            raise RequestError(f"|alpha| must be <= {self.max_alpha:g} (relative to the layer's mean residual "
                               f"norm), got {alpha:g}", param=f"{param}.alpha", code="alpha_out_of_range")
        layer = spec.get("layer", art.layer)
        if isinstance(layer, bool) or not isinstance(layer, int):
            raise RequestError(f"layer must be an integer, got {layer!r}", param=f"{param}.layer")
        if layer < 0:
            layer += self.n_layers
        if layer not in art.vectors.layers:
            raise RequestError(f"layer {layer} is not among the vectors' layers ({min(art.vectors.layers)}.."
                               f"{max(art.vectors.layers)})", param=f"{param}.layer")
        key = (value, kind, int(layer), float(alpha))
        hit = self._cache.get(key)
        if hit is None:
            st = art.steer(value, kind, float(alpha), int(layer), norms=self.norms)
            # add_vectors' arithmetic: alpha · vector, in float32
            delta = (st.alpha * st.vector.detach().to(torch.float32)).contiguous()
            hit = ResolvedSteer(value=value, kind=kind, layer=int(layer), alpha=float(alpha), delta=delta)
            if len(self._cache) < 4096:
                self._cache[key] = hit
        return hit
