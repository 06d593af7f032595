"""A planted direction: does the extraction recover a direction that is really there?

A seeded random unit direction ``d`` is added, with strength ``s`` relative to the layer's mean residual norm,
to the residual stream at layer ``l`` on the **response tokens** of chosen responses, and the unchanged extraction
(response-token means → label groups → difference in means) is run on the result:

* **prompted path** — ``d`` added to the prompted responses the judge labels as expressing their target value:
  ``recovery_cos`` = mean over values of cos(v_prompt − v_int, d) at ``l``; it must clear ``null_cos_p95``, the
  95th percentile of the same statistic with strength 0 (over bootstrap resamples and other random directions);
* **intrinsic path** — a separate direction ``d_s`` per value added to the intrinsic responses labelled as
  expressing ``s``: ``intrinsic_cos`` = mean over values of cos(v_int(s) − v_prompt(s), d_s).

Why this is exact and cheap: at layer ``l`` a planted response's mean activation over its response tokens is its
natural mean plus ``s·‖h_l‖·d`` (the plant is a constant added to every response token), so the sensitivity curve
— recovery against strength and against the number of responses — is computed from the run's natural
activations plus the planted term, over bootstrap resamples of the responses. :func:`machinery_check` proves that
identity on the real model: it plants ``d`` with :func:`valuelens.hooks.add_vectors` (token-masked to the response
tokens) during a real capture and compares the captured means with natural + planted; it also reports how much of
``d`` survives to the last layer (the network carries it nonlinearly there).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..stats import mde, shifted_percentile_ci

__all__ = ["PlantData", "machinery_check", "planted_recovery", "random_unit"]


def random_unit(d_model: int, seed: int) -> np.ndarray:
    g = np.random.default_rng(seed)
    v = g.standard_normal(d_model)
    return v / np.linalg.norm(v)


@dataclass
class PlantData:
    """Response activations at one layer with their label groups (see :mod:`valuelens.analysis.resample`)."""

    x: np.ndarray  # [N, D]
    groups: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]  # (value, condition) -> (pos rows, neg rows)
    strata: np.ndarray  # [N] resampling cells
    values: list[str]
    norm: float  # mean residual norm at the layer (the unit of strength)


def _vectors(x: np.ndarray, groups: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]],
             w: np.ndarray) -> dict[tuple[str, str], np.ndarray]:
    out = {}
    for key, (pos, neg) in groups.items():
        sp, sn = w[pos].sum(), w[neg].sum()
        out[key] = (w[pos] @ x[pos] / sp - w[neg] @ x[neg] / sn) if sp > 0 and sn > 0 else np.full(x.shape[1],
                                                                                                    np.nan)
    return out


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 and np.isfinite(na) else float("nan")


def _plant(data: PlantData, path: str, strength: float, dirs: dict[str, np.ndarray]) -> np.ndarray:
    """The activations with the plant added (a copy)."""
    x = data.x.copy()
    amount = strength * data.norm
    for v in data.values:
        cond = "prompted" if path == "prompted" else "intrinsic"
        pos, _ = data.groups[(v, cond)]
        x[pos] += amount * dirs[v]
    return x


def _stat(x: np.ndarray, data: PlantData, path: str, dirs: dict[str, np.ndarray], w: np.ndarray) -> float:
    vec = _vectors(x, data.groups, w)
    cs = []
    for v in data.values:
        a, b = vec[(v, "prompted")], vec[(v, "intrinsic")]
        diff = a - b if path == "prompted" else b - a
        cs.append(_cos(diff, dirs[v]))
    cs = [c for c in cs if np.isfinite(c)]
    return float(np.mean(cs)) if cs else float("nan")


def _dirs(data: PlantData, path: str, seed: int) -> dict[str, np.ndarray]:
    d = data.x.shape[1]
    if path == "prompted":  # one direction for every value
        u = random_unit(d, seed)
        return dict.fromkeys(data.values, u)
    return {v: random_unit(d, seed + 1 + i) for i, v in enumerate(data.values)}


def planted_recovery(data: PlantData, *, path: str = "prompted", strength: float = 0.1, n_boot: int = 200,
                     seed: int = 0, fraction: float = 1.0, n_null_dirs: int = 20) -> dict[str, Any]:
    """Recovery of a planted direction at ``strength`` (relative) from a ``fraction`` of the responses:
    ``{"cos", "ci": [lo, hi], "se", "null_p95", "null_mean", "n"}``.

    The CI resamples the responses (within strata) and recomputes every vector (bias-adjusted: see the code); the
    null is the statistic with strength 0 over the same kind of resamples and ``n_null_dirs`` random directions.
    """
    rng = np.random.default_rng(seed)
    cells = [np.flatnonzero(data.strata == s) for s in dict.fromkeys(data.strata.tolist())]
    # A subsample of responses (fraction < 1) is a weight-0 mask on the rest.
    base_w = np.ones(len(data.x))
    if fraction < 1.0:
        keep = np.concatenate([rng.choice(c, max(2, round(fraction * len(c))), replace=False) for c in cells
                               if len(c)])
        base_w = np.zeros(len(data.x))
        base_w[keep] = 1.0
    dirs = _dirs(data, path, seed)
    x = _plant(data, path, strength, dirs)
    point = _stat(x, data, path, dirs, base_w)
    boot = []
    for _ in range(n_boot):
        idx = np.concatenate([c[rng.integers(0, len(c), len(c))] for c in cells])
        w = np.bincount(idx, minlength=len(data.x)).astype(float) * base_w
        boot.append(_stat(x, data, path, dirs, w))
    null = []
    for k in range(n_null_dirs):
        nd = _dirs(data, path, seed + 1000 * (k + 1))
        for _ in range(max(1, n_boot // n_null_dirs)):
            idx = np.concatenate([c[rng.integers(0, len(c), len(c))] for c in cells])
            w = np.bincount(idx, minlength=len(data.x)).astype(float) * base_w
            null.append(_stat(data.x, data, path, nd, w))
    b, nl = np.asarray(boot), np.asarray(null)
    b, nl = b[np.isfinite(b)], nl[np.isfinite(nl)]
    se = float(b.std(ddof=1)) if len(b) > 1 else float("nan")
    # A resample repeats responses, which adds noise to every group mean and so lowers the cosine: the bootstrap
    # distribution sits below the point estimate. The interval is its percentile interval moved by that bias,
    # i.e. the spread of the statistic around the point estimate at this many responses.
    lo, hi, shift = shifted_percentile_ci(b, point)
    return {"cos": point, "ci": [lo, hi] if len(b) >= 10 else [float("nan"), float("nan")], "bootstrap_bias": shift,
            "se": se, "mde": mde(se), "null_p95": float(np.quantile(nl, 0.95)) if len(nl) else float("nan"),
            "null_mean": float(nl.mean()) if len(nl) else float("nan"), "n": int(base_w.sum()),
            "strength": strength, "fraction": fraction}


def machinery_check(lm: Any, records: Sequence[dict[str, Any]], layer: int, direction: np.ndarray,
                    amount: float, *, batch_size: int = 8) -> dict[str, float]:
    """Plant ``amount·direction`` with the real hooks on the response tokens of ``records`` during a capture
    and compare with natural + planted at ``layer``; also the cosine of the planted shift with ``direction`` at
    the last layer. Returns ``max_abs_diff`` (should be float32 round-off), ``last_layer_cos``."""
    from ..hooks import add_vectors, forward_capture

    tok = lm.tokenizer
    d = torch.as_tensor(direction, dtype=torch.float32)
    last = lm.spec.n_layers - 1
    diffs, shifts = [], []
    for s in range(0, len(records), batch_size):
        part = records[s:s + batch_size]
        seqs = [list(r["prompt_ids"]) + list(r["response_ids"]) for r in part]
        n_resp = [len(r["response_ids"]) for r in part]
        width = max(len(x) for x in seqs)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        ids = torch.full((len(seqs), width), int(pad), dtype=torch.long)
        am = torch.zeros_like(ids)
        mask = torch.zeros_like(ids, dtype=torch.bool)
        for i, (q, n) in enumerate(zip(seqs, n_resp, strict=True)):
            ids[i, width - len(q):] = torch.tensor(q)
            am[i, width - len(q):] = 1
            mask[i, width - n:] = True
        ids, am, mask = ids.to(lm.device), am.to(lm.device), mask.to(lm.device)
        with torch.no_grad():
            nat = forward_capture(lm.model, ids, am, token_mask=mask, layers=[layer, last], spec=lm.spec)
            with add_vectors(lm.model, {layer: d * amount}, token_mask=mask, spec=lm.spec):
                pl = forward_capture(lm.model, ids, am, token_mask=mask, layers=[layer, last], spec=lm.spec)
        diffs.append((pl[:, 0] - (nat[:, 0] + d.to(nat.device) * amount)).abs().max().item())
        shifts.append((pl[:, 1] - nat[:, 1]).mean(0).cpu().numpy())
    shift = np.mean(shifts, axis=0)
    return {"max_abs_diff": float(max(diffs)), "relative_diff": float(max(diffs) / max(amount, 1e-12)),
            "last_layer_cos": _cos(shift.astype(np.float64), np.asarray(direction, dtype=np.float64)),
            "n_records": len(records)}
