"""Capability guard for steering: perplexity, multiple-choice accuracy, residual norms, relative α, choosing α.

**α relative to the residual norm.** :func:`relative_steer` builds a :class:`~valuelens.hooks.Steer` that adds
``alpha_rel · mean‖h_l‖ · v̂`` to the residual stream at layer l, where v̂ is the unit steering direction and
mean‖h_l‖ is the mean Euclidean norm of that layer's residual stream over ordinary tokens
(:func:`residual_norms`). So ``alpha_rel = 1`` adds a vector as long as a typical residual vector at that layer,
whatever the layer, the model or the raw length of v. This makes α comparable across layers (in SmolLM2 the
mean norm grows from ~47 at layer 0 to ~830 at layer 29) and across models. The first token of every text
is left out of the mean: it is an "attention sink" whose norm is 100× the others in many models (22,800 vs ~170
in SmolLM2's middle layers) and would otherwise dominate the mean.

**Capability loss** (:func:`choose_alpha`), always against the unsteered model:

* ``metric="mc"`` — accuracy on the shipped four-option multiple-choice set, each option scored as the
  assistant's reply by its summed log-probability (:mod:`valuelens.evals.scoring`; options are not listed in
  the prompt). Loss = baseline accuracy − steered accuracy, in accuracy units: ``max_loss=0.05`` = 5 points.
* ``metric="ppl"`` — perplexity of held-out prose (:func:`perplexity`). Loss = steered / baseline − 1, a relative
  increase: ``max_loss=0.05`` = 5 % higher perplexity.

The chosen α is the largest magnitude in the sweep such that it *and every smaller magnitude* (same sign) stay
within the loss and produce text — i.e. the last α before capability first breaks, which is robust to a noisy
metric recovering at a larger α by chance. Positive and negative α are judged as separate sweeps.

**Degenerate steering.** A strong enough steer makes a model emit only end-of-turn/special tokens, or NaN
activations, or near-random next-token predictions. :func:`produces_text` generates a few greedy tokens and
checks for visible text; :func:`choose_alpha` flags every α whose generations are empty, whose perplexity
exceeds ``explode_factor`` × baseline, or whose forward pass gives non-finite numbers, marks it as not
eligible, and keeps going (the sweep table says why). :func:`assert_produces_text` raises
:class:`DegenerateOutputError` instead.

>>> import torch
>>> v = torch.tensor([3.0, 4.0])
>>> s = relative_steer(v, layer=2, alpha_rel=0.5, mean_norm=10.0)
>>> s.vector.tolist(), s.alpha, s.layers
([6.0, 8.0], 0.5, (2,))
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..errors import ConfigError, ModelError
from ..hooks import (
    Intervention,
    Positions,
    Steer,
    apply_interventions,
    forward_capture,
    left_pad_position_ids,
)
from ..models import NO_SYSTEM, LoadedModel
from .items import MCItem, load_capability_mc, load_heldout_text
from .scoring import ScoreKind, option_logprobs, option_logprobs_conditions

__all__ = [
    "AlphaChoice",
    "CapabilityMetric",
    "DegenerateOutputError",
    "assert_produces_text",
    "choose_alpha",
    "mc_accuracy",
    "mc_answers",
    "mc_answers_many",
    "nll_windows",
    "perplexity",
    "produces_text",
    "random_direction_like",
    "relative_steer",
    "residual_norms",
]

#: Prompts used to check that a steered model still writes something.
DEFAULT_TEXT_PROBES: tuple[str, ...] = ("Tell me about your weekend plans.", "What is a good way to learn to cook?")


class DegenerateOutputError(ModelError):
    """The model produces no text (only special tokens), non-finite numbers or exploding perplexity."""


# ------------------------------------------------------------------------------------------------ perplexity


def perplexity(lm: LoadedModel, text: str | None = None, window: int = 256,
               interventions: Sequence[Intervention] = (), *, stride: int | None = None, batch_size: int = 8,
               max_tokens: int | None = None) -> float:
    """Perplexity of ``text`` (default: the shipped held-out prose) by sliding windows.

    The text is tokenised once (plain text, no chat template, no added special tokens). Windows of ``window``
    tokens start every ``stride`` tokens (default ``window // 2``); each window scores only the tokens the
    previous one did not, so every token after the first is scored exactly once with at least
    ``window − stride`` tokens of context (the first window's tokens with less). Returns exp(mean NLL);
    ``math.inf`` if the model gives non-finite log-probabilities (e.g. NaN under an extreme steer).
    ``max_tokens`` truncates the text (for quick sweeps).
    """
    if window < 2:
        raise ConfigError("window must be at least 2 tokens")
    stride = window // 2 if stride is None else stride
    if not 1 <= stride <= window - 1:
        raise ConfigError(f"stride must be in 1..{window - 1} (windows must overlap by a token), got {stride}")
    text = load_heldout_text() if text is None else text
    ids = list(lm.tokenizer(text, add_special_tokens=False).input_ids)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ConfigError("the text is too short for perplexity (fewer than 2 tokens)")
    # (start, first scored index within window) per window
    spans: list[tuple[int, int]] = []
    scored_until = 1  # token 0 has no context and is never scored
    start = 0
    while scored_until < len(ids):
        end = min(start + window, len(ids))
        spans.append((start, scored_until - start))
        scored_until = end
        if end == len(ids):
            break
        start += stride
    nll, n = 0.0, 0
    dev = lm.device
    with torch.no_grad(), apply_interventions(lm.model, interventions, spec=lm.spec):
        for b in range(0, len(spans), batch_size):
            chunk = spans[b:b + batch_size]
            seqs = [ids[s:s + window] for s, _ in chunk]
            width = max(len(s) for s in seqs)
            pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
            x = torch.full((len(seqs), width), int(pad), dtype=torch.long)
            m = torch.zeros((len(seqs), width), dtype=torch.long)
            for r, s in enumerate(seqs):
                x[r, width - len(s):] = torch.tensor(s)
                m[r, width - len(s):] = 1
            x, m = x.to(dev), m.to(dev)
            logits = lm.model(input_ids=x, attention_mask=m, position_ids=left_pad_position_ids(m),
                              use_cache=False).logits
            for r, ((_, first), s) in enumerate(zip(chunk, seqs, strict=True)):
                off = width - len(s)
                pos = torch.arange(off + first, width, device=dev)  # positions of scored tokens
                lg = logits[r, pos - 1].float()
                lp = lg.gather(-1, x[r, pos][:, None])[:, 0] - torch.logsumexp(lg, dim=-1)
                if not torch.isfinite(lp).all():
                    return math.inf
                nll -= float(lp.sum())
                n += len(pos)
    return float(math.exp(nll / n)) if nll / n < 700 else math.inf


# ------------------------------------------------------------------------------------------ multiple choice


def mc_answers(lm: LoadedModel, items: Sequence[MCItem] | None = None,
               interventions: Sequence[Intervention] = (), *, system: str = NO_SYSTEM, batch_size: int = 8,
               score: ScoreKind = "sum") -> list[dict[str, Any]]:
    """Answer each multiple-choice question by option log-probability; one record per item.

    The question is the user message; each option is scored as the assistant's complete reply (options are not
    listed in the prompt, so order does not matter). Record: ``id, prediction, answer, correct, probs``.
    """
    items = load_capability_mc() if items is None else list(items)
    if not items:
        raise ConfigError("no multiple-choice items given")
    prompts = [lm.chat.render(it.question, system) for it in items]
    lps = option_logprobs(lm, prompts, [list(it.options) for it in items], batch_size=batch_size,
                          interventions=interventions)
    out = []
    for it, lp in zip(items, lps, strict=True):
        p = lp.probs(score)
        k = int(np.argmax(p))
        out.append({"id": it.id, "prediction": k, "answer": it.answer, "correct": k == it.answer,
                    "probs": p.tolist()})
    return out


def mc_answers_many(lm: LoadedModel, items: Sequence[MCItem] | None,
                    conditions: Mapping[str, Sequence[Intervention]], *, system: str = NO_SYSTEM,
                    batch_size: int = 8, score: ScoreKind = "sum") -> dict[str, list[dict[str, Any]]]:
    """:func:`mc_answers` under several intervention sets at once (shared unsteered passes, single-layer steers
    replayed from their layer: :func:`valuelens.evals.scoring.option_logprobs_conditions`). Each record also has
    ``p_correct``, the probability of the right answer among the options — a continuous accuracy whose mean moves
    in steps far finer than one item."""
    items = load_capability_mc() if items is None else list(items)
    if not items:
        raise ConfigError("no multiple-choice items given")
    prompts = [lm.chat.render(it.question, system) for it in items]
    by = option_logprobs_conditions(lm, prompts, [list(it.options) for it in items], conditions,
                                    batch_size=batch_size)
    out: dict[str, list[dict[str, Any]]] = {}
    for name, lps in by.items():
        recs = []
        for it, lp in zip(items, lps, strict=True):
            p = lp.probs(score)
            k = int(np.argmax(p))
            recs.append({"id": it.id, "prediction": k, "answer": it.answer, "correct": k == it.answer,
                         "p_correct": float(p[it.answer]), "probs": p.tolist()})
        out[name] = recs
    return out


def nll_windows(lm: LoadedModel, conditions: Mapping[str, Sequence[Intervention]], text: str | None = None, *,
                window: int = 128, max_tokens: int | None = 4096, batch_size: int = 8) -> dict[str, np.ndarray]:
    """Held-out language-modelling loss under each intervention set: ``{name: [n_windows, 2]}`` rows of
    (summed NLL, tokens scored) per non-overlapping window of ``text`` (default: the shipped held-out prose, its
    first ``max_tokens`` tokens). Perplexity = exp(ΣNLL / Σtokens); the windows are the units a CI resamples.

    Single-layer steers are replayed from their layer on the traced unsteered pass (exact, cheaper); anything else
    runs the model under its interventions. A non-finite log-probability gives ``inf`` for that window.
    """
    from ..hooks import can_replay, replay_from_layer, steer_delta, trace_from_layer

    text = load_heldout_text() if text is None else text
    ids = list(lm.tokenizer(text, add_special_tokens=False).input_ids)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < window:
        raise ConfigError(f"the text has {len(ids)} tokens, fewer than one window of {window}")
    wins = [ids[s:s + window] for s in range(0, len(ids) - window + 1, window)]
    fast: dict[str, tuple[int, torch.Tensor]] = {}
    if can_replay(lm.model, spec=lm.spec):
        for name, ivs in conditions.items():
            sd = steer_delta(ivs, lm.spec.d_model) if ivs else None
            if sd is not None and sd[1].ndim == 1:
                fast[name] = (lm.spec.check_layer(sd[0]), sd[1])
    layers = sorted({layer for layer, _ in fast.values()})
    out: dict[str, list[list[float]]] = {n: [] for n in conditions}

    def nll(logits: torch.Tensor, x: torch.Tensor) -> list[list[float]]:
        lg = logits[:, :-1].float()
        lp = lg.gather(-1, x[:, 1:, None])[..., 0] - torch.logsumexp(lg, dim=-1)  # [B, T-1]
        tot = -lp.sum(dim=1)
        return [[float(t) if torch.isfinite(t) else math.inf, float(x.shape[1] - 1)] for t in tot]
    model, dev = lm.model, lm.device
    with torch.no_grad():
        for b in range(0, len(wins), batch_size):
            x = torch.tensor(wins[b:b + batch_size], dtype=torch.long, device=dev)
            with contextlib.ExitStack() as stack:
                traces = {layer: stack.enter_context(trace_from_layer(model, layer, spec=lm.spec)) for layer in layers}
                base = model(input_ids=x, use_cache=False).logits if (
                    layers or any(not ivs for ivs in conditions.values())) else None
            for name, ivs in conditions.items():
                if not ivs and base is not None:
                    out[name] += nll(base, x)
                elif name in fast:
                    layer, delta = fast[name]
                    t = traces[layer][0]
                    logits = replay_from_layer(model, t, t.hidden + delta.to(t.hidden.device, t.hidden.dtype),
                                               spec=lm.spec)
                    out[name] += nll(logits, x)
                else:
                    with apply_interventions(model, ivs, spec=lm.spec):
                        out[name] += nll(model(input_ids=x, use_cache=False).logits, x)
    return {n: np.asarray(v, dtype=np.float64) for n, v in out.items()}


def mc_accuracy(lm: LoadedModel, items: Sequence[MCItem] | None = None,
                interventions: Sequence[Intervention] = (), **kwargs: Any) -> float:
    """Accuracy (0..1) on the multiple-choice set (default: the shipped 100 questions; chance = 0.25)."""
    res = mc_answers(lm, items, interventions, **kwargs)
    return float(np.mean([r["correct"] for r in res]))


# ----------------------------------------------------------------------------------- norms and relative α


def residual_norms(lm: LoadedModel, texts: Sequence[str] | None = None, layers: Sequence[int] | None = None, *,
                   batch_size: int = 8, max_length: int = 128, skip_first: bool = True) -> np.ndarray:
    """Mean ‖h_l‖ over tokens at each layer → ``[L]`` (float64), layers in ascending order (default: all).

    ``texts`` default to the paragraphs of the shipped held-out prose; each is truncated to ``max_length``
    tokens. The mean is over all tokens of all texts (token-weighted); ``skip_first`` leaves out each text's
    first token (the attention sink, see the module docstring).
    """
    if texts is None:
        texts = [p for p in load_heldout_text().split("\n\n") if p.strip()]
    texts = list(texts)
    if not texts:
        raise ConfigError("no texts given for residual norms")
    layer_ids = lm.spec.check_layers(layers)
    tok = lm.tokenizer
    total = np.zeros(len(layer_ids), dtype=np.float64)
    count = 0
    for b in range(0, len(texts), batch_size):
        enc = tok(texts[b:b + batch_size], return_tensors="pt", padding=True, truncation=True,
                  max_length=max_length, add_special_tokens=False)
        am = enc["attention_mask"]
        mask = am.bool().clone()
        if skip_first:
            first = am.long().argmax(dim=1)  # index of the first real token (left or right padding)
            mask[torch.arange(am.shape[0]), first] = False
        acts = forward_capture(lm.model, enc["input_ids"].to(lm.device), am.to(lm.device),
                               token_mask=mask.to(lm.device), layers=layer_ids, reduction="all", spec=lm.spec)
        for a in acts:  # [T_b, L, D]
            total += a.norm(dim=-1).sum(dim=0).double().cpu().numpy()
            count += a.shape[0]
    if count == 0:
        raise ConfigError("no tokens left to measure (texts too short?)")
    return total / count


def relative_steer(v: torch.Tensor | np.ndarray, layer: int, alpha_rel: float,
                   mean_norm: float | Sequence[float] | np.ndarray | Mapping[int, float], *,
                   positions: Positions = "all") -> Steer:
    """``h ← h + alpha_rel · mean‖h_layer‖ · v̂`` at ``layer`` as a :class:`~valuelens.hooks.Steer`.

    ``mean_norm``: the layer's mean residual norm, or the whole ``[L]`` array from :func:`residual_norms`
    (indexed by ``layer``), or ``{layer: norm}``. The Steer's ``vector`` is ``mean_norm · v̂`` and its ``alpha``
    is ``alpha_rel``, so sweeping ``alpha`` later keeps the relative meaning.
    """
    vec = torch.as_tensor(v).detach().float().flatten() if not isinstance(v, torch.Tensor) else v.detach().float()
    if vec.ndim != 1:
        raise ConfigError(f"steering vector must be 1-D, got shape {tuple(vec.shape)}")
    n = float(vec.norm())
    if not math.isfinite(n) or n == 0.0:
        raise ConfigError("cannot steer along a zero (or non-finite) vector")
    if isinstance(mean_norm, Mapping):
        if layer not in mean_norm:
            raise ConfigError(f"no mean residual norm for layer {layer}")
        scale = float(mean_norm[layer])
    elif np.ndim(mean_norm) == 0:
        scale = float(mean_norm)  # type: ignore[arg-type]
    else:
        arr = np.asarray(mean_norm, dtype=np.float64)
        if not -len(arr) <= layer < len(arr):
            raise ConfigError(f"layer {layer} is outside the {len(arr)} residual norms given")
        scale = float(arr[layer])
    if not scale > 0:
        raise ConfigError(f"mean residual norm must be positive, got {scale}")
    return Steer(vector=vec / n * scale, layers=(int(layer),), alpha=float(alpha_rel), positions=positions)


def random_direction_like(v: torch.Tensor | np.ndarray, seed: int = 0) -> torch.Tensor:
    """A random direction with the same norm as ``v`` (per row for ``[..., D]``): the control for a steer.

    Gaussian, normalised, then scaled to ``‖v‖``; deterministic in ``seed``; same shape and float dtype as ``v``.
    """
    t = torch.as_tensor(v)
    dtype = t.dtype if t.is_floating_point() else torch.float32
    g = torch.Generator().manual_seed(int(seed))
    r = torch.randn(t.shape, generator=g, dtype=torch.float64)
    norm_v = t.double().norm(dim=-1, keepdim=True)
    r = r / r.norm(dim=-1, keepdim=True) * norm_v
    return r.to(dtype)


# ------------------------------------------------------------------------------------ degenerate output


def produces_text(lm: LoadedModel, interventions: Sequence[Intervention] = (),
                  prompts: Sequence[str] = DEFAULT_TEXT_PROBES, *, max_new_tokens: int = 12,
                  system: str = NO_SYSTEM) -> tuple[bool, list[str]]:
    """Greedy-generate a few tokens per probe under ``interventions``: (any visible text?, the responses).

    "Visible" = not empty after removing special tokens and whitespace. Non-finite activations count as no text.
    """
    from ..generate import GenerationConfig, generate_batch

    cfg = GenerationConfig(max_new_tokens=max_new_tokens, batch_size=len(prompts))
    rendered = [lm.chat.render(p, system).text for p in prompts]
    try:
        res = generate_batch(lm, rendered, cfg, interventions=interventions)
    except RuntimeError as exc:  # e.g. sampling/argmax on NaN logits in some backends
        return False, [f"<error: {str(exc)[:80]}>"]
    texts = [r["response"] for r in res]
    return any(t.strip() for t in texts), texts


def assert_produces_text(lm: LoadedModel, interventions: Sequence[Intervention] = (), **kwargs: Any) -> list[str]:
    """Like :func:`produces_text` but raise :class:`DegenerateOutputError` when nothing visible comes out."""
    ok, texts = produces_text(lm, interventions, **kwargs)
    if not ok:
        raise DegenerateOutputError(
            "under these interventions the model produces no text (only end-of-turn/special tokens); "
            "lower the steering strength α")
    return texts


# ------------------------------------------------------------------------------------------- choosing α


@dataclass(frozen=True)
class CapabilityMetric:
    """A capability score under interventions, and how to turn it into a loss against the baseline.

    ``fn(interventions) -> score``. ``higher_is_better``: accuracy-like (True) or perplexity-like (False).
    ``relative``: loss as a relative change (perplexity) instead of an absolute difference (accuracy).
    """

    fn: Callable[[Sequence[Intervention]], float]
    higher_is_better: bool = True
    relative: bool = False
    name: str = "custom"

    def loss(self, baseline: float, value: float) -> float:
        if not math.isfinite(value):
            return math.inf
        diff = baseline - value if self.higher_is_better else value - baseline
        if self.relative:
            return diff / abs(baseline) if baseline != 0 else math.inf
        return diff


@dataclass
class AlphaChoice:
    """Result of :func:`choose_alpha`: the chosen α, the baseline score and the whole sweep.

    ``table``: one dict per α (sweep order): ``alpha, score, loss, within_loss, produces_text, degenerate,
    reason, eligible, sample``. Positive and negative α are separate sweeps (they steer opposite ways):
    ``alpha`` is the choice among α ≥ 0 (among α ≤ 0 if the sweep has no positive α) and ``alpha_negative``
    the choice among α ≤ 0 when negative α were swept. ``alpha`` is 0.0 when no swept α of its sign is
    eligible (``none_eligible`` is then True).
    """

    alpha: float
    baseline: float
    metric: str
    max_loss: float
    table: list[dict[str, Any]] = field(default_factory=list)
    none_eligible: bool = False
    alpha_negative: float | None = None

    @property
    def degenerate_alphas(self) -> list[float]:
        return [r["alpha"] for r in self.table if r["degenerate"]]

    def to_frame(self) -> Any:
        import pandas as pd

        return pd.DataFrame(self.table)


def _metric(lm: LoadedModel, metric: Literal["mc", "ppl"] | CapabilityMetric, mc_items: Sequence[MCItem] | None,
            text: str | None, ppl_max_tokens: int | None, batch_size: int) -> CapabilityMetric:
    if isinstance(metric, CapabilityMetric):
        return metric
    if metric == "mc":
        items = load_capability_mc() if mc_items is None else list(mc_items)
        return CapabilityMetric(lambda ivs: mc_accuracy(lm, items, ivs, batch_size=batch_size),
                                higher_is_better=True, relative=False, name="mc")
    if metric == "ppl":
        return CapabilityMetric(lambda ivs: perplexity(lm, text, interventions=ivs, max_tokens=ppl_max_tokens,
                                                       batch_size=batch_size),
                                higher_is_better=False, relative=True, name="ppl")
    raise ConfigError(f"metric must be 'mc', 'ppl' or a CapabilityMetric, got {metric!r}")


def choose_alpha(lm: LoadedModel, make_interventions: Callable[[float], Sequence[Intervention]],
                 alphas: Sequence[float], metric: Literal["mc", "ppl"] | CapabilityMetric = "mc",
                 max_loss: float = 0.05, *, check_text: bool = True, explode_factor: float = 10.0,
                 mc_items: Sequence[MCItem] | None = None, text: str | None = None,
                 ppl_max_tokens: int | None = None, batch_size: int = 8,
                 text_probes: Sequence[str] = DEFAULT_TEXT_PROBES, stop_early: bool = False,
                 baseline_score: float | None = None) -> AlphaChoice:
    """Sweep ``alphas`` and return the largest α whose capability loss vs the unsteered model is ≤ ``max_loss``.

    ``make_interventions(alpha)`` builds the interventions for one α (e.g.
    ``lambda a: [relative_steer(v, 12, a, norms)]``). The baseline is the model with no interventions.
    Loss: ``"mc"`` accuracy points as a fraction (0.05 = 5 points), ``"ppl"`` relative perplexity increase
    (0.05 = +5 %), or a :class:`CapabilityMetric`. An α is *eligible* when its loss is within ``max_loss`` and it
    is not degenerate (no visible text when ``check_text``, non-finite numbers, or — for perplexity-like
    metrics — a score beyond ``explode_factor`` × baseline). The chosen α is the largest magnitude such that it
    and all smaller magnitudes of the same sign are eligible (see :class:`AlphaChoice` for negative α).
    Degenerate α are flagged in the table, never raised.

    ``stop_early`` sweeps positive α in increasing order and stops at the first ineligible one (larger α cannot
    be chosen then), for guarding many directions cheaply; the table then lacks the unswept α.
    ``baseline_score``: the unsteered score from an earlier call with the same metric and items (saves a pass).
    """
    if not alphas:
        raise ConfigError("no α values to sweep")
    if max_loss < 0:
        raise ConfigError("max_loss must be >= 0")
    m = _metric(lm, metric, mc_items, text, ppl_max_tokens, batch_size)
    baseline = float(m.fn(())) if baseline_score is None else float(baseline_score)
    if stop_early:
        alphas = sorted(float(a) for a in alphas if a > 0)
        if not alphas:
            raise ConfigError("stop_early sweeps positive α only; give at least one α > 0")
    if not math.isfinite(baseline):
        raise DegenerateOutputError(f"the unsteered model's {m.name} score is not finite ({baseline})")
    table: list[dict[str, Any]] = []
    for a in alphas:
        a = float(a)
        ivs = list(make_interventions(a))
        reasons: list[str] = []
        try:
            score = float(m.fn(ivs))
        except ModelError as exc:  # non-finite logits in option scoring
            score, reasons = math.nan, [f"error: {exc}"]
        if not math.isfinite(score):
            if not reasons:
                reasons.append("non-finite score")
        elif not m.higher_is_better and baseline > 0 and score > explode_factor * baseline:
            reasons.append(f"{m.name} exploded ({score:.4g} > {explode_factor:g} × baseline {baseline:.4g})")
        ok_text, sample = True, []
        if check_text:
            ok_text, sample = produces_text(lm, ivs, text_probes)
            if not ok_text:
                reasons.append("produces no text (only special tokens)")
        loss = m.loss(baseline, score) if math.isfinite(score) else math.inf
        within = loss <= max_loss + 1e-12
        degenerate = bool(reasons)
        table.append({"alpha": a, "score": score, "loss": loss, "within_loss": within, "produces_text": ok_text,
                      "degenerate": degenerate, "reason": "; ".join(reasons), "eligible": within and not degenerate,
                      "sample": sample[0] if sample else ""})
        if stop_early and not table[-1]["eligible"]:
            break
    pos, none_pos = _walk([r for r in table if r["alpha"] >= 0])
    neg, none_neg = _walk([r for r in table if r["alpha"] <= 0])
    has_pos = any(r["alpha"] > 0 for r in table)
    has_neg = any(r["alpha"] < 0 for r in table)
    if has_pos or not has_neg:
        alpha, none = pos, none_pos
    else:
        alpha, none = neg, none_neg
    return AlphaChoice(alpha=alpha, baseline=baseline, metric=m.name, max_loss=max_loss, table=table,
                       none_eligible=none, alpha_negative=neg if has_neg else None)


def _walk(rows: list[dict[str, Any]]) -> tuple[float, bool]:
    """Largest |α| such that it and every smaller |α| in ``rows`` (one sign) is eligible; (0.0, True) if none."""
    chosen, none = 0.0, True
    for r in sorted(rows, key=lambda r: abs(r["alpha"])):
        if not r["eligible"]:
            break
        chosen, none = r["alpha"], False
    return chosen, none
