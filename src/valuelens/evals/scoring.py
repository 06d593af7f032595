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
* **Option tree.** In the option pass a prompt's options are packed into *one* row as a token tree (a trie:
  options that start alike share those positions — "Not like me" and "Not like me at all" share three), with a
  tree attention mask (each position sees the prompt and its own ancestors) and position ids by depth. The last
  token of an option is never fed (nothing is predicted from it). For the six PVQ answers that is 18 positions
  in one row instead of 6 rows padded to 6 tokens, and the prompt's KV cache is not repeated per option. Used
  where the attention takes a custom mask (``eager``, ``sdpa``); other attention kernels (flash-attention) get
  the padded one-row-per-option pass, which gives the same numbers.
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
            plan = OptionPlan(bo, packed=tree_mask_ok(model, _span(bp, bo)))  # the traced option pass's layout
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
                    plan.select(cache, dev)
                    logits2 = replay_from_layer(model, t2, t2.hidden + d, cache=cache, spec=lm.spec)
                    out[name] += _to_logprobs(plan.logprobs(first, logits2))
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
    """Prompt pass with a KV cache, then all options of all prompts in one pass (:class:`OptionPlan`: a token
    tree per prompt, or one padded row per option on the repeated cache).

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
    plan = OptionPlan(options, packed=tree_mask_ok(model, _span(prompts, options)))
    ids2, mask2, pos2 = plan.inputs(mask, pad, _mask_dtype(model))
    plan.select(cache, dev)
    res2 = model(input_ids=ids2, attention_mask=mask2, position_ids=pos2, use_cache=True,
                 **{cache_kwarg(model): cache})
    return plan.logprobs(first, res2.logits)


def tree_mask_ok(model: Any, length: int = 0) -> bool:
    """Whether ``model``'s attention takes a custom 4-D mask as given (``eager`` and ``sdpa`` do; flash-attention
    kernels only know padding masks, so they get the padded option pass), for sequences of ``length`` tokens: a
    custom mask replaces a sliding window's, so models with one (Mistral, Gemma 2/3) qualify only up to it."""
    cfg = getattr(model, "config", None)
    if getattr(cfg, "_attn_implementation", None) not in ("eager", "sdpa"):
        return False
    window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
    return not (isinstance(window, int) and length > window)


def _span(prompts: Sequence[Sequence[int]], options: Sequence[Sequence[Sequence[int]]]) -> int:
    """Longest prompt + longest option: the most tokens any option position can see."""
    return max(len(p) for p in prompts) + max(len(o) for opts in options for o in opts)


def _mask_dtype(model: Any) -> torch.dtype:
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


