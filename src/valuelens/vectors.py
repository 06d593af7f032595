"""Value vectors: difference in means, their decomposition, storage and export (MISSION.md §2, steps 5–6).

Pure numerics on torch tensors; nothing here loads a model. Shapes are written jaxtyping-style in the
docstrings: ``[B, L, D]`` = batch × layers × d_model, ``[S, L, D]`` = values × layers × d_model.

Layer convention. Row ``i`` of an ``[L, D]`` vector belongs to the model layer ``layers[i]`` (see
:class:`ValueVectors`), a **0-based decoder-block index**: the residual stream at the *output* of block ``l``
(Hugging Face ``hidden_states[l + 1]``). This is also llama.cpp's convention for control vectors
(``direction.l`` is added to the output of block ``l``), so export needs no index shift.

Definitions (each pinned by a hand-computed test in ``tests/unit/test_vectors.py``):

* difference in means ``v = mean(expressing) − mean(non-expressing)``, accumulated in float64;
* ``orthogonalize(a, b) = a − (⟨a,b⟩/⟨b,b⟩)·b`` per layer (zero ``b`` → ``a`` unchanged, flagged);
* SVD of the ``D × 2`` matrix ``[v_int, v_prompt]`` per layer: first left singular vector = shared axis with
  ``⟨u_shared, v_int + v_prompt⟩ > 0``; second = difference axis, ``u_int`` with ``⟨u_int, v_int − v_prompt⟩ > 0``,
  ``u_prompt = −u_int``;
* compliance direction ``c = mean_s δ_s`` with ``δ_s = v_prompt[s] − v_int[s]`` and the statistics in
  :class:`ComplianceStats`.

>>> import torch
>>> v_int, v_prompt = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 3.0])
>>> ax = svd_axes(v_int, v_prompt)
>>> [round(x, 4) for x in ax.shared.tolist()], [round(x, 4) for x in ax.diff_int.tolist()]
([0.7071, 0.7071], [0.7071, -0.7071])
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from .errors import ConfigError, DataError
from .runio import atomic_path
from .values import VALUE_NAMES, get_value

__all__ = [
    "CONDITIONS",
    "ComplianceStats",
    "GroupMeans",
    "MeanCount",
    "Orthogonalized",
    "SVDAxes",
    "ValueVectors",
    "compliance_direction",
    "cosine_by_layer",
    "diff_in_means",
    "diff_in_means_from_groups",
    "export_control_vector_gguf",
    "norms_by_layer",
    "orthogonalize",
    "svd_axes",
]

#: The two generation conditions of the pipeline.
CONDITIONS: tuple[str, ...] = ("intrinsic", "prompted")

FORMAT_NAME = "valuelens.value_vectors"
FORMAT_VERSION = "1"
_NAME_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def _version() -> str:
    from . import __version__

    return __version__


# ----------------------------------------------------------------------------------------------------------
# Running means
# ----------------------------------------------------------------------------------------------------------


class MeanCount(NamedTuple):
    """A group mean ``[L, D]`` (float64) with the number of examples behind it."""

    mean: Tensor
    count: int


class GroupMeans:
    """Running per-group sums and counts of ``[L, D]`` activations, in float64.

    Memory is one ``[L, D]`` float64 sum per group, independent of the number of texts added.

    >>> import torch
    >>> gm = GroupMeans()
    >>> gm.add(torch.ones(3, 2, 4), ["yes", "no", "yes"])
    >>> gm.add(3 * torch.ones(1, 2, 4), ["no"])
    >>> gm.count("no"), gm.mean("no")[0, 0].item()
    (2, 2.0)
    """

    def __init__(self) -> None:
        self._sums: dict[Hashable, Tensor] = {}
        self._counts: dict[Hashable, int] = {}
        self._shape: tuple[int, int] | None = None

    # -- accumulation ------------------------------------------------------------------------------------
    def add(self, x: Tensor, group_ids: Sequence[Hashable] | Tensor) -> None:
        """Add a batch ``x: Float[Tensor, "B L D"]``; ``group_ids[b]`` names the group of row ``b``.

        ``group_ids`` may be a list (any hashable ids, e.g. value names or booleans) or a 1-D tensor.
        """
        if x.ndim != 3:
            raise ConfigError(f"GroupMeans.add expects a [B, L, D] tensor, got shape {tuple(x.shape)}")
        ids = group_ids.tolist() if isinstance(group_ids, Tensor) else list(group_ids)
        if len(ids) != x.shape[0]:
            raise ConfigError(f"GroupMeans.add: {len(ids)} group ids for a batch of {x.shape[0]}")
        self._check_shape((int(x.shape[1]), int(x.shape[2])))
        if not torch.isfinite(x).all():
            raise DataError("GroupMeans.add: activations contain NaN or inf")
        x64 = x.detach().to(device="cpu", dtype=torch.float64)
        order: dict[Hashable, list[int]] = {}
        for i, g in enumerate(ids):
            order.setdefault(g, []).append(i)
        for g, rows in order.items():
            s = x64[rows].sum(dim=0)
            self._accumulate(g, s, len(rows))

    def add_sum(self, group: Hashable, total: Tensor, count: int) -> None:
        """Add a pre-reduced sum ``total: [L, D]`` of ``count`` examples (e.g. from a hook's running sums)."""
        if total.ndim != 2:
            raise ConfigError(f"GroupMeans.add_sum expects an [L, D] sum, got shape {tuple(total.shape)}")
        if count < 0:
            raise ConfigError(f"GroupMeans.add_sum: negative count {count}")
        self._check_shape((int(total.shape[0]), int(total.shape[1])))
        self._accumulate(group, total.detach().to(device="cpu", dtype=torch.float64), int(count))

    def merge(self, other: GroupMeans) -> None:
        """Add every group of ``other`` into this accumulator (for sharded runs)."""
        for g in other.groups:
            self.add_sum(g, other._sums[g], other._counts[g])

    def _accumulate(self, g: Hashable, s: Tensor, n: int) -> None:
        if g in self._sums:
            self._sums[g] += s
            self._counts[g] += n
        else:
            self._sums[g] = s.clone()
            self._counts[g] = n

    def _check_shape(self, shape: tuple[int, int]) -> None:
        if self._shape is None:
            self._shape = shape
        elif self._shape != shape:
            raise ConfigError(f"GroupMeans: got [L, D] = {list(shape)}, earlier batches had {list(self._shape)}")

    # -- read-out ------------------------------------------------------------------------------------------
    @property
    def groups(self) -> list[Hashable]:
        return list(self._sums)

    def count(self, group: Hashable) -> int:
        return self._counts.get(group, 0)

    def sum(self, group: Hashable) -> Tensor:
        """``Float64[Tensor, "L D"]`` sum of the group."""
        if group not in self._sums:
            raise DataError(f"no examples in group {group!r} (groups: {self.groups})")
        return self._sums[group].clone()

    def mean(self, group: Hashable) -> Tensor:
        """``Float64[Tensor, "L D"]`` mean of the group; :class:`DataError` if the group is empty."""
        n = self.count(group)
        if n == 0:
            raise DataError(f"no examples in group {group!r} (groups: {self.groups})")
        return self._sums[group] / n

    def mean_count(self, group: Hashable) -> MeanCount:
        return MeanCount(self.mean(group), self.count(group))

    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state (``torch.save``-able) for resuming an accumulation."""
        return {"groups": list(self._sums), "sums": [self._sums[g] for g in self._sums],
                "counts": [self._counts[g] for g in self._sums]}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> GroupMeans:
        gm = cls()
        for g, s, n in zip(state["groups"], state["sums"], state["counts"], strict=True):
            gm.add_sum(g, s, n)
        return gm


# ----------------------------------------------------------------------------------------------------------
# Difference in means
# ----------------------------------------------------------------------------------------------------------


def _as_mean_count(x: Tensor | MeanCount | tuple[Tensor, int], side: str) -> MeanCount:
    if isinstance(x, Tensor):
        if x.ndim < 2:
            raise ConfigError(f"diff_in_means: {side} must be [N, L, D] (or [N, D]), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise DataError(f"diff_in_means: no {side} examples")
        return MeanCount(x.detach().to(torch.float64).mean(dim=0), int(x.shape[0]))
    mean, count = x
    if int(count) <= 0:
        raise DataError(f"diff_in_means: no {side} examples (count {count})")
    return MeanCount(mean.detach().to(torch.float64), int(count))


def diff_in_means(pos: Tensor | MeanCount | tuple[Tensor, int],
                  neg: Tensor | MeanCount | tuple[Tensor, int]) -> Tensor:
    """``v = mean(pos) − mean(neg)``: the value vector ``Float64[Tensor, "L D"]``.

    ``pos``/``neg`` are either the raw activations ``[N, L, D]`` or ``(mean [L, D], count)`` pairs (e.g.
    :meth:`GroupMeans.mean_count`). An empty side raises :class:`DataError`.

    >>> import torch
    >>> pos = torch.tensor([[[1.0, 2.0]], [[3.0, 2.0]]])   # N=2, L=1, D=2
    >>> neg = torch.tensor([[[0.0, 1.0]]])                 # N=1
    >>> diff_in_means(pos, neg).tolist()
    [[2.0, 1.0]]
    """
    p = _as_mean_count(pos, "pos")
    n = _as_mean_count(neg, "neg")
    if p.mean.shape != n.mean.shape:
        raise ConfigError(f"diff_in_means: shapes differ, pos {tuple(p.mean.shape)} vs neg {tuple(n.mean.shape)}")
    return p.mean - n.mean


def diff_in_means_from_groups(gm: GroupMeans, pos_group: Hashable, neg_group: Hashable) -> Tensor:
    """:func:`diff_in_means` of two groups of a :class:`GroupMeans` → ``Float64[Tensor, "L D"]``."""
    return diff_in_means(gm.mean_count(pos_group), gm.mean_count(neg_group))


# ----------------------------------------------------------------------------------------------------------
# Per-layer geometry
# ----------------------------------------------------------------------------------------------------------


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(dim=-1)


def norms_by_layer(v: Tensor) -> Tensor:
    """L2 norm of each row: ``[L, D] → [L]`` (or ``[D] → []``)."""
    return torch.linalg.vector_norm(v.to(torch.float64), dim=-1)


def cosine_by_layer(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of ``a`` and ``b`` per layer: ``[L, D], [L, D] → [L]``. A zero vector gives cosine 0 (not NaN).

    >>> import torch
    >>> cos = cosine_by_layer(torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[0.0, 2.0], [-2.0, -2.0]]))
    >>> [round(x, 6) for x in cos.tolist()]
    [0.0, -1.0]
    """
    if a.shape != b.shape:
        raise ConfigError(f"cosine_by_layer: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    den = norms_by_layer(a64) * norms_by_layer(b64)
    num = _dot(a64, b64)
    safe = torch.where(den > 0, den, torch.ones_like(den))
    return torch.where(den > 0, num / safe, torch.zeros_like(num)).clamp(-1.0, 1.0)


class Orthogonalized(NamedTuple):
    """Result of :func:`orthogonalize`.

    ``vector``: ``a`` with its component along ``b`` removed (same shape as ``a``).
    ``b_is_zero``: ``Bool[Tensor, "L"]`` (or 0-d): layers where ``b`` was the zero vector and ``a`` was
    returned unchanged.
    """

    vector: Tensor
    b_is_zero: Tensor


def orthogonalize(a: Tensor, b: Tensor, *, tol: float = 0.0) -> Orthogonalized:
    """``a − (⟨a,b⟩/⟨b,b⟩)·b`` per layer, for ``[L, D]`` or ``[D]`` inputs (float64 out).

    Computed in float64. Where ``‖b‖ ≤ tol`` or ``⟨b,b⟩`` is 0 (default: exactly the zero vector) ``a`` is
    returned unchanged and flagged in ``b_is_zero``; no NaN.

    >>> import torch
    >>> r = orthogonalize(torch.tensor([2.0, 1.0]), torch.tensor([1.0, 1.0]))
    >>> r.vector.tolist(), bool(r.b_is_zero)
    ([0.5, -0.5], False)
    """
    if a.shape != b.shape:
        raise ConfigError(f"orthogonalize: shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    bb = _dot(b64, b64)
    zero = (bb <= tol * tol) | (bb == 0)
    safe = torch.where(zero, torch.ones_like(bb), bb)
    coef = torch.where(zero, torch.zeros_like(bb), _dot(a64, b64) / safe)
    return Orthogonalized(a64 - coef.unsqueeze(-1) * b64, zero)


class SVDAxes(NamedTuple):
    """Result of :func:`svd_axes`; all axes are unit vectors shaped like the inputs (``[L, D]`` or ``[D]``).

    ``singular_values``: ``[L, 2]`` (or ``[2]``), descending. Where the second one is 0 (``v_int ∥ v_prompt``)
    the difference axis is an arbitrary unit vector orthogonal to the shared axis.
    """

    shared: Tensor
    diff_int: Tensor
    diff_prompt: Tensor
    singular_values: Tensor


def _orient(u: Tensor, ref: Tensor, fallback: Tensor) -> Tensor:
    """Flip rows of ``u`` so ``⟨u, ref⟩ > 0``; where that is 0 use ``⟨u, fallback⟩ ≥ 0`` instead."""
    d = _dot(u, ref)
    d = torch.where(d == 0, _dot(u, fallback), d)
    sign = torch.where(d < 0, -torch.ones_like(d), torch.ones_like(d))
    return u * sign.unsqueeze(-1)


def svd_axes(v_int: Tensor, v_prompt: Tensor) -> SVDAxes:
    """Shared and difference axes of ``[v_int, v_prompt]`` per layer (MISSION.md §2 step 6).

    For each layer the ``D × 2`` matrix ``M = [v_int, v_prompt]`` is decomposed ``M = U Σ Vᵀ``:
    ``shared = U[:, 0]`` oriented so ``⟨shared, v_int + v_prompt⟩ > 0``; ``diff_int = ±U[:, 1]`` oriented so
    ``⟨diff_int, v_int − v_prompt⟩ > 0``, and ``diff_prompt = −diff_int``. Ties (inner product exactly 0) fall
    back to ``⟨·, v_int⟩ ≥ 0``. Inputs ``[L, D]`` or ``[D]``; outputs float64.

    >>> import torch
    >>> ax = svd_axes(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0]))
    >>> [[round(x, 6) + 0.0 for x in t.tolist()] for t in ax]  # + 0.0 turns -0.0 into 0.0
    [[1.0, 0.0], [0.0, -1.0], [0.0, 1.0], [2.0, 1.0]]
    """
    if v_int.shape != v_prompt.shape:
        raise ConfigError(f"svd_axes: shapes differ, {tuple(v_int.shape)} vs {tuple(v_prompt.shape)}")
    if v_int.ndim not in (1, 2):
        raise ConfigError(f"svd_axes expects [L, D] or [D], got {tuple(v_int.shape)}")
    a, b = v_int.to(torch.float64), v_prompt.to(torch.float64)
    m = torch.stack([a, b], dim=-1)  # [..., D, 2]
    u, s, _ = torch.linalg.svd(m, full_matrices=False)
    shared = _orient(u[..., 0], a + b, a)
    diff_int = _orient(u[..., 1], a - b, a)
    return SVDAxes(shared.contiguous(), diff_int.contiguous(), (-diff_int).contiguous(), s)


# ----------------------------------------------------------------------------------------------------------
# Compliance direction
# ----------------------------------------------------------------------------------------------------------


@dataclass
class ComplianceStats:
    """Per-layer statistics of the ``δ_s = v_prompt[s] − v_int[s]`` (s = values), each ``Float64[Tensor, "L"]``.

    * ``mean_pairwise_cosine``: mean of ``cos(δ_s, δ_t)`` over the ``S(S−1)/2`` pairs ``s < t`` (a zero ``δ``
      contributes cosine 0). NaN when ``S < 2``. Paper: 0.476.
    * ``mean_r2`` — the share of the δ's (uncentred) sum of squares that the mean **itself** explains:
      ``1 − Σ_s‖δ_s − c‖² / Σ_s‖δ_s‖² = S·‖c‖² / Σ_s‖δ_s‖²`` (every δ_s predicted by the common vector c).
    * ``projection_share`` — the share captured by projecting each δ_s onto the unit mean direction
      ``ĉ = c/‖c‖``: ``Σ_s⟨δ_s, ĉ⟩² / Σ_s‖δ_s‖²``. Always ≥ ``mean_r2`` (Cauchy–Schwarz); it is the
      "variance explained" of ĉ in the PCA sense (uncentred). This is our headline figure for the paper's
      48–68 %.
    * ``top_direction_share`` — the best any single direction can do: ``σ₁² / Σσ²`` of the ``S × D`` matrix of
      δ's (uncentred), an upper bound for ``projection_share``.

    All three shares are 0 on a layer where every δ is zero.
    """

    mean_pairwise_cosine: Tensor
    mean_r2: Tensor
    projection_share: Tensor
    top_direction_share: Tensor
    n_values: int

    def to_dict(self) -> dict[str, Any]:
        return {"mean_pairwise_cosine": self.mean_pairwise_cosine.tolist(), "mean_r2": self.mean_r2.tolist(),
                "projection_share": self.projection_share.tolist(),
                "top_direction_share": self.top_direction_share.tolist(), "n_values": self.n_values}


def compliance_direction(v_int: Tensor, v_prompt: Tensor) -> tuple[Tensor, ComplianceStats]:
    """``c = mean_s (v_prompt[s] − v_int[s])``: ``[S, L, D], [S, L, D] → (Float64[Tensor, "L D"], stats)``.

    ``[S, D]`` inputs are treated as one layer (``L = 1``). See :class:`ComplianceStats` for the statistics.

    >>> import torch
    >>> v_int = torch.zeros(2, 1, 2)
    >>> v_prompt = torch.tensor([[[2.0, 0.0]], [[0.0, 1.0]]])
    >>> c, st = compliance_direction(v_int, v_prompt)
    >>> c.tolist(), round(st.mean_r2.item(), 4), round(st.projection_share.item(), 4)
    ([[1.0, 0.5]], 0.5, 0.68)
    """
    if v_int.shape != v_prompt.shape:
        raise ConfigError(f"compliance_direction: shapes differ, {tuple(v_int.shape)} vs {tuple(v_prompt.shape)}")
    if v_int.ndim == 2:
        v_int, v_prompt = v_int.unsqueeze(1), v_prompt.unsqueeze(1)
    if v_int.ndim != 3:
        raise ConfigError(f"compliance_direction expects [S, L, D], got {tuple(v_int.shape)}")
    s_count = int(v_int.shape[0])
    if s_count == 0:
        raise DataError("compliance_direction: no values")
    delta = (v_prompt.to(torch.float64) - v_int.to(torch.float64)).transpose(0, 1)  # [L, S, D]
    c = delta.mean(dim=1)  # [L, D]
    total = (delta * delta).sum(dim=(1, 2))  # [L]
    nonzero = total > 0
    safe_total = torch.where(nonzero, total, torch.ones_like(total))
    zeros = torch.zeros_like(total)

    mean_r2 = torch.where(nonzero, s_count * (c * c).sum(-1) / safe_total, zeros)
    cn = torch.linalg.vector_norm(c, dim=-1)
    chat = c / torch.where(cn > 0, cn, torch.ones_like(cn)).unsqueeze(-1)
    proj = torch.einsum("lsd,ld->ls", delta, chat)
    projection_share = torch.where(nonzero, (proj * proj).sum(-1) / safe_total, zeros)
    sv = torch.linalg.svdvals(delta)  # [L, min(S, D)]
    top = torch.where(nonzero, sv[:, 0] ** 2 / safe_total, zeros)

    if s_count < 2:
        pair_cos = torch.full_like(total, float("nan"))
    else:
        n = torch.linalg.vector_norm(delta, dim=-1)  # [L, S]
        unit = delta / torch.where(n > 0, n, torch.ones_like(n)).unsqueeze(-1)
        gram = unit @ unit.transpose(1, 2)  # [L, S, S]
        iu = torch.triu_indices(s_count, s_count, offset=1)
        pair_cos = gram[:, iu[0], iu[1]].mean(dim=-1)
    stats = ComplianceStats(pair_cos, mean_r2.clamp(0, 1), projection_share.clamp(0, 1), top.clamp(0, 1), s_count)
    return c, stats


# ----------------------------------------------------------------------------------------------------------
# Container and storage
# ----------------------------------------------------------------------------------------------------------


def _canonical_value(name: str) -> str:
    return get_value(name).name


def _check_condition(cond: str) -> str:
    if not _NAME_RE.match(cond):
        raise ConfigError(f"condition names may use letters, digits, '_' and '-' only, got {cond!r}")
    return cond


@dataclass
class ValueVectors:
    """Value vectors for values × conditions × layers, with the counts and provenance behind them.

    * ``vectors[(value, condition)]``: ``Float32[Tensor, "L D"]``; row ``i`` is model layer ``layers[i]``
      (0-based decoder-block output, see module docstring). ``value`` is a canonical Schwartz value name,
      ``condition`` usually one of :data:`CONDITIONS` (derived kinds such as ``"shared"`` are allowed).
    * ``counts[(value, condition)]``: e.g. ``{"pos": 120, "neg": 380}`` — examples behind each vector.
    * ``extra_vectors[name]``: other ``[L, D]`` vectors of the run (e.g. ``"compliance"``).
    * ``model_hash``, ``n_layers``, ``d_model``: the model the vectors come from; ``judge``: who labelled.

    Stored as safetensors with tensors ``v/<Value>/<condition>`` and ``x/<name>`` and string metadata.

    >>> import torch, tempfile, os
    >>> vv = ValueVectors(model_hash="abc", n_layers=2, d_model=3, layers=[0, 1], judge="detector")
    >>> vv.set("power", "intrinsic", torch.ones(2, 3), pos=5, neg=7)
    >>> p = vv.save(os.path.join(tempfile.mkdtemp(), "v.safetensors"))
    >>> ValueVectors.load(p).get("Power", "intrinsic").shape
    torch.Size([2, 3])
    """

    model_hash: str
    n_layers: int
    d_model: int
    layers: list[int]
    judge: str = ""
    vectors: dict[tuple[str, str], Tensor] = field(default_factory=dict)
    counts: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    extra_vectors: dict[str, Tensor] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.layers = [int(x) for x in self.layers]
        if not self.layers:
            raise ConfigError("ValueVectors: empty layer list")
        bad = [x for x in self.layers if not 0 <= x < self.n_layers]
        if bad:
            raise ConfigError(f"ValueVectors: layers {bad} out of range for a model with {self.n_layers} layers")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"ValueVectors: duplicate layers in {self.layers}")
        vecs, self.vectors = self.vectors, {}
        counts, self.counts = self.counts, {}
        for (val, cond), t in vecs.items():
            self.set(val, cond, t, **counts.get((val, cond), {}))
        for name, t in list(self.extra_vectors.items()):
            self.set_extra(name, t)

    # -- access ----------------------------------------------------------------------------------------------
    def _check_tensor(self, t: Tensor, what: str) -> Tensor:
        want = (len(self.layers), self.d_model)
        if tuple(t.shape) != want:
            raise ConfigError(f"{what}: expected shape [L, D] = {list(want)}, got {list(t.shape)}")
        if not torch.isfinite(t).all():
            raise DataError(f"{what}: contains NaN or inf")
        return t.detach().to(device="cpu", dtype=torch.float32).contiguous()

    def set(self, value: str, condition: str, vec: Tensor, **counts: int) -> None:
        """Store ``vec: [L, D]`` for ``(value, condition)`` with its counts (e.g. ``pos=…, neg=…``)."""
        key = (_canonical_value(value), _check_condition(condition))
        self.vectors[key] = self._check_tensor(vec, f"vector {key[0]}/{key[1]}")
        self.counts[key] = {k: int(n) for k, n in counts.items()}

    def get(self, value: str, condition: str) -> Tensor:
        key = (_canonical_value(value), condition)
        if key not in self.vectors:
            have = ", ".join(f"{v}/{c}" for v, c in self.vectors) or "none"
            raise ConfigError(f"no vector for {key[0]}/{condition} (have: {have})")
        return self.vectors[key]

    def set_extra(self, name: str, vec: Tensor) -> None:
        self.extra_vectors[_check_condition(name)] = self._check_tensor(vec, f"extra vector {name}")

    def layer_row(self, layer: int) -> int:
        """Row index of model layer ``layer``; :class:`ConfigError` if it was not extracted."""
        if layer not in self.layers:
            raise ConfigError(f"layer {layer} not in the stored layers {self.layers}")
        return self.layers.index(layer)

    @property
    def values(self) -> list[str]:
        """Values present, in circumplex order."""
        have = {v for v, _ in self.vectors}
        return [v for v in VALUE_NAMES if v in have]

    @property
    def conditions(self) -> list[str]:
        return sorted({c for _, c in self.vectors})

    def with_decomposition(self) -> ValueVectors:
        """A copy with the step-6 decomposition added for every value that has both conditions.

        Adds conditions ``intrinsic_orth`` (v_int⊥prompt), ``prompted_orth`` (v_prompt⊥int), ``shared``,
        ``diff_intrinsic``, ``diff_prompted`` (unit axes of :func:`svd_axes`) and the extra vector
        ``compliance`` (:func:`compliance_direction` over those values; its statistics go to
        ``metadata["compliance_stats"]``).
        """
        out = ValueVectors(self.model_hash, self.n_layers, self.d_model, list(self.layers), self.judge,
                           dict(self.vectors), {k: dict(v) for k, v in self.counts.items()},
                           dict(self.extra_vectors), dict(self.metadata))
        both = [v for v in self.values if (v, "intrinsic") in self.vectors and (v, "prompted") in self.vectors]
        for v in both:
            a, b = self.vectors[(v, "intrinsic")], self.vectors[(v, "prompted")]
            ax = svd_axes(a, b)
            out.set(v, "intrinsic_orth", orthogonalize(a, b).vector)
            out.set(v, "prompted_orth", orthogonalize(b, a).vector)
            out.set(v, "shared", ax.shared)
            out.set(v, "diff_intrinsic", ax.diff_int)
            out.set(v, "diff_prompted", ax.diff_prompt)
        if both:
            c, stats = compliance_direction(torch.stack([self.vectors[(v, "intrinsic")] for v in both]),
                                            torch.stack([self.vectors[(v, "prompted")] for v in both]))
            out.set_extra("compliance", c)
            out.metadata["compliance_stats"] = {**stats.to_dict(), "values": both}
        return out

    # -- compatibility ---------------------------------------------------------------------------------------
    def check_compatible(self, model_hash: str, d_model: int, n_layers: int) -> None:
        """Raise :class:`ConfigError` ``"vectors from another model (...)"`` unless all three match."""
        diffs = []
        if model_hash != self.model_hash:
            diffs.append(f"model hash {self.model_hash[:16]} vs {model_hash[:16]}")
        if int(d_model) != self.d_model:
            diffs.append(f"d_model {self.d_model} vs {d_model}")
        if int(n_layers) != self.n_layers:
            diffs.append(f"n_layers {self.n_layers} vs {n_layers}")
        if diffs:
            raise ConfigError(f"vectors from another model ({'; '.join(diffs)}; vectors vs model)")

    # -- storage ---------------------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write a safetensors file atomically; returns the path."""
        from safetensors.torch import save_file

        tensors: dict[str, Tensor] = {f"v/{v}/{c}": t for (v, c), t in self.vectors.items()}
        tensors.update({f"x/{n}": t for n, t in self.extra_vectors.items()})
        counts: dict[str, dict[str, dict[str, int]]] = {}
        for (v, c), n in self.counts.items():
            counts.setdefault(v, {})[c] = n
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "valuelens_version": _version(),
            "model_hash": self.model_hash,
            "judge": self.judge,
            "n_layers": str(self.n_layers),
            "d_model": str(self.d_model),
            "layers": json.dumps(self.layers),
            "layer_convention": "block_output",
            "counts": json.dumps(counts, sort_keys=True),
            "metadata": json.dumps(self.metadata, sort_keys=True, default=str),
        }
        path = Path(path)
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> ValueVectors:
        """Read and validate a file written by :meth:`save`; problems raise :class:`DataError` naming it."""
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise DataError(f"{path}: no such vectors file")
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{path}: not a readable safetensors file ({exc})") from None
        if meta.get("format") != FORMAT_NAME:
            raise DataError(f"{path}: not a valuelens vectors file (format={meta.get('format')!r})")
        if meta.get("format_version") != FORMAT_VERSION:
            raise DataError(f"{path}: unsupported format version {meta.get('format_version')!r}")
        try:
            layers = json.loads(meta["layers"])
            counts_raw = json.loads(meta.get("counts", "{}"))
            extra_meta = json.loads(meta.get("metadata", "{}"))
            n_layers, d_model = int(meta["n_layers"]), int(meta["d_model"])
        except (KeyError, ValueError, TypeError) as exc:
            raise DataError(f"{path}: bad metadata ({exc})") from None
        vectors: dict[tuple[str, str], Tensor] = {}
        extra: dict[str, Tensor] = {}
        for name, t in tensors.items():
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == "v":
                vectors[(parts[1], parts[2])] = t
            elif len(parts) == 2 and parts[0] == "x":
                extra[parts[1]] = t
            else:
                raise DataError(f"{path}: unexpected tensor name {name!r}")
        counts = {(v, c): n for v, per in counts_raw.items() for c, n in per.items()}
        try:
            return cls(model_hash=meta.get("model_hash", ""), n_layers=n_layers, d_model=d_model,
                       layers=layers, judge=meta.get("judge", ""), vectors=vectors, counts=counts,
                       extra_vectors=extra, metadata=extra_meta)
        except (ConfigError, DataError) as exc:
            raise DataError(f"{path}: {exc}") from None

    def export_gguf(self, value: str, condition: str, path: str | Path, model_hint: str,
                    scale: float = 1.0) -> dict[str, Any]:
        """Export one vector as a llama.cpp control vector (see :func:`export_control_vector_gguf`)."""
        return export_control_vector_gguf(self.get(value, condition) * scale, path, model_hint,
                                          layers=self.layers)


# ----------------------------------------------------------------------------------------------------------
# llama.cpp control vectors
# ----------------------------------------------------------------------------------------------------------


def export_control_vector_gguf(vec: Tensor | Mapping[int, Tensor], path: str | Path, model_hint: str, *,
                               layers: Iterable[int] | None = None) -> dict[str, Any]:
    """Write a llama.cpp control-vector GGUF (``--control-vector`` / ``--control-vector-scaled``).

    ``vec`` is ``[L, D]`` (row ``i`` = decoder block ``layers[i]``, default ``range(L)``) or ``{block: [D]}``.
    The file has ``general.architecture = "controlvector"``, ``controlvector.model_hint`` (llama.cpp expects the
    model's architecture name, e.g. ``"llama"``, ``"qwen2"``), ``controlvector.layer_count`` (the number of
    direction tensors written, as repeng does) and one F32 tensor ``direction.<block>`` per layer.

    Layer indexing: llama.cpp adds ``direction.N`` to the output of decoder block ``N`` (0-based ``il`` in its
    graph, ``build_cvec(cur, il)``), and its loader rejects ``direction.0`` — block 0's output cannot be
    steered. We use the same 0-based block index, so there is no shift; a block-0 row is skipped with a warning
    and listed in ``skipped_layers`` (an all-zero row is skipped silently, as llama.cpp treats absent layers as
    zero). Returns ``{"path", "written_layers", "skipped_layers"}``.

    >>> import torch, tempfile, os, gguf
    >>> p = os.path.join(tempfile.mkdtemp(), "cv.gguf")
    >>> export_control_vector_gguf({3: torch.ones(4)}, p, "llama")["written_layers"]
    [3]
    >>> [t.name for t in gguf.GGUFReader(p).tensors]
    ['direction.3']
    """
    import gguf
    import numpy as np

    rows: dict[int, Tensor]
    if isinstance(vec, Tensor):
        if vec.ndim == 1:
            vec = vec.unsqueeze(0)
        if vec.ndim != 2:
            raise ConfigError(f"control vector must be [L, D] or {{layer: [D]}}, got shape {tuple(vec.shape)}")
        idx = list(range(vec.shape[0])) if layers is None else [int(x) for x in layers]
        if len(idx) != vec.shape[0]:
            raise ConfigError(f"{len(idx)} layer indices for a [{vec.shape[0]}, D] vector")
        rows = {i: vec[r] for r, i in enumerate(idx)}
    else:
        if layers is not None:
            raise ConfigError("pass `layers` only with an [L, D] tensor; a dict already names its layers")
        rows = {int(k): v for k, v in vec.items()}
    if not rows:
        raise ConfigError("control vector: nothing to export")
    dims = {int(v.reshape(-1).shape[0]) for v in rows.values()}
    if len(dims) != 1:
        raise ConfigError(f"control vector rows have different sizes {sorted(dims)}")
    if any(v.ndim != 1 for v in rows.values()):
        raise ConfigError("control vector rows must be 1-D [D]")
    if any(k < 0 for k in rows):
        raise ConfigError(f"negative layer index in {sorted(rows)}")
    if not model_hint:
        raise ConfigError("model_hint is required (the model's architecture name, e.g. 'llama')")

    written: list[int] = []
    skipped: list[int] = []
    arrays: list[tuple[int, Any]] = []
    for layer in sorted(rows):
        arr = rows[layer].detach().to(device="cpu", dtype=torch.float32).numpy()
        if not np.isfinite(arr).all():
            raise DataError(f"control vector layer {layer} contains NaN or inf")
        if layer == 0:
            if np.any(arr != 0):
                warnings.warn("llama.cpp cannot steer the output of block 0 (direction.0 is rejected); "
                              "skipping layer 0", stacklevel=2)
                skipped.append(0)
            continue
        arrays.append((layer, np.ascontiguousarray(arr)))
        written.append(layer)
    if not arrays:
        raise ConfigError("control vector: only block 0 given, which llama.cpp cannot steer")

    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "controlvector")
        writer.add_string("controlvector.model_hint", model_hint)
        writer.add_uint32("controlvector.layer_count", len(arrays))
        for layer, arr in arrays:
            writer.add_tensor(f"direction.{layer}", arr)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return {"path": str(path), "written_layers": written, "skipped_layers": skipped}
