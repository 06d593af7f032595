"""Judge-free measurement: the log-probability of fixed answer options as the model's reply to a prompt.

Given rendered chat prompts (ending with the assistant header, e.g. ``…<|im_start|>assistant\\n``) and, per prompt,
a list of answer options, :func:`option_logprobs` returns for every option the log-probability that the model
answers exactly that option, computed by teacher forcing under any set of interventions.

How it is computed:

* **Options are continuations, never listed in the prompt.** Each option is scored on its own as the
  assistant's reply, so the result for an option does not depend on which other options exist or in which
  order they are given: the scorer is invariant to option order *by construction*.
* **The answer is closed by the end-of-turn token** (``<|im_end|>``, ``<|eot_id|>``, … read off the chat
  template; the EOS token when the template has none). Without it an option that is a prefix of another
  ("Not like me" / "Not like me at all") would always be at least as likely as the longer one. With it the
  options form a prefix-free set of complete replies, and the softmax of their summed log-probabilities is the
  model's distribution over those replies, renormalised to the set.
* **Sum vs mean.** Both are returned. ``sum`` (the log-probability of the whole reply) is what the
  questionnaire and the multiple-choice guard use by default, for the reason above: it is a proper
  log-probability, so ``softmax(sum)`` is a distribution over answers. ``mean`` (sum / number of scored tokens)
  is the usual length-normalised alternative for options of very different lengths; it is not a probability.
* **Prompt sharing.** Each prompt is run once (batched, left padded, position ids from the attention mask via
  :func:`valuelens.hooks.left_pad_position_ids`, so padding changes nothing) with a KV cache; the cache is then
  repeated once per option and all options of the batch are scored in a single second pass (right padded). This
  costs one pass over the prompts plus one over the short option tokens, instead of one full pass per option.
  ``share_prefix=False`` scores every prompt+option sequence in full (the brute-force reference; tests check the
  two agree).
* **Common prefix.** Tokens every prompt of a batch starts with (the chat template's system turn and user
  header) run once per batch in a pass of their own; the prompts continue from that cache. Skipped under
  interventions that tell prefill from decoding (``Steer(positions="prompt"|"generated")``), for which the
  remainder would look like decoding steps.
* **Interventions** are applied with :func:`valuelens.hooks.apply_interventions` around both passes. With the
  shared prefix the option pass runs with a filled KV cache, so it counts as a *decoding* step for the hooks:
  a :class:`~valuelens.hooks.Steer` with ``positions="prompt"`` touches only the prompt and
  ``positions="generated"`` only the answer tokens — exactly as during generation. ``"all"`` (the default)
  touches both. With ``share_prefix=False`` there is a single pass, treated as a prefill.

>>> from valuelens.evals.scoring import softmax
>>> softmax([0.0, 0.0]).tolist()
[0.5, 0.5]
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, ModelError
from ..hooks import Intervention, apply_interventions, cache_kwarg, left_pad_position_ids
from ..models import LoadedModel, RenderedPrompt

__all__ = [
    "OptionLogprobs",
    "ScoreKind",
    "common_prefix_len",
    "end_of_turn_id",
    "option_logprobs",
    "option_logprobs_conditions",
    "prefix_safe",
    "softmax",
]

ScoreKind = Literal["sum", "mean"]
_EOT_PROBE = "\x01VALUELENS-ANSWER\x01"


@dataclass(frozen=True)
class OptionLogprobs:
    """Log-probabilities of one prompt's options, in the order the options were given.

    ``sum[i]``: log P(option i + end-of-turn | prompt); ``mean[i]`` = ``sum[i] / n_tokens[i]``;
    ``n_tokens[i]``: tokens scored (option tokens plus the end-of-turn token when used).
    """

    sum: np.ndarray
    mean: np.ndarray
    n_tokens: np.ndarray

    def get(self, kind: ScoreKind = "sum") -> np.ndarray:
        if kind not in ("sum", "mean"):
            raise ConfigError(f"score kind must be 'sum' or 'mean', got {kind!r}")
        return self.sum if kind == "sum" else self.mean

    def probs(self, kind: ScoreKind = "sum") -> np.ndarray:
        """Softmax over the options (a distribution over the given answers)."""
        return softmax(self.get(kind))


def softmax(x: Sequence[float] | np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D array (float64)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ConfigError("softmax needs a non-empty 1-D array")
    a = a - a.max()
    e = np.exp(a)
    return e / e.sum()


def end_of_turn_id(lm: LoadedModel) -> int:
    """The token that closes an assistant turn: read off the chat template, else the tokenizer's EOS.

    Renders ``[user, assistant=PROBE]`` and takes the first token after the probe (``<|im_end|>`` for ChatML,
    ``<|eot_id|>`` for Llama 3, ``<end_of_turn>`` for Gemma).
    """
    tok = lm.tokenizer
    eot: int | None = None
    if getattr(tok, "chat_template", None):
        with contextlib.suppress(Exception):
            text = tok.apply_chat_template(
                [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": _EOT_PROBE}],
                tokenize=False, add_generation_prompt=False)
            i = text.find(_EOT_PROBE)
            suffix = text[i + len(_EOT_PROBE):] if i >= 0 else ""
            ids = tok(suffix, add_special_tokens=False).input_ids if suffix.strip() else []
            if ids:
                eot = int(ids[0])
    if eot is None:
        eot = tok.eos_token_id
    if eot is None:
        raise ModelError("cannot tell which token ends the assistant's turn (no chat template suffix, no EOS token);"
                         " score options with end_of_turn=False")
    return int(eot)


def _prompt_text(p: str | RenderedPrompt) -> str:
    if isinstance(p, RenderedPrompt):
        return p.text
    if not isinstance(p, str):
        raise ConfigError(f"prompts must be rendered prompt texts (str) or RenderedPrompt, got {type(p).__name__}")
    return p


def _encode(tok: Any, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False).input_ids)


def _pad_id(lm: LoadedModel) -> int:
    pid = lm.tokenizer.pad_token_id
    if pid is None:
        pid = lm.tokenizer.eos_token_id
    return int(pid) if pid is not None else 0


def _accepts(model: Any, name: str) -> bool:
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - exotic wrappers
        return False


def option_logprobs(lm: LoadedModel, prompts: Sequence[str | RenderedPrompt], options: Sequence[Sequence[str]],
                    batch_size: int = 8, interventions: Sequence[Intervention] = (), *,
                    end_of_turn: bool = True, share_prefix: bool = True, bf16: bool = False
                    ) -> list[OptionLogprobs]:
    """Log-probability of each option as the assistant's reply to each rendered prompt.

    ``prompts[i]`` is a rendered chat prompt (``lm.chat.render(...)`` or its ``.text``) ending where the
    assistant's reply starts; ``options[i]`` are that prompt's answer options. ``batch_size`` counts prompts per
    forward pass (all their options go in the second pass together). Returns one :class:`OptionLogprobs` per
    prompt (see the module docstring for ``sum`` vs ``mean``, the end-of-turn token and how interventions see
    the two passes).
    """
    if len(prompts) != len(options):
        raise ConfigError(f"got {len(prompts)} prompts but {len(options)} option lists")
    if batch_size < 1:
        raise ConfigError("batch_size must be >= 1")
    p_ids, o_ids = _encode_all(lm, prompts, options, end_of_turn)

    out: list[OptionLogprobs] = []
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    safe = prefix_safe(interventions)
    with torch.no_grad(), autocast, apply_interventions(lm.model, interventions, spec=lm.spec):
        for start in range(0, len(p_ids), batch_size):
            sl = slice(start, start + batch_size)
            out += _to_logprobs(_score_shared(lm, p_ids[sl], o_ids[sl], common_prefix=safe) if share_prefix
                                else _score_full(lm, p_ids[sl], o_ids[sl]))
    return out


def _encode_all(lm: LoadedModel, prompts: Sequence[str | RenderedPrompt], options: Sequence[Sequence[str]],
                end_of_turn: bool) -> tuple[list[list[int]], list[list[list[int]]]]:
    tok = lm.tokenizer
    eot = [end_of_turn_id(lm)] if end_of_turn else []
    p_ids = []
    for p in prompts:
        ids = _encode(tok, _prompt_text(p))
        if not ids:
            raise ConfigError("a prompt tokenises to nothing; score options after a non-empty prompt")
        p_ids.append(ids)
    o_ids: list[list[list[int]]] = []
    for i, opts in enumerate(options):
        if isinstance(opts, str) or len(opts) == 0:
            raise ConfigError(f"prompt {i}: options must be a non-empty list of strings")
        row = []
        for o in opts:
            ids = _encode(tok, o) if o else []
            if not ids:
                raise ConfigError(f"prompt {i}: option {o!r} tokenises to nothing")
            row.append(ids + eot)
        o_ids.append(row)
    return p_ids, o_ids


def _to_logprobs(lps: list[list[Tensor]]) -> list[OptionLogprobs]:
    out = []
    for row_lp in lps:
        s = np.array([float(x.sum()) for x in row_lp], dtype=np.float64)
        n = np.array([len(x) for x in row_lp], dtype=np.int64)
        out.append(OptionLogprobs(sum=s, mean=s / n, n_tokens=n))
    return out


def option_logprobs_conditions(lm: LoadedModel, prompts: Sequence[str | RenderedPrompt],
                               options: Sequence[Sequence[str]],
                               conditions: Mapping[str, Sequence[Intervention]], batch_size: int = 8, *,
                               end_of_turn: bool = True, replay: bool = True) -> dict[str, list[OptionLogprobs]]:
    """:func:`option_logprobs` under several intervention sets at once: ``{name: interventions}`` →
    ``{name: [OptionLogprobs per prompt]}`` (an empty list of interventions is the unsteered model).

    Why it is faster: a condition that only *adds a vector at one layer l* (on every position) changes nothing
    below l, so per batch the unsteered prompt and option passes run once, traced at l
    (:func:`valuelens.hooks.trace_from_layer`), and each such condition only runs the layers above l
    (:func:`valuelens.hooks.replay_from_layer`) — at layer 21 of 30 that is 30 % of the cost. Every other
    condition (ablation at every layer, neuron scaling, several layers) takes the ordinary path. The numbers are
    those of :func:`option_logprobs` (tested to float32 round-off); ``replay=False`` forces the ordinary path.
    """
    from ..hooks import can_replay, new_cache, replay_from_layer, steer_delta, trace_from_layer

    if len(prompts) != len(options):
        raise ConfigError(f"got {len(prompts)} prompts but {len(options)} option lists")
    if batch_size < 1:
        raise ConfigError("batch_size must be >= 1")
    p_ids, o_ids = _encode_all(lm, prompts, options, end_of_turn)
    fast: dict[str, tuple[int, Tensor]] = {}
    if replay and can_replay(lm.model, spec=lm.spec):
        for name, ivs in conditions.items():
            sd = steer_delta(ivs, lm.spec.d_model) if ivs else None
            if sd is not None and sd[1].ndim == 1:
                fast[name] = (lm.spec.check_layer(sd[0]), sd[1])
    if len(fast) + any(not ivs for ivs in conditions.values()) < 2:
        fast = {}  # one steered condition alone: the traced unsteered pass would cost more than it saves
    layers = sorted({layer for layer, _ in fast.values()})
    out: dict[str, list[OptionLogprobs]] = {name: [] for name in conditions}
    model, dev = lm.model, lm.device
    with torch.no_grad():
        for start in range(0, len(p_ids), batch_size):
            sl = slice(start, start + batch_size)
            bp, bo = p_ids[sl], o_ids[sl]
            with contextlib.ExitStack() as stack:
                traces = {layer: stack.enter_context(trace_from_layer(model, layer, spec=lm.spec)) for layer in layers}
                base = _score_shared(lm, bp, bo) if (layers or any(not ivs for ivs in conditions.values())) else None
            for name, ivs in conditions.items():
                if not ivs and base is not None:
                    out[name] += _to_logprobs(base)
                elif name in fast:
                    layer, delta = fast[name]
                    *pre, t1, t2 = traces[layer]  # [common prefix,] prompts, options
                    d = delta.to(device=t1.hidden.device, dtype=t1.hidden.dtype)
                    cache = new_cache(model)
                    for t0 in pre:
                        replay_from_layer(model, t0, t0.hidden + d, cache=cache, positions=slice(-1, None),
                                          spec=lm.spec)
                        cache.batch_select_indices(torch.zeros(len(bp), dtype=torch.long, device=dev))
                    logits1 = replay_from_layer(model, t1, t1.hidden + d, cache=cache, positions=slice(-1, None),
                                                spec=lm.spec)
                    first = torch.log_softmax(logits1[:, -1].float(), dim=-1)
                    rep = [b for b, opts in enumerate(bo) for _ in opts]
                    cache.batch_select_indices(torch.tensor(rep, dtype=torch.long, device=dev))
                    logits2 = replay_from_layer(model, t2, t2.hidden + d, cache=cache, spec=lm.spec)
                    out[name] += _to_logprobs(_option_lps(first, logits2, bo, dev, _pad_id(lm)))
                else:
                    with apply_interventions(model, ivs, spec=lm.spec):
                        out[name] += _to_logprobs(_score_shared(lm, bp, bo, common_prefix=prefix_safe(ivs)))
    return out


def _left_pad(seqs: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        if s:
            ids[r, width - len(s):] = torch.tensor(s, dtype=torch.long)
            mask[r, width - len(s):] = 1
    return ids.to(device), mask.to(device)


def _right_pad(seqs: Sequence[Sequence[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _finite(lp: Tensor) -> Tensor:
    if not torch.isfinite(lp).all():
        raise ModelError("the model produced non-finite log-probabilities (NaN/inf activations: is the steering "
                         "strength α too large?)")
    return lp


MIN_COMMON_PREFIX = 2  # tokens: below this a separate prefix pass saves nothing


def common_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens every prompt of a batch starts with, leaving each at least one token of its own (the position
    whose logits score the first option token); 0 when that is shorter than :data:`MIN_COMMON_PREFIX` or the
    batch has a single prompt.

    >>> common_prefix_len([[1, 2, 3, 4], [1, 2, 3, 9, 9]])
    3
    """
    if len(prompts) < 2:
        return 0
    k, first = 0, prompts[0]
    limit = min(len(p) for p in prompts) - 1
    while k < limit and all(p[k] == first[k] for p in prompts):
        k += 1
    return k if k >= MIN_COMMON_PREFIX else 0