class OptionPlan:
    """How the options of a batch of prompts are laid out for the option pass (the prompts' KV cache is
    already filled), and where each option token's log-probability is read.

    ``packed=True``: one row per prompt holding its options as a token tree (shared starts once, the last token
    of every option not fed), tree attention mask, position = prompt length + depth. ``packed=False``: one row
    per option, right padded, on the prompt's cache repeated per option.

    >>> plan = OptionPlan([[[5, 6, 2], [5, 6, 7, 8, 2]]], packed=True)   # "Not like"+EOT, "Not like at all"+EOT
    >>> plan.nodes[0]                                                       # fed tokens: 5, 6 shared; then 7, 8
    [5, 6, 7, 8]
    >>> plan.width
    4
    """

    def __init__(self, options: list[list[list[int]]], *, packed: bool) -> None:
        self.options, self.packed = options, packed
        self.owner = [b for b, opts in enumerate(options) for _ in opts]  # per option (prompt-major): its prompt
        self.nodes: list[list[int]] = []  # packed: per prompt, the token fed at each tree position
        self.parent: list[list[int]] = []  # packed: per prompt and position, the parent position (-1: the prompt)
        self.depth: list[list[int]] = []
        # per option (prompt-major): (row, column) of the positions whose logits predict tokens 1..n-1
        self.reads: list[tuple[int, list[int]]] = []
        if packed:
            for b, opts in enumerate(options):
                index: dict[tuple[int, ...], int] = {}
                toks: list[int] = []
                par: list[int] = []
                dep: list[int] = []
                for o in opts:
                    cols = []
                    for k in range(1, len(o)):  # the position holding o[k-1] predicts o[k]
                        key = tuple(o[:k])
                        if key not in index:
                            index[key] = len(toks)
                            toks.append(o[k - 1])
                            par.append(index[key[:-1]] if k > 1 else -1)
                            dep.append(k - 1)
                        cols.append(index[key])
                    self.reads.append((b, cols))
                self.nodes.append(toks)
                self.parent.append(par)
                self.depth.append(dep)
            self.width = max(1, max(len(t) for t in self.nodes))
        else:
            flat = [o for opts in options for o in opts]
            self.reads = [(r, list(range(len(o) - 1))) for r, o in enumerate(flat)]
            self.width = max(len(o) for o in flat)

    def select(self, cache: Any, device: torch.device) -> None:
        """Lay the prompts' KV cache out for the option rows (repeat it per option unless packed)."""
        if not self.packed:
            cache.batch_select_indices(torch.tensor(self.owner, dtype=torch.long, device=device))

    def inputs(self, prompt_mask: Tensor, pad: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
        """``(input_ids [R, W], attention_mask, position_ids [R, W])`` of the option pass; ``prompt_mask
        [B, Tp]`` is the prompts' (left padded) 2-D mask. Packed: a 4-D additive mask ``[B, 1, W, Tp + W]``."""
        dev = prompt_mask.device
        p_len = prompt_mask.sum(dim=1)
        if not self.packed:
            rep_t = torch.tensor(self.owner, dtype=torch.long, device=dev)
            o_ids, o_mask = _right_pad([o for opts in self.options for o in opts], pad, dev)
            pos = p_len[rep_t][:, None] + torch.arange(o_ids.shape[1], device=dev)[None, :]
            return o_ids, torch.cat([prompt_mask[rep_t], o_mask], dim=1), pos
        B, W, Tp = len(self.options), self.width, prompt_mask.shape[1]
        ids = torch.full((B, W), pad, dtype=torch.long)
        depth = torch.zeros((B, W), dtype=torch.long)
        seen = torch.zeros((B, W, Tp + W), dtype=torch.bool)
        seen[:, :, :Tp] = prompt_mask.bool().cpu()[:, None, :]
        for b, (toks, par, dep) in enumerate(zip(self.nodes, self.parent, self.depth, strict=True)):
            ids[b, : len(toks)] = torch.tensor(toks, dtype=torch.long)
            depth[b, : len(dep)] = torch.tensor(dep, dtype=torch.long)
            for i, pa in enumerate(par):  # parents come before children: copy the parent's row, add self
                if pa >= 0:
                    seen[b, i, Tp:] = seen[b, pa, Tp:]
                seen[b, i, Tp + i] = True
            for i in range(len(toks), W):  # padding positions see only themselves (no empty softmax)
                seen[b, i, Tp + i] = True
        add = torch.zeros(seen.shape, dtype=dtype).masked_fill_(~seen, torch.finfo(dtype).min)
        return ids.to(dev), add[:, None].to(dev), (p_len.cpu()[:, None] + depth).to(dev)

    def logprobs(self, first: Tensor, logits2: Tensor) -> list[list[Tensor]]:
        """Per prompt, per option, the log-probabilities of its tokens: the first from ``first [B, V]`` (the
        prompt pass's last position), the rest from the option pass's ``logits2 [R, W, V]``."""
        dev = logits2.device
        flat = [o for opts in self.options for o in opts]
        owner = self.owner
        rows = [r for (r, cols) in self.reads for _ in cols]
        cols = [c for (_, cs) in self.reads for c in cs]
        tgt = [t for o in flat for t in o[1:]]
        # Gather the needed positions, then normalise by logsumexp (no full [R, W, V] log-softmax).
        lg = logits2[torch.tensor(rows, dtype=torch.long, device=dev), torch.tensor(cols, dtype=torch.long,
                                                                                     device=dev)].float()
        rest = lg.gather(-1, torch.tensor(tgt, dtype=torch.long, device=dev)[:, None])[:, 0] - torch.logsumexp(lg, -1)
        head = first[torch.tensor(owner, dtype=torch.long, device=dev),
                     torch.tensor([o[0] for o in flat], dtype=torch.long, device=dev)]
        out: list[list[Tensor]] = [[] for _ in self.options]
        at = 0
        for j, (b, o) in enumerate(zip(owner, flat, strict=True)):
            n = len(o) - 1
            out[b].append(_finite(torch.cat([head[j : j + 1], rest[at : at + n]]).cpu()))
            at += n
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
