"""Value neurons (MISSION.md §2 step 7): MLP neurons that write into a value's shared/difference plane.

A SwiGLU MLP neuron ``i`` of layer ``l`` writes ``act_i · W_down[:, i]`` into the residual stream at the output
of block ``l`` — the same residual stream (row ``l`` of a :class:`~valuelens.vectors.ValueVectors`) that the
value axes live in. For each value we project every column onto the plane ``span(u_shared, u_diff)`` of that
layer, score it by the length of its projection, keep the top ``k`` %, and label the kept ones by the smallest
angle of the projected column to ``u_shared``, ``u_int`` (= ``u_diff``) or ``u_prompt`` (= ``−u_diff``).

Shapes are written jaxtyping-style: ``[D, N]`` = d_model × d_mlp (a ``W_down`` with column ``i`` = neuron ``i``).

Choices (each a parameter, each pinned by a test in ``tests/unit/test_neurons.py``):

* **Rays, not lines (``mode="ray"``, default).** Angles are between *directions*: a column along ``−u_shared``
  is at 180° from ``u_shared`` (and 90° from ``u_int``/``u_prompt``), so it is **unlabelled**, not "shared".
  Why: the paper's three labels need signed axes — ``u_prompt = −u_int``, so as *lines* the two difference
  axes coincide and "intrinsic-unique" vs "prompted-unique" could not be told apart. The argument for lines is
  real (``silu(gate)·up`` takes both signs, so a neuron can write ``−w`` as easily as ``w``); ``mode="line"``
  measures angles between lines (``min(θ, 180° − θ)``) and then labels a neuron near the difference line
  ``diff_unique`` (no intrinsic/prompted distinction). A middle way is ``signs``: flip each column by the sign
  of the neuron's typical activation (e.g. :func:`mean_neuron_activations` on the generated responses) before
  using rays, so a column is judged by what the neuron *actually* writes on average.
* **Score = projection norm ``‖P w‖`` (``normalize=False``, default)**: how much the neuron can write into the
  plane per unit of activation, which is what "score by the projection's norm" says. ``normalize=True`` scores
  ``‖P w‖ / ‖w‖`` (the cosine between the column and the plane), which favours small columns that happen to be
  well aligned. Angles do not depend on this choice. Neither accounts for how large a neuron's activations
  get.
* **Top k %** keeps ``max(1, round(k/100 · n))`` neurons of ``n`` candidates: per layer (``scope="layer"``) or
  over all layers of the value (``scope="global"``). Ties are broken by (layer, neuron) order.
* **Labels**: the axis with the smallest angle if that angle is ``< angle_deg``, else ``unlabelled``. With rays
  and ``angle_deg ≤ 45°`` at most one axis can qualify.
* The plane is orthonormalised defensively (Gram–Schmidt in float64 starting from ``u_shared``), so slightly
  non-orthogonal or non-unit axes are fine; parallel axes are a :class:`~valuelens.errors.ConfigError`.

>>> import torch
>>> W = torch.tensor([[1.0, 0.0, -2.0, 0.3], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 4.0]])   # D=3, N=4
>>> p = project_columns(W, torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))
>>> [round(x, 3) for x in p.norm.tolist()], [round(x) for x in p.angle_shared.tolist()]
([1.0, 1.0, 2.0, 0.3], [0, 90, 180, 0])
>>> p.labels(30.0)
['shared', 'intrinsic_unique', 'unlabelled', 'shared']
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import Tensor

from .errors import ConfigError, DataError
from .runio import atomic_path, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .models import LoadedModel
    from .vectors import ValueVectors

__all__ = [
    "LABELS",
    "Projection",
    "label_angles",
    "mean_neuron_activations",
    "neuron_sets",
    "neuron_table",
    "project_columns",
    "random_neuron_control",
    "select_value_neurons",
    "summarize",
    "top_activating_contexts",
    "write_neuron_outputs",
]

Mode = Literal["ray", "line"]
Scope = Literal["layer", "global"]

#: Labels in display order. ``diff_unique`` only appears with ``mode="line"``.
LABELS: tuple[str, ...] = ("shared", "intrinsic_unique", "prompted_unique", "diff_unique", "unlabelled")
#: The columns of a neuron table, in order.
TABLE_COLUMNS: tuple[str, ...] = ("value", "layer", "neuron", "rank", "score", "proj_norm", "col_norm",
                                  "coord_shared", "coord_diff", "angle_shared", "angle_int", "angle_prompt",
                                  "label")


# --------------------------------------------------------------------------------------------------------------
# Projection


def _plane(u_shared: Tensor, u_diff: Tensor) -> tuple[Tensor, Tensor]:
    """Orthonormal ``(e_shared, e_diff)`` (float64, ``[D]`` each) spanning the two axes, ``e_shared ∥ u_shared``."""
    a = u_shared.detach().to("cpu", torch.float64).reshape(-1)
    b = u_diff.detach().to("cpu", torch.float64).reshape(-1)
    if a.shape != b.shape:
        raise ConfigError(f"axes differ in size: u_shared {tuple(a.shape)} vs u_diff {tuple(b.shape)}")
    na = torch.linalg.vector_norm(a)
    if not torch.isfinite(na) or na == 0:
        raise ConfigError("u_shared is zero or not finite")
    e1 = a / na
    r = b - (b @ e1) * e1
    nr = torch.linalg.vector_norm(r)
    if not torch.isfinite(nr) or nr <= 1e-9 * max(float(torch.linalg.vector_norm(b)), 1e-300):
        raise ConfigError("u_diff is zero or parallel to u_shared: the plane is not defined")
    return e1, r / nr


def _deg(x: Tensor) -> Tensor:
    return torch.rad2deg(x)


@dataclass(frozen=True)
class Projection:
    """Columns of ``W [D, N]`` projected onto the plane ``span(u_shared, u_diff)``; all fields ``[N]`` float64.

    * ``coord_shared`` / ``coord_diff``: coordinates in the orthonormal basis ``(e_shared, e_diff)``
      (``e_shared = u_shared/‖u_shared‖``; ``e_diff`` = ``u_diff`` made orthogonal to it, unit length);
    * ``norm``: ``‖P w‖ = hypot(coord_shared, coord_diff)``; ``col_norm``: ``‖w‖``;
    * ``angle_shared`` / ``angle_int`` / ``angle_prompt``: degrees between the projected column and
      ``u_shared``, ``u_int = e_diff`` and ``u_prompt = −e_diff``; in ``[0, 180]`` for rays and ``[0, 90]`` for
      lines (``mode="line"``, where ``angle_int == angle_prompt``). NaN where the column is (up to rounding,
      ``norm ≤ 1e-12 · col_norm``) orthogonal to the plane — such a column is ``unlabelled``.
    """

    coord_shared: Tensor
    coord_diff: Tensor
    norm: Tensor
    col_norm: Tensor
    angle_shared: Tensor
    angle_int: Tensor
    angle_prompt: Tensor
    mode: Mode = "ray"

    def score(self, normalize: bool = False) -> Tensor:
        """``norm`` (default) or ``norm / col_norm`` (0 for a zero column) → ``[N]``."""
        if not normalize:
            return self.norm
        safe = torch.where(self.col_norm > 0, self.col_norm, torch.ones_like(self.col_norm))
        return torch.where(self.col_norm > 0, self.norm / safe, torch.zeros_like(self.norm))

    def labels(self, angle_deg: float = 30.0) -> list[str]:
        """The label of every column by the ``angle_deg`` rule (see :func:`label_angles`)."""
        return label_angles(self.angle_shared, self.angle_int, self.angle_prompt, angle_deg, mode=self.mode)


def project_columns(W: Tensor, u_shared: Tensor, u_diff: Tensor, *, mode: Mode = "ray",
                    signs: Tensor | None = None) -> Projection:
    """Project each column of ``W: [D, N]`` onto ``span(u_shared: [D], u_diff: [D])`` → :class:`Projection`.

    ``u_diff`` is the intrinsic side of the difference axis (``u_int``); ``u_prompt = −u_diff``. ``signs: [N]``
    (optional, e.g. the sign of each neuron's mean activation) multiplies the columns first; a 0 sign counts as
    +1. ``mode``: ``"ray"`` (angles between directions, default) or ``"line"`` (between lines); see the module
    docstring for why.

    >>> import math, torch
    >>> t = torch.tensor([0.0, 20.0, 45.0, 180.0]) * math.pi / 180          # columns at 0°, 20°, 45°, 180°
    >>> W = torch.stack([t.cos(), t.sin(), torch.zeros(4)])               # [D=3, N=4]
    >>> p = project_columns(W, torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]))
    >>> [round(x, 4) for x in p.angle_shared.tolist()], [round(x, 4) for x in p.angle_prompt.tolist()]
    ([0.0, 20.0, 45.0, 180.0], [90.0, 110.0, 135.0, 90.0])
    >>> line = project_columns(W, torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]), mode="line")
    >>> [round(x, 4) for x in line.angle_shared.tolist()]       # as a line, 180° is the shared axis again
    [0.0, 20.0, 45.0, 0.0]
    """
    if mode not in ("ray", "line"):
        raise ConfigError(f"mode must be 'ray' or 'line', got {mode!r}")
    if W.ndim != 2:
        raise ConfigError(f"W must be [d_model, d_mlp], got shape {tuple(W.shape)}")
    e1, e2 = _plane(u_shared, u_diff)
    if W.shape[0] != e1.shape[0]:
        raise ConfigError(f"W has {W.shape[0]} rows but the axes have {e1.shape[0]} dimensions")
    w = W.detach().to("cpu", torch.float64)
    if signs is not None:
        s = torch.as_tensor(signs).detach().to("cpu", torch.float64).reshape(-1)
        if s.shape[0] != w.shape[1]:
            raise ConfigError(f"signs has {s.shape[0]} entries for {w.shape[1]} columns")
        w = w * torch.where(s < 0, -torch.ones_like(s), torch.ones_like(s))
    col_norm = torch.linalg.vector_norm(w, dim=0)
    if not torch.isfinite(col_norm).all():
        raise DataError("W contains NaN or inf")
    cs, cd = torch.stack([e1, e2]) @ w  # [N] each
    norm = torch.hypot(cs, cd)
    ang = _deg(torch.atan2(cd, cs))  # (-180, 180], 0 = along e_shared, +90 = along u_int
    a_sh = ang.abs()
    a_int = (ang - 90.0).abs()
    a_int = torch.where(a_int > 180.0, 360.0 - a_int, a_int)
    a_pr = (ang + 90.0).abs()
    a_pr = torch.where(a_pr > 180.0, 360.0 - a_pr, a_pr)
    if mode == "line":
        a_sh = torch.minimum(a_sh, 180.0 - a_sh)
        a_int = torch.minimum(a_int, 180.0 - a_int)
        a_pr = a_int.clone()
    nan = torch.full_like(norm, float("nan"))
    zero = norm <= 1e-12 * col_norm  # in the plane only by rounding: its angles mean nothing
    a_sh, a_int, a_pr = (torch.where(zero, nan, a) for a in (a_sh, a_int, a_pr))
    return Projection(cs, cd, norm, col_norm, a_sh, a_int, a_pr, mode)


def label_angles(angle_shared: Tensor, angle_int: Tensor, angle_prompt: Tensor, angle_deg: float = 30.0, *,
                 mode: Mode = "ray") -> list[str]:
    """Label by the smallest of the three angles (``[N]`` each, degrees) if it is ``< angle_deg``.

    Labels: ``shared``, ``intrinsic_unique``, ``prompted_unique`` (``diff_unique`` in line mode, where the two
    difference angles are equal), else ``unlabelled`` (also for NaN angles). Ties go to ``shared``.

    >>> import torch
    >>> label_angles(torch.tensor([10.0, 90, 29.9, 30.0]), torch.tensor([80.0, 5, 60, 60]),
    ...              torch.tensor([100.0, 175, 120, 120]))
    ['shared', 'intrinsic_unique', 'shared', 'unlabelled']
    """
    if not 0 < angle_deg <= 180:
        raise ConfigError(f"angle_deg must be in (0, 180], got {angle_deg}")
    names = ("shared", "diff_unique", "diff_unique") if mode == "line" else \
        ("shared", "intrinsic_unique", "prompted_unique")
    a = torch.stack([angle_shared, angle_int, angle_prompt]).to(torch.float64)  # [3, N]
    a = torch.where(torch.isnan(a), torch.full_like(a, math.inf), a)
    best, which = a.min(dim=0)
    return [names[int(j)] if float(b) < angle_deg else "unlabelled" for b, j in zip(best, which, strict=True)]


# --------------------------------------------------------------------------------------------------------------
# Selection


def _n_keep(n: int, top_k_percent: float) -> int:
    return min(n, max(1, round(top_k_percent / 100.0 * n)))


def select_value_neurons(W_by_layer: Mapping[int, Tensor], axes_by_layer: Mapping[int, tuple[Tensor, Tensor]],
                         top_k_percent: float = 1.0, angle_deg: float = 30.0, scope: Scope = "layer", *,
                         normalize: bool = False, mode: Mode = "ray", value: str = "",
                         signs_by_layer: Mapping[int, Tensor] | None = None) -> pd.DataFrame:
    """Keep the top ``top_k_percent`` % of neurons by projection score and label them (one value).

    ``W_by_layer``: ``{layer: W_down [D, N]}``; ``axes_by_layer``: ``{layer: (u_shared [D], u_diff [D])}``
    (the same layers). ``scope``: ``"layer"`` keeps ``max(1, round(k% · N))`` per layer, ``"global"`` keeps
    ``max(1, round(k% · N · L))`` over all the layers together. ``signs_by_layer``: optional ``{layer: [N]}``
    column signs (see :func:`project_columns`). Returns a DataFrame with :data:`TABLE_COLUMNS`, one row per kept
    neuron, sorted by (layer, rank); ``rank`` is 0 for the best neuron of its layer (``"layer"``) or overall
    (``"global"``).

    >>> import torch
    >>> W = torch.zeros(4, 200); W[0, :3] = torch.tensor([5.0, 4.0, -3.0]); W[1, 3] = 6.0
    >>> t = select_value_neurons({7: W}, {7: (torch.eye(4)[0], torch.eye(4)[1])}, top_k_percent=2.0)
    >>> t[["neuron", "rank", "label"]].values.tolist()
    [[3, 0, 'intrinsic_unique'], [0, 1, 'shared'], [1, 2, 'shared'], [2, 3, 'unlabelled']]
    """
    import pandas as pd

    if scope not in ("layer", "global"):
        raise ConfigError(f"scope must be 'layer' or 'global', got {scope!r}")
    if not 0 < top_k_percent <= 100:
        raise ConfigError(f"top_k_percent must be in (0, 100], got {top_k_percent}")
    if set(W_by_layer) != set(axes_by_layer):
        raise ConfigError(f"layers differ: W for {sorted(W_by_layer)}, axes for {sorted(axes_by_layer)}")
    if not W_by_layer:
        raise ConfigError("no layers given")
    frames: list[dict[str, Any]] = []
    per_layer: list[tuple[int, Projection, Tensor]] = []
    for layer in sorted(W_by_layer):
        u_s, u_d = axes_by_layer[layer]
        signs = None if signs_by_layer is None else signs_by_layer.get(layer)
        p = project_columns(W_by_layer[layer], u_s, u_d, mode=mode, signs=signs)
        per_layer.append((int(layer), p, p.score(normalize)))

    def rows(layer: int, p: Projection, idx: Tensor, ranks: Iterable[int]) -> None:
        labels = label_angles(p.angle_shared[idx], p.angle_int[idx], p.angle_prompt[idx], angle_deg, mode=mode)
        score = p.score(normalize)
        for i, r, lab in zip(idx.tolist(), ranks, labels, strict=True):
            frames.append({"value": value, "layer": layer, "neuron": i, "rank": r, "score": float(score[i]),
                           "proj_norm": float(p.norm[i]), "col_norm": float(p.col_norm[i]),
                           "coord_shared": float(p.coord_shared[i]), "coord_diff": float(p.coord_diff[i]),
                           "angle_shared": float(p.angle_shared[i]), "angle_int": float(p.angle_int[i]),
                           "angle_prompt": float(p.angle_prompt[i]), "label": lab})

    if scope == "layer":
        for layer, p, s in per_layer:
            order = torch.sort(-s, stable=True).indices[: _n_keep(s.shape[0], top_k_percent)]
            rows(layer, p, order, range(order.shape[0]))
    else:
        all_s = torch.cat([s for _, _, s in per_layer])
        owner = torch.cat([torch.full_like(s, k, dtype=torch.long) for k, (_, _, s) in enumerate(per_layer)])
        local = torch.cat([torch.arange(s.shape[0]) for _, _, s in per_layer])
        order = torch.sort(-all_s, stable=True).indices[: _n_keep(all_s.shape[0], top_k_percent)]
        for k, (layer, p, _) in enumerate(per_layer):
            sel = (owner[order] == k).nonzero().flatten()
            if sel.numel():
                rows(layer, p, local[order[sel]], sel.tolist())
    df = pd.DataFrame(frames, columns=list(TABLE_COLUMNS))
    return df.sort_values(["layer", "rank"], kind="stable").reset_index(drop=True)


def neuron_table(lm: LoadedModel, vv: ValueVectors, layers: Sequence[int] | None = None, *,
                 values: Sequence[str] | None = None, top_k_percent: float = 1.0, angle_deg: float = 30.0,
                 scope: Scope = "layer", normalize: bool = False, mode: Mode = "ray",
                 signs_by_layer: Mapping[int, Tensor] | None = None, check_model: bool = True) -> pd.DataFrame:
    """:func:`select_value_neurons` for every value (default: all with both conditions) and layer of ``vv``.

    ``vv`` is decomposed with :meth:`ValueVectors.with_decomposition` if it has no ``shared`` axes yet. Row
    ``r`` of ``vv`` (model layer ``vv.layers[r]``, the output of block ``l``) is paired with block ``l``'s
    ``W_down``. ``layers`` (default: all of ``vv.layers``) must be stored in ``vv``. ``check_model``: the
    vectors must come from this model (hash, d_model, n_layers; see
    :meth:`ValueVectors.check_compatible`). Returns the concatenated table (:data:`TABLE_COLUMNS`).
    """
    import pandas as pd

    if check_model:
        vv.check_compatible(lm.model_hash, lm.spec.d_model, lm.spec.n_layers)
    elif vv.d_model != lm.spec.d_model:
        raise ConfigError(f"vectors have d_model {vv.d_model}, the model {lm.spec.d_model}")
    if not any(c == "shared" for _, c in vv.vectors):
        vv = vv.with_decomposition()
    have = [v for v in vv.values if (v, "shared") in vv.vectors and (v, "diff_intrinsic") in vv.vectors]
    if values is not None:
        from .values import get_value

        want = [get_value(v).name for v in values]
        missing = [v for v in want if v not in have]
        if missing:
            raise ConfigError(f"no shared/difference axes for {missing} (have: {have})")
        have = want
    if not have:
        raise ConfigError("no value has both intrinsic and prompted vectors, so there are no axes to project on")
    layer_ids = list(vv.layers) if layers is None else [lm.spec.check_layer(x) for x in layers]
    rows = {la: vv.layer_row(la) for la in sorted(set(layer_ids))}
    W = {la: lm.spec.down_weight(lm.model, la).detach().to("cpu", torch.float64) for la in rows}  # once
    frames = []
    for v in have:
        sh, di = vv.get(v, "shared"), vv.get(v, "diff_intrinsic")
        axes = {la: (sh[r], di[r]) for la, r in rows.items()}
        frames.append(select_value_neurons(W, axes, top_k_percent, angle_deg, scope, normalize=normalize,
                                           mode=mode, value=v, signs_by_layer=signs_by_layer))
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------------------------
# Counts and overlaps


def _labels_in(table: pd.DataFrame) -> list[str]:
    present = set(table["label"]) if len(table) else set()
    base = [lab for lab in LABELS if lab != "diff_unique" or "diff_unique" in present]
    return base + sorted(present - set(base))


def _jaccard(a: set[Any], b: set[Any]) -> float:
    u = len(a | b)
    return len(a & b) / u if u else float("nan")


def summarize(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Counts per value × layer × label and Jaccard overlaps of neuron sets.

    Returns ``{"counts": ..., "overlap": ...}``:

    * ``counts``: columns ``value, layer, label, n`` over the full grid of the table's values, layers and
      labels (zeros included), plus ``label == "all"`` rows with the number of kept neurons.
    * ``overlap``: one row per unordered pair of neuron sets, columns ``value_a, label_a, value_b, label_b,
      n_a, n_b, n_both, jaccard``. A set is all neurons of ``(value, label)`` over all layers, identified by
      ``(layer, neuron)``; ``label == "all"`` is every kept neuron of the value. Pairs: every two values with the
      same label (including "all"), and every two *labels* of two different values (is a neuron that is shared
      for one value unique to another?). Two labels of the *same* value are disjoint by construction (each
      neuron gets one label) and are not listed. Jaccard of two empty sets is NaN.

    >>> import pandas as pd
    >>> t = pd.DataFrame({"value": ["A", "A", "B", "B"], "layer": [0, 0, 0, 1], "neuron": [1, 2, 2, 1],
    ...                   "label": ["shared", "shared", "shared", "shared"]})
    >>> o = summarize(t)["overlap"]
    >>> round(o[(o.label_a == "shared") & (o.label_b == "shared")].jaccard.item(), 4)   # {1,2} vs {2, (1,1)}
    0.3333
    """
    import pandas as pd

    values = list(dict.fromkeys(table["value"]))
    layers = sorted(set(int(x) for x in table["layer"]))
    labels = _labels_in(table)
    grouped = table.groupby(["value", "layer", "label"]).size().to_dict() if len(table) else {}
    counts = []
    for v in values:
        for la in layers:
            total = 0
            for lab in labels:
                n = int(grouped.get((v, la, lab), 0))
                total += n
                counts.append({"value": v, "layer": la, "label": lab, "n": n})
            counts.append({"value": v, "layer": la, "label": "all", "n": total})
    sets: dict[tuple[str, str], set[tuple[int, int]]] = {}
    for v in values:
        sub = table[table["value"] == v]
        sets[(v, "all")] = set(zip(sub["layer"].astype(int), sub["neuron"].astype(int), strict=True))
        for lab in labels:
            s = sub[sub["label"] == lab]
            sets[(v, lab)] = set(zip(s["layer"].astype(int), s["neuron"].astype(int), strict=True))
    overlap = []
    all_labels = [*labels, "all"]
    for i, va in enumerate(values):
        for vb in values[i + 1:]:
            for la_a in all_labels:
                for la_b in all_labels:
                    if (la_a == "all") != (la_b == "all"):
                        continue
                    a, b = sets[(va, la_a)], sets[(vb, la_b)]
                    overlap.append({"value_a": va, "label_a": la_a, "value_b": vb, "label_b": la_b,
                                    "n_a": len(a), "n_b": len(b), "n_both": len(a & b), "jaccard": _jaccard(a, b)})
    cols = ["value_a", "label_a", "value_b", "label_b", "n_a", "n_b", "n_both", "jaccard"]
    return {"counts": pd.DataFrame(counts, columns=["value", "layer", "label", "n"]),
            "overlap": pd.DataFrame(overlap, columns=cols)}


