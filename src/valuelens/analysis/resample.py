"""Value vectors recomputed from resampled responses: the bootstrap and permutation machinery behind the findings
about the vectors themselves (distinct mechanisms, compliance direction, circumplex).

The unit is the **response**: a bootstrap resample draws the run's responses with replacement (within each
condition × prompted value, so every group keeps its size), and every value vector at the analysis layer is
recomputed as a weighted difference in means. A permutation null shuffles the expressing / not-expressing labels
within each (value, condition) group: the vectors then carry no value information, only sampling noise — the
control every vector statistic is compared with.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .base import Context

__all__ = ["LayerData", "load_layer_data", "resampled_vectors"]

Key = tuple[str, str]  # (value, condition)


@dataclass
class LayerData:
    """Mean response activations at one layer and the label groups of the run.

    ``x``: ``[N, D]`` float64, one row per response with activations; ``groups``: ``(value, condition) →
    (pos_rows, neg_rows)`` as row indices into ``x``; ``strata``: one label per row (condition, or
    ``prompted/<value>``), the cells a bootstrap resamples within.
    """

    x: np.ndarray
    groups: dict[Key, tuple[np.ndarray, np.ndarray]]
    strata: np.ndarray
    layer: int

    @property
    def n(self) -> int:
        return int(self.x.shape[0])

    def vectors(self, weights: np.ndarray | None = None,
                groups: dict[Key, tuple[np.ndarray, np.ndarray]] | None = None) -> dict[Key, np.ndarray]:
        """Difference in means per group, each response weighted by ``weights`` (bootstrap counts; default 1).
        A group left without weight on one side gives NaNs."""
        w = np.ones(self.n) if weights is None else weights
        out = {}
        for key, (pos, neg) in (groups or self.groups).items():
            wp, wn = w[pos], w[neg]
            sp, sn = wp.sum(), wn.sum()
            if sp == 0 or sn == 0:
                out[key] = np.full(self.x.shape[1], np.nan)
                continue
            out[key] = wp @ self.x[pos] / sp - wn @ self.x[neg] / sn
        return out


def load_layer_data(ctx: Context) -> LayerData:
    """The analysis layer's activations and label groups of ``ctx.run`` (cached on the context)."""
    state = ctx.state if ctx.state is not None else {}
    ctx.state = state
    cached = state.get("layer_data")
    if cached is not None and cached.layer == ctx.layer:
        return cached
    from ..extract import layer_groups

    x, idx_groups, strata = layer_groups(ctx.run, ctx.extract_cfg, ctx.vv.model_hash, ctx.vv.layer_row(ctx.layer),
                                         ctx.values, ctx.lm.spec.d_model)
    data = LayerData(x=x, groups=idx_groups, strata=strata, layer=ctx.layer)
    state["layer_data"] = data
    return data


def resampled_vectors(data: LayerData, n: int, *, seed: int, kind: str) -> Iterator[dict[Key, np.ndarray]]:
    """``n`` sets of value vectors: ``kind="bootstrap"`` (responses resampled within strata) or ``"null"``
    (expressing labels permuted within each group)."""
    rng = np.random.default_rng(seed)
    cells = [np.flatnonzero(data.strata == s) for s in dict.fromkeys(data.strata.tolist())]
    for _ in range(n):
        if kind == "bootstrap":
            idx = np.concatenate([c[rng.integers(0, len(c), len(c))] for c in cells]) if cells else np.zeros(0, int)
            yield data.vectors(np.bincount(idx, minlength=data.n).astype(np.float64))
        elif kind == "null":
            perm = {}
            for key, (pos, neg) in data.groups.items():
                pooled = rng.permutation(np.concatenate([pos, neg]))
                perm[key] = (pooled[: len(pos)], pooled[len(pos):])
            yield data.vectors(groups=perm)
        else:
            raise ValueError(f"kind must be 'bootstrap' or 'null', got {kind!r}")


def distribution(data: LayerData, stat: Callable[[dict[Key, np.ndarray]], dict[str, float]], n: int, *,
                 seed: int) -> list[dict[str, Any]]:
    """Rows ``{"kind": "bootstrap"|"null", "rep": i, **stat(vectors)}`` for ``n`` resamples of each kind."""
    rows: list[dict[str, Any]] = []
    for kind, s in (("bootstrap", seed), ("null", seed + 1)):
        for i, vecs in enumerate(resampled_vectors(data, n, seed=s, kind=kind)):
            rows.append({"kind": kind, "rep": i, **stat(vecs)})
    return rows