def prefix_safe(interventions: Sequence[Intervention]) -> bool:
    """Whether a shared prompt prefix may be computed in its own pass under ``interventions``: the prompt's
    remainder then runs on a filled KV cache, which hooks that tell prefill from decoding (a
    :class:`~valuelens.hooks.Steer` with ``positions`` other than ``"all"``) would take for decoding steps."""
    return all(getattr(iv, "positions", "all") == "all" for iv in interventions)


def _cache_of(res: Any) -> Any:
    cache = getattr(res, "cache", None)
    if cache is None:
        cache = getattr(res, "past_key_values", None)
    if cache is None or not hasattr(cache, "batch_select_indices"):
        raise ModelError("this model returns no reusable KV cache; score options with share_prefix=False")
    return cache


def _score_shared(lm: LoadedModel, prompts: list[list[int]], options: list[list[list[int]]], *,
                  common_prefix: bool = True) -> list[list[Tensor]]:
    """Prompt pass with a KV cache, then all options of all prompts in one pass on the repeated cache.

    ``common_prefix``: the tokens every prompt starts with (the chat template's system turn and user header:
    24 of 58 tokens for SmolLM2's PVQ items) run once, in a pass of their own, and the prompts' remainders
    continue from that cache (left padded between prefix and remainder; the attention mask hides the padding).
    Only for interventions that :func:`prefix_safe` allows."""
    model, dev, pad = lm.model, lm.device, _pad_id(lm)
    kw: dict[str, Any] = {"logits_to_keep": 1} if _accepts(model, "logits_to_keep") else {}
    k = common_prefix_len(prompts) if common_prefix else 0
    ids, mask = _left_pad([p[k:] for p in prompts], pad, dev)
    cache_kw: dict[str, Any] = {}
    if k:
        pre_mask = torch.ones((1, k), dtype=torch.long, device=dev)
        res0 = model(input_ids=torch.tensor([prompts[0][:k]], dtype=torch.long, device=dev),
                     attention_mask=pre_mask, position_ids=left_pad_position_ids(pre_mask), use_cache=True, **kw)
        pre_cache = _cache_of(res0)
        pre_cache.batch_select_indices(torch.zeros(len(prompts), dtype=torch.long, device=dev))
        cache_kw = {cache_kwarg(model): pre_cache}
        mask = torch.cat([pre_mask.expand(len(prompts), k), mask], dim=1)
    # The model builds the cache type its config needs (e.g. sliding-window layers).
    res = model(input_ids=ids, attention_mask=mask, position_ids=left_pad_position_ids(mask)[:, k:], use_cache=True,
                **cache_kw, **kw)
    first = torch.log_softmax(res.logits[:, -1].float(), dim=-1)  # [B, V]: next-token after each prompt
    cache = _cache_of(res)

    rep = [b for b, opts in enumerate(options) for _ in opts]
    flat = [o for opts in options for o in opts]
    rep_t = torch.tensor(rep, dtype=torch.long, device=dev)
    cache.batch_select_indices(rep_t)
    o_ids, o_mask = _right_pad(flat, pad, dev)
    p_len = mask.sum(dim=1)[rep_t]  # real prompt length per option row
    pos = p_len[:, None] + torch.arange(o_ids.shape[1], device=dev)[None, :]
    full_mask = torch.cat([mask[rep_t], o_mask], dim=1)
    res2 = model(input_ids=o_ids, attention_mask=full_mask, position_ids=pos, use_cache=True,
                 **{cache_kwarg(model): cache})
    return _option_lps(first, res2.logits, options, dev, pad)