# --------------------------------------------------------------------------------------------------------------
# Neuron sets and the random control


def _select(table: pd.DataFrame, value: str | None, label: str | None) -> pd.DataFrame:
    sub = table
    if value is not None:
        sub = sub[sub["value"].str.lower() == value.lower()]
    if label is not None and label != "all":
        sub = sub[sub["label"] == label]
    return sub


def neuron_sets(table: pd.DataFrame, value: str | None = None, label: str | None = None) -> dict[int, list[int]]:
    """``{layer: sorted neuron indices}`` of ``value``'s neurons with ``label`` (None/"all": any), for
    :func:`valuelens.hooks.scale_neurons`. Layers without such neurons are left out.

    >>> import pandas as pd
    >>> t = pd.DataFrame({"value": ["Power"] * 3, "layer": [3, 1, 3], "neuron": [9, 4, 2],
    ...                   "label": ["shared", "shared", "unlabelled"]})
    >>> neuron_sets(t, "Power", "shared"), neuron_sets(t, "Power")
    ({1: [4], 3: [9]}, {1: [4], 3: [2, 9]})
    """
    sub = _select(table, value, label)
    out: dict[int, list[int]] = {}
    for la, n in zip(sub["layer"].astype(int), sub["neuron"].astype(int), strict=True):
        out.setdefault(int(la), []).append(int(n))
    return {la: sorted(set(ns)) for la, ns in sorted(out.items())}


def _stable_seed(*parts: Any) -> int:
    h = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little")


def random_neuron_control(table: pd.DataFrame, d_mlp: int, seed: int = 0, *,
                          exclude: Literal["value", "all"] = "value"
                          ) -> dict[tuple[str, str], dict[int, list[int]]]:
    """A random neuron set of the same size in the same layer for every ``(value, label)`` set of ``table``.

    Returns ``{(value, label): {layer: sorted indices}}`` (also ``label == "all"`` for the union of the value's
    labels) in the form :func:`valuelens.hooks.scale_neurons` takes. Each layer's draw is seeded by
    ``(seed, value, label, layer)`` only, so it does not depend on what else is in the table. Drawn neurons
    avoid every neuron selected at that layer for the same value (``exclude="value"``) or for any value
    (``"all"``); too few candidates is a :class:`ConfigError`.

    >>> import pandas as pd
    >>> t = pd.DataFrame({"value": ["Power"] * 2, "layer": [0, 0], "neuron": [1, 2], "label": ["shared"] * 2})
    >>> ctl = random_neuron_control(t, d_mlp=10, seed=0)
    >>> len(ctl[("Power", "shared")][0]), set(ctl[("Power", "shared")][0]) & {1, 2}
    (2, set())
    """
    import numpy as np

    if exclude not in ("value", "all"):
        raise ConfigError(f"exclude must be 'value' or 'all', got {exclude!r}")
    out: dict[tuple[str, str], dict[int, list[int]]] = {}
    every = neuron_sets(table)
    for v in dict.fromkeys(table["value"]):
        taken = every if exclude == "all" else neuron_sets(table, v)
        labs = [*dict.fromkeys(table[table["value"] == v]["label"]), "all"]
        for lab in labs:
            ctl: dict[int, list[int]] = {}
            for la, idx in neuron_sets(table, v, lab).items():
                pool = np.setdiff1d(np.arange(d_mlp), np.asarray(taken.get(la, []), dtype=np.int64))
                if len(pool) < len(idx):
                    raise ConfigError(f"layer {la}: cannot draw {len(idx)} random neurons from the {len(pool)} "
                                      f"not selected (d_mlp={d_mlp})")
                rng = np.random.default_rng(_stable_seed(seed, v, lab, la))
                ctl[la] = sorted(int(x) for x in rng.choice(pool, size=len(idx), replace=False))
            out[(str(v), str(lab))] = ctl
    return out