def _option_lps(first: Tensor, logits2: Tensor, options: list[list[list[int]]], dev: torch.device,
                pad: int) -> list[list[Tensor]]:
    """Per option, the log-probabilities of its tokens: the first from ``first [B, V]`` (the prompt pass's last
    position), the rest from the option pass's ``logits2 [N, To, V]`` (rows = options, prompt-major order)."""
    rep = [b for b, opts in enumerate(options) for _ in opts]
    flat = [o for opts in options for o in opts]
    rep_t = torch.tensor(rep, dtype=torch.long, device=dev)
    o_ids, _ = _right_pad(flat, pad, dev)
    # Position j predicts option token j+1; gather the targets and normalise by logsumexp instead of building a
    # full [N, To, V] log-softmax.
    logits = logits2[:, :-1].float()
    nxt = o_ids[:, 1:]
    lp_rest = logits.gather(-1, nxt[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)  # [N, To-1]
    lp_first = first[rep_t, o_ids[:, 0]]  # [N]
    lp = torch.cat([lp_first[:, None], lp_rest], dim=1)
    out: list[list[Tensor]] = [[] for _ in options]
    for r, (b, o) in enumerate(zip(rep, flat, strict=True)):
        out[b].append(_finite(lp[r, : len(o)].cpu()))
    return out


def _score_full(lm: LoadedModel, prompts: list[list[int]], options: list[list[list[int]]]) -> list[list[Tensor]]:
    """Brute force: every prompt+option sequence in full, one left-padded batch per prompt group."""
    model, dev, pad = lm.model, lm.device, _pad_id(lm)
    seqs, where = [], []
    for b, (p, opts) in enumerate(zip(prompts, options, strict=True)):
        for o in opts:
            seqs.append(p + o)
            where.append((b, len(o)))
    ids, mask = _left_pad(seqs, pad, dev)
    res = model(input_ids=ids, attention_mask=mask, position_ids=left_pad_position_ids(mask), use_cache=False)
    width = ids.shape[1]
    out: list[list[Tensor]] = [[] for _ in options]
    for r, (b, n) in enumerate(where):
        pos = torch.arange(width - n, width, device=dev)  # option tokens sit at the right end
        logp = torch.log_softmax(res.logits[r, pos - 1].float(), dim=-1)
        out[b].append(_finite(logp[torch.arange(n, device=dev), ids[r, pos]].cpu()))
    return out