# --------------------------------------------------------------------------------------------------------------
# Activations on generated responses


def _response_batches(lm: LoadedModel, records: Sequence[dict[str, Any]], batch_size: int
                      ) -> Iterable[tuple[list[int], Tensor, Tensor, Tensor]]:
    """Left-padded ``(record indices, input_ids, attention_mask, response mask)`` in record order."""
    pad = lm.tokenizer.pad_token_id
    pad = 0 if pad is None else int(pad)
    idx_all = [i for i, r in enumerate(records) if r.get("response_ids")]
    for s in range(0, len(idx_all), batch_size):
        idx = idx_all[s:s + batch_size]
        seqs = [list(records[i]["prompt_ids"]) + list(records[i]["response_ids"]) for i in idx]
        t = max(len(x) for x in seqs)
        ids = torch.full((len(idx), t), pad, dtype=torch.long)
        attn = torch.zeros((len(idx), t), dtype=torch.long)
        resp = torch.zeros((len(idx), t), dtype=torch.bool)
        for row, i in enumerate(idx):
            n_resp = len(records[i]["response_ids"])
            ids[row, t - len(seqs[row]):] = torch.tensor(seqs[row], dtype=torch.long)
            attn[row, t - len(seqs[row]):] = 1
            resp[row, t - n_resp:] = True
        yield idx, ids, attn, resp


def mean_neuron_activations(lm: LoadedModel, records: Sequence[dict[str, Any]], layers: Sequence[int], *,
                            batch_size: int = 8, bf16: bool = False) -> dict[int, Tensor]:
    """Mean activation of every neuron over all response tokens of ``records`` → ``{layer: [d_mlp]}`` float64.

    Its sign is what :func:`project_columns`'s ``signs`` expects (orient each column by what the neuron writes
    on average). Token-weighted: every response token counts once.
    """
    from .hooks import forward_capture

    layer_ids = lm.spec.check_layers(layers)
    total = torch.zeros(len(layer_ids), lm.spec.d_mlp, dtype=torch.float64)
    n = 0
    for _idx, ids, attn, resp in _response_batches(lm, records, batch_size):
        s = forward_capture(lm.model, ids, attn, token_mask=resp, layers=layer_ids, reduction="sum",
                            neurons=True, spec=lm.spec, bf16=bf16)
        assert isinstance(s, Tensor)
        total += s.to(torch.float64).sum(dim=0)
        n += int(resp.sum())
    if n == 0:
        raise DataError("no response tokens in the given records")
    return {la: total[k] / n for k, la in enumerate(layer_ids)}


def top_activating_contexts(lm: LoadedModel, records: Sequence[dict[str, Any]],
                            neurons: Mapping[int, Sequence[int]], k: int = 5, window: int = 8, *,
                            batch_size: int = 8, sign: Literal["positive", "negative", "abs"] = "positive",
                            bf16: bool = False) -> list[dict[str, Any]]:
    """For each neuron of ``{layer: [indices]}``, the ``k`` response tokens where it fires most.

    Runs ``prompt_ids + response_ids`` of each generated record (left-padded batches, records in order, empty
    responses skipped) and scans **response tokens only**. ``sign``: rank by the activation (``"positive"``,
    default — with rays, a neuron writes along its column when it is positive), by its negative, or by its
    absolute value. A running top-k is kept, so memory does not grow with the number of records; ties keep the
    earlier token. Returns one JSON-able dict per neuron (layers ascending, neurons as given)::

        {"layer", "neuron", "n_tokens", "top": [{"activation", "record_index", "record_id", "position",
                                                  "token_id", "token", "before", "after", "context"}, ...]}

    ``position`` indexes the record's ``response_ids``; ``before``/``after`` decode up to ``window`` response
    tokens on each side; ``context`` is ``before + "[[" + token + "]]" + after``.
    """
    from .hooks import forward_capture

    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if window < 0:
        raise ConfigError(f"window must be >= 0, got {window}")
    if sign not in ("positive", "negative", "abs"):
        raise ConfigError(f"sign must be 'positive', 'negative' or 'abs', got {sign!r}")
    sel = {lm.spec.check_layer(int(la)): [int(i) for i in idx] for la, idx in neurons.items() if len(idx)}
    for la, idx in sel.items():
        bad = [i for i in idx if not 0 <= i < lm.spec.d_mlp]
        if bad:
            raise ConfigError(f"neuron indices {bad} out of range at layer {la} (d_mlp={lm.spec.d_mlp})")
    layer_ids = sorted(sel)
    if not layer_ids:
        return []
    flat = [(la, i) for la in layer_ids for i in sel[la]]
    m = len(flat)
    # Running state: best keys [M, ≤k], their raw activations and (record, position) of each.
    best_key = torch.empty(m, 0, dtype=torch.float64)
    best_act = torch.empty(m, 0, dtype=torch.float64)
    best_rec = torch.empty(m, 0, dtype=torch.long)
    best_pos = torch.empty(m, 0, dtype=torch.long)
    n_tokens = 0
    for idx, ids, attn, resp in _response_batches(lm, records, batch_size):
        acts = forward_capture(lm.model, ids, attn, token_mask=resp, layers=layer_ids, reduction="all",
                               neurons=True, spec=lm.spec, bf16=bf16)
        assert isinstance(acts, list)
        cols, recs, poss = [], [], []
        for row, a in enumerate(acts):  # a: [T_resp, L_sel, d_mlp]
            parts = [a[:, li, sel[la]] for li, la in enumerate(layer_ids)]
            cols.append(torch.cat(parts, dim=1).T.to(torch.float64))  # [M, T_resp]
            recs.append(torch.full((a.shape[0],), idx[row], dtype=torch.long))
            poss.append(torch.arange(a.shape[0]))
            n_tokens += a.shape[0]
        new_act = torch.cat(cols, dim=1)
        new_key = new_act if sign == "positive" else (-new_act if sign == "negative" else new_act.abs())
        cand_key = torch.cat([best_key, new_key], dim=1)
        order = torch.sort(-cand_key, dim=1, stable=True).indices[:, :k]
        best_key = cand_key.gather(1, order)
        best_act = torch.cat([best_act, new_act], dim=1).gather(1, order)
        best_rec = torch.cat([best_rec, torch.cat(recs).expand(m, -1)], dim=1).gather(1, order)
        best_pos = torch.cat([best_pos, torch.cat(poss).expand(m, -1)], dim=1).gather(1, order)
    tok = lm.tokenizer
    out = []
    for j, (la, i) in enumerate(flat):
        top = []
        for c in range(best_key.shape[1]):
            r, p = int(best_rec[j, c]), int(best_pos[j, c])
            rec = records[r]
            resp_ids = list(rec["response_ids"])
            token = tok.decode([resp_ids[p]])
            before = tok.decode(resp_ids[max(0, p - window): p])
            after = tok.decode(resp_ids[p + 1: p + 1 + window])
            top.append({"activation": float(best_act[j, c]), "record_index": r, "record_id": rec.get("id", r),
                        "position": p, "token_id": int(resp_ids[p]), "token": token, "before": before,
                        "after": after, "context": f"{before}[[{token}]]{after}"})
        out.append({"layer": la, "neuron": i, "n_tokens": n_tokens, "top": top})
    return out


# --------------------------------------------------------------------------------------------------------------
# Output files


def _plot_counts(counts: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    c = counts[counts["label"] != "all"]
    values = list(dict.fromkeys(c["value"])) or ["(none)"]
    labels = [lab for lab in dict.fromkeys(c["label"]) if lab != "unlabelled"] + \
        (["unlabelled"] if (c["label"] == "unlabelled").any() else [])
    colors = {"shared": "#4c72b0", "intrinsic_unique": "#55a868", "prompted_unique": "#c44e52",
              "diff_unique": "#8172b2", "unlabelled": "#bbbbbb"}
    ncols = min(5, len(values))
    nrows = math.ceil(len(values) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.6 * nrows), squeeze=False, sharey=True)
    for ax in axes.flat[len(values):]:
        ax.set_visible(False)
    for ax, v in zip(axes.flat, values, strict=False):
        sub = c[c["value"] == v]
        layers = sorted(set(sub["layer"].astype(int)))
        bottom = [0.0] * len(layers)
        for lab in labels:
            n = [float(sub[(sub["layer"] == la) & (sub["label"] == lab)]["n"].sum()) for la in layers]
            ax.bar(layers, n, bottom=bottom, color=colors.get(lab), label=lab, width=0.85)
            bottom = [b + x for b, x in zip(bottom, n, strict=True)]
        ax.set_title(str(v), fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer", fontsize=8)
        ax.tick_params(labelsize=7)
    axes.flat[0].set_ylabel("kept neurons", fontsize=8)
    handles, names = axes.flat[0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, names, loc="upper center", ncol=len(names), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_neuron_outputs(out_dir: str | Path, table: pd.DataFrame, summary: Mapping[str, pd.DataFrame],
                         explanations: Sequence[Mapping[str, Any]] = ()) -> dict[str, Path]:
    """Write ``neurons.csv``, ``neuron_counts.csv``, ``neuron_overlap.csv``, ``neuron_explanations.jsonl`` and
    ``neuron_counts.png`` (stacked bars of kept neurons by layer and label, one panel per value) atomically.

    Each explanation line gets ``"sets"``: the ``[value, label]`` pairs of ``table`` that contain the neuron.
    Returns ``{name: path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {name: out / name for name in ("neurons.csv", "neuron_counts.csv", "neuron_overlap.csv",
                                           "neuron_explanations.jsonl", "neuron_counts.png")}
    atomic_write_text(paths["neurons.csv"], table.to_csv(index=False))
    atomic_write_text(paths["neuron_counts.csv"], summary["counts"].to_csv(index=False))
    atomic_write_text(paths["neuron_overlap.csv"], summary["overlap"].to_csv(index=False))
    member: dict[tuple[int, int], list[list[str]]] = {}
    for v, la, n, lab in zip(table["value"], table["layer"], table["neuron"], table["label"], strict=True):
        member.setdefault((int(la), int(n)), []).append([str(v), str(lab)])
    lines = []
    for e in explanations:
        rec = dict(e)
        rec.setdefault("sets", member.get((int(rec["layer"]), int(rec["neuron"])), []))
        lines.append(json.dumps(rec, ensure_ascii=False) + "\n")
    atomic_write_text(paths["neuron_explanations.jsonl"], "".join(lines))
    _plot_counts(summary["counts"], paths["neuron_counts.png"])
    return paths
