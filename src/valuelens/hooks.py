"""The only module that touches model internals: capture, add, ablate, scale neurons.

Every intervention is a context manager that registers PyTorch hooks on the modules named by the architecture
registry (:mod:`valuelens.models`) and removes them on exit, also when the body raises. They compose by
nesting. All of them work during a plain forward pass, during prefill and at every decoding step of
``model.generate`` with a KV cache, and on left-padded batches.

Conventions:

* "Residual stream at layer l" is the output of decoder layer l (after its attention and MLP blocks), i.e.
  ``output_hidden_states[l + 1]``. Layers are 0-based; negative indices count from the end.
* Neuron activations at layer l are the input of the MLP output projection (``act(gate) * up`` for SwiGLU):
  neuron i writes ``act_i * W_down[:, i]`` into the residual stream.

Example (capture the mean residual over response tokens at every layer)::

    >>> import torch
    >>> from valuelens.models import get_arch_spec
    >>> from valuelens.testing import tiny_llama
    >>> model = tiny_llama()
    >>> ids = torch.randint(0, 100, (2, 7)); am = torch.ones_like(ids)
    >>> mask = torch.zeros_like(ids, dtype=torch.bool); mask[:, 4:] = True    # "response" tokens
    >>> acts = forward_capture(model, ids, am, token_mask=mask)              # [batch, layer, d_model]
    >>> tuple(acts.shape)
    (2, 4, 64)

Steering (``h ← h + α·v`` at layer 2, prefill and every decoding step)::

    >>> v = torch.randn(64)
    >>> with add_vectors(model, {2: v}, alpha=4.0):
    ...     out = model(ids).logits
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .errors import ConfigError
from .models import ResolvedSpec, autocast, get_arch_spec, module_device

__all__ = [
    "Ablate",
    "Intervention",
    "LayerTrace",
    "Reduction",
    "ResidualRecorder",
    "ScaleNeurons",
    "Steer",
    "ablate_direction",
    "add_vectors",
    "apply_interventions",
    "cache_kwarg",
    "can_replay",
    "capture_neurons",
    "capture_residual",
    "forward_capture",
    "left_pad_position_ids",
    "new_cache",
    "replay_from_layer",
    "scale_neurons",
    "steer_delta",
    "trace_from_layer",
]

Reduction = Literal["mean", "last", "sum", "all"]
Positions = Literal["all", "prompt", "generated"]


class _PerDevice:
    """A tensor copied to each (device, dtype) it is asked for once, then served from the cache.

    Layers of a model spread over several GPUs run on different devices; hooks look their constants up here so
    each copy is made on a layer's first forward and never again (not once per token).
    """

    __slots__ = ("_cache", "base")

    def __init__(self, base: Tensor) -> None:
        self.base = base
        self._cache: dict[tuple[torch.device, torch.dtype], Tensor] = {(base.device, base.dtype): base}

    def get(self, device: torch.device, dtype: torch.dtype | None = None) -> Tensor:
        key = (device, self.base.dtype if dtype is None else dtype)
        t = self._cache.get(key)
        if t is None:
            t = self._cache[key] = self.base.to(device=key[0], dtype=key[1])
        return t


def _spec(model: nn.Module, spec: ResolvedSpec | None) -> ResolvedSpec:
    return spec if spec is not None else get_arch_spec(model)


def _hidden(output: Any) -> Tensor:
    # transformers 5.x decoder layers return a tensor; 4.x and some custom models return a tuple.
    return output[0] if isinstance(output, tuple) else output


def _replace_hidden(output: Any, hidden: Tensor) -> Any:
    return (hidden, *output[1:]) if isinstance(output, tuple) else hidden


class _StopForward(Exception):
    """Raised after the last layer we need, to skip the rest of the forward pass."""


# --------------------------------------------------------------------------------------------------------------
# Capture


def _reduce(x: Tensor, mask: Tensor | None, reduction: Reduction,
            weights: tuple[Tensor, Tensor] | None = None) -> Tensor | list[Tensor]:
    """Reduce ``x: [B, T, X]`` over tokens selected by ``mask: [B, T]`` (all tokens if None) → ``[B, X]``.

    Sums are taken in float32 whatever the compute dtype, so bf16 capture still averages accurately.
    ``weights``: ``(mask as float [B, T, 1], count [B, 1])`` precomputed once per forward (see
    :func:`_mask_weights`) instead of once per hooked layer.
    """
    if mask is None:
        mask = torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    if mask.shape != x.shape[:2]:
        raise ConfigError(f"token mask has shape {tuple(mask.shape)} but activations are {tuple(x.shape[:2])}")
    if reduction == "all":
        return [x[b][mask[b]].float() for b in range(x.shape[0])]
    if reduction == "last":
        # Index of the last selected token per row; rows with none selected give zeros.
        idx = torch.arange(x.shape[1], device=x.device).expand_as(mask)
        last = torch.where(mask, idx, torch.full_like(idx, -1)).max(dim=1).values
        out = x[torch.arange(x.shape[0]), last.clamp(min=0)].float()
        return out * (last >= 0).unsqueeze(-1)
    if weights is None or weights[0].device != x.device:
        weights = _mask_weights(mask.to(x.device))
    m, count = weights
    # Same arithmetic (and summation order) as the obvious masked mean over output_hidden_states, so results
    # match it bit for bit; only the mask cast and the token counts are hoisted out of the per-layer hook.
    s = (x.float() * m).sum(dim=1)
    if reduction == "sum":
        return s
    return s / count


def _mask_weights(mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(mask as float [B, T, 1], token count [B, 1] clamped to ≥ 1)``, computed once per forward pass."""
    m = mask.to(torch.float32).unsqueeze(-1)
    return m, m.sum(dim=1).clamp(min=1.0)


class ResidualRecorder:
    """Collects per-item reductions of hooked activations for the current forward pass.

    Call :meth:`set_mask` before each forward with the ``[B, T]`` boolean mask of tokens to reduce over, run the
    model, then :meth:`pop` the result: ``[B, L, X]`` for mean/last/sum (layers in ascending order) or, for
    ``"all"``, a list of ``[T_b, L, X]`` per item. Nothing is kept after :meth:`pop`, so memory stays flat
    however many texts pass through; accumulate across batches with :class:`valuelens.vectors.GroupMeans`.
    """

    def __init__(self, layers: Sequence[int], reduction: Reduction) -> None:
        self.layers = list(layers)
        self.reduction: Reduction = reduction
        self.mask: Tensor | None = None
        self.out_device: torch.device | None = None  # where pop() gathers the layers (default: the mask's)
        self._weights: tuple[Tensor, Tensor] | None = None
        # The mask and its weights per device: layers of a model spread over GPUs each read a local copy.
        self._by_device: dict[torch.device, tuple[Tensor, tuple[Tensor, Tensor] | None]] = {}
        self._buf: dict[int, Any] = {}

    def set_mask(self, mask: Tensor | None) -> None:
        self.mask = None if mask is None else mask.to(torch.bool)
        # mean/sum weights are the same at every layer: compute them once per forward, not once per layer
        self._weights = (_mask_weights(self.mask) if self.mask is not None and self.reduction in ("mean", "sum")
                         else None)
        self._by_device = {} if self.mask is None else {self.mask.device: (self.mask, self._weights)}
        self._buf.clear()

    def _local(self, device: torch.device) -> tuple[Tensor | None, tuple[Tensor, Tensor] | None]:
        if self.mask is None:
            return None, None
        local = self._by_device.get(device)
        if local is None:
            m = self.mask.to(device)
            local = self._by_device[device] = (m, None if self._weights is None else _mask_weights(m))
        return local

    def _record(self, layer: int, x: Tensor) -> None:
        mask, weights = self._local(x.device)
        self._buf[layer] = _reduce(x.detach(), mask, self.reduction, weights)

    def pop(self) -> Tensor | list[Tensor]:
        missing = [layer for layer in self.layers if layer not in self._buf]
        if missing:
            raise RuntimeError(f"no activations recorded for layers {missing}; did the forward pass run?")
        dev = self.out_device or (self.mask.device if self.mask is not None else None)

        def here(t: Tensor) -> Tensor:
            return t if dev is None else t.to(dev)
        if self.reduction == "all":
            n = len(self._buf[self.layers[0]])
            out: Tensor | list[Tensor] = [torch.stack([here(self._buf[la][b]) for la in self.layers], dim=1)
                                          for b in range(n)]
        else:
            out = torch.stack([here(self._buf[la]) for la in self.layers], dim=1)
        self._buf.clear()
        return out


@contextlib.contextmanager
def _hooks(handles: list[Any]) -> Iterator[None]:
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _capture(model: nn.Module, layers: Sequence[int] | None, reduction: Reduction, spec: ResolvedSpec | None,
             stop_after_last: bool, neurons: bool) -> Iterator[ResidualRecorder]:
    """Shared body of the two capture managers: decoder-layer outputs, or the input of each down projection."""
    sp = _spec(model, spec)
    layer_ids = sp.check_layers(layers)
    rec = ResidualRecorder(layer_ids, reduction)
    last = layer_ids[-1]
    handles = []
    for li in layer_ids:
        if neurons:
            def pre_hook(_m: nn.Module, args: tuple[Any, ...], li: int = li) -> None:
                rec._record(li, args[0])
            handles.append(sp.down_proj(model, li).register_forward_pre_hook(pre_hook))
        else:
            def hook(_m: nn.Module, _inp: Any, out: Any, li: int = li) -> None:
                rec._record(li, _hidden(out))
            handles.append(sp.layer(model, li).register_forward_hook(hook))
        if stop_after_last and li == last:
            # Registered after the recording hook of the same layer, so it fires once that one has run.
            def stop(_m: nn.Module, _i: Any, _o: Any) -> None:
                raise _StopForward
            handles.append(sp.layer(model, li).register_forward_hook(stop))
    with _hooks(handles):
        yield rec


@contextlib.contextmanager
def capture_residual(model: nn.Module, layers: Sequence[int] | None = None, *, reduction: Reduction = "mean",
                     spec: ResolvedSpec | None = None, stop_after_last: bool = False
                     ) -> Iterator[ResidualRecorder]:
    """Record the residual stream (decoder layer outputs) at ``layers`` (default: all), reduced per item.

    ``stop_after_last``: abort the forward pass after the highest requested layer (use with
    :func:`forward_capture`, which catches the signal) — it skips the remaining layers and the LM head.
    """
    with _capture(model, layers, reduction, spec, stop_after_last, neurons=False) as rec:
        yield rec


@contextlib.contextmanager
def capture_neurons(model: nn.Module, layers: Sequence[int] | None = None, *, reduction: Reduction = "mean",
                    spec: ResolvedSpec | None = None, stop_after_last: bool = False
                    ) -> Iterator[ResidualRecorder]:
    """Record MLP neuron activations (the input of the output projection) at ``layers``, reduced per item."""
    with _capture(model, layers, reduction, spec, stop_after_last, neurons=True) as rec:
        yield rec


def left_pad_position_ids(attention_mask: Tensor) -> Tensor:
    """Position ids that start at 0 at each row's first real token (what ``generate`` uses for left padding)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def forward_capture(model: nn.Module, input_ids: Tensor, attention_mask: Tensor | None = None, *,
                    token_mask: Tensor | None = None, layers: Sequence[int] | None = None,
                    reduction: Reduction = "mean", neurons: bool = False, spec: ResolvedSpec | None = None,
                    bf16: bool = False) -> Tensor | list[Tensor]:
    """One batched forward pass that returns reduced activations ``[B, L, X]`` without computing logits.

    ``token_mask`` selects the tokens to reduce over (default: the attention mask). Position ids are derived
    from the attention mask, so left-padded batches give the same numbers as unpadded single items. Runs the
    decoder stack only and stops after the highest requested layer. ``bf16`` runs under autocast on the
    model's device. Inputs may sit on any device (they are moved to the embedding layer's); the result is on
    the device of ``input_ids``, whichever devices the layers run on.
    """
    sp = _spec(model, spec)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    mask = attention_mask.bool() if token_mask is None else token_mask.bool() & attention_mask.to(
        token_mask.device).bool()
    base = _get(model, sp.arch.base)
    dev = module_device(_get(model, sp.arch.embed))
    cap = capture_neurons if neurons else capture_residual
    ids, am = input_ids.to(dev), attention_mask.to(dev)
    with cap(model, layers, reduction=reduction, spec=sp, stop_after_last=True) as rec, torch.no_grad(), \
            autocast(dev, bf16):
        rec.set_mask(mask.to(dev))
        rec.out_device = input_ids.device
        with contextlib.suppress(_StopForward):
            base(input_ids=ids, attention_mask=am, position_ids=left_pad_position_ids(am), use_cache=False)
        return rec.pop()


def _get(obj: Any, path: str) -> Any:
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def _param_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a layer computes in (its first floating-point parameter's), float32 if it has none."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


# --------------------------------------------------------------------------------------------------------------
# Interventions


class _Phase:
    """Tracks whether the current forward is a prefill or a decoding step (KV cache already filled)."""

    def __init__(self) -> None:
        self.decoding = False

    def pre_hook(self, _m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        # transformers ≥ 5.2x passes the KV cache as `cache`, earlier releases as `past_key_values`.
        cache = next((kwargs[k] for k in ("cache", "past_key_values") if kwargs.get(k) is not None), None)
        seen = 0
        if cache is not None:
            with contextlib.suppress(Exception):
                seen = int(cache.get_seq_length())
        self.decoding = seen > 0


def _position_gate(positions: Positions, phase: _Phase) -> bool:
    if positions == "all":
        return True
    return phase.decoding == (positions == "generated")


def _as_vec(v: Tensor, d_model: int, what: str) -> Tensor:
    if not isinstance(v, Tensor):
        v = torch.as_tensor(v)
    if v.shape[-1] != d_model or v.ndim not in (1, 2):
        raise ConfigError(f"{what} must have shape [{d_model}] or [batch, {d_model}], got {tuple(v.shape)}")
    return v


@contextlib.contextmanager
def add_vectors(model: nn.Module, vectors: Mapping[int, Tensor], *, alpha: float = 1.0,
                positions: Positions = "all", token_mask: Tensor | None = None,
                spec: ResolvedSpec | None = None) -> Iterator[None]:
    """Activation addition: ``h ← h + alpha·v[layer]`` on the output of each given layer.

    ``vectors``: ``{layer: [d_model]}`` (or ``[batch, d_model]`` for a different vector per row).
    ``positions``: ``"all"`` (prefill and every decoding step), ``"prompt"`` (prefill only) or ``"generated"``
    (decoding steps only). ``token_mask [B, T]`` restricts a single full forward pass to chosen tokens.
    """
    sp = _spec(model, spec)
    if positions not in ("all", "prompt", "generated"):
        raise ConfigError(f"positions must be 'all', 'prompt' or 'generated', got {positions!r}")
    # The phase tracker (a pre-hook reading the KV cache length on every forward) is only needed when the
    # hook must tell prefill from decoding steps.
    needs_phase = positions != "all" or token_mask is not None
    tmask = None if token_mask is None else _PerDevice(token_mask.detach())
    phase = _Phase()
    handles = []
    if needs_phase:
        handles.append(model.register_forward_pre_hook(phase.pre_hook, with_kwargs=True))
    for layer, vec in vectors.items():
        li = sp.check_layer(layer)
        v = _as_vec(vec, sp.d_model, f"steering vector for layer {layer}")
        # alpha·v computed once (float32) and cached per (device, dtype) of the hidden states: the hook does one
        # add per forward, with no per-step multiplication, cast or copy, on whichever device the layer runs.
        base = alpha * v.detach().to(torch.float32)
        if base.ndim == 2:
            base = base[:, None, :]
        cached = _PerDevice(base)
        # Copy to the layer's own device now (a model spread over GPUs), so even the first step copies nothing.
        layer_mod = sp.layer(model, li)
        cached.get(module_device(layer_mod), _param_dtype(layer_mod))

        def delta_for(h: Tensor, cached: _PerDevice = cached) -> Tensor:
            return cached.get(h.device, h.dtype)

        if not needs_phase:
            def hook(_m: nn.Module, _inp: Any, out: Any, delta_for: Any = delta_for) -> Any:
                if isinstance(out, Tensor):
                    return out + delta_for(out)
                h = out[0]
                return (h + delta_for(h), *out[1:])
        else:
            def hook(_m: nn.Module, _inp: Any, out: Any, delta_for: Any = delta_for) -> Any:
                if not _position_gate(positions, phase):
                    return None
                h = _hidden(out)
                delta = delta_for(h)
                if tmask is not None and not phase.decoding:
                    delta = delta * tmask.get(h.device, h.dtype)[..., None]
                return _replace_hidden(out, h + delta)
        handles.append(layer_mod.register_forward_hook(hook))
    with _hooks(handles):
        yield


@contextlib.contextmanager
def ablate_direction(model: nn.Module, direction: Tensor | Mapping[int, Tensor],
                     layers: Sequence[int] | None = None, *, spec: ResolvedSpec | None = None) -> Iterator[None]:
    """Directional ablation: remove the component along ``direction`` from the residual stream.

    ``direction`` is one ``[d_model]`` vector applied at ``layers`` (default: every layer, so no later layer
    can write it back unobserved), or ``{layer: [d_model]}``. It need not be unit length.
    """
    sp = _spec(model, spec)
    dirs: dict[int, Tensor]
    if isinstance(direction, Mapping):
        dirs = {sp.check_layer(k): _as_vec(v, sp.d_model, "direction") for k, v in direction.items()}
    else:
        d = _as_vec(direction, sp.d_model, "direction")
        dirs = {li: d for li in sp.check_layers(layers)}
    handles = []
    for li, d in dirs.items():
        if d.ndim != 1:
            raise ConfigError("ablation takes one direction per layer ([d_model])")
        norm = d.float().norm()
        if norm == 0:
            raise ConfigError(f"cannot ablate a zero direction (layer {li})")
        unit = _PerDevice(d.detach().float() / norm)
        layer_mod = sp.layer(model, li)
        unit.get(module_device(layer_mod))

        def hook(_m: nn.Module, _inp: Any, out: Any, unit: _PerDevice = unit) -> Any:
            h = _hidden(out)
            u = unit.get(h.device)
            proj = (h.float() @ u)[..., None] * u
            return _replace_hidden(out, (h.float() - proj).to(h.dtype))
        handles.append(layer_mod.register_forward_hook(hook))
    with _hooks(handles):
        yield


@contextlib.contextmanager
def scale_neurons(model: nn.Module, neurons: Mapping[int, Sequence[int] | Tensor], beta: float, *,
                  spec: ResolvedSpec | None = None) -> Iterator[None]:
    """Multiply the activations of the given MLP neurons ``{layer: indices}`` by ``beta`` (0 ablates them)."""
    sp = _spec(model, spec)
    handles = []
    for layer, idx in neurons.items():
        li = sp.check_layer(layer)
        index = torch.as_tensor(idx, dtype=torch.long).flatten()
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= sp.d_mlp):
            raise ConfigError(f"neuron index out of range at layer {layer}: this model has {sp.d_mlp} neurons/layer")

        cached = _PerDevice(index)
        down = sp.down_proj(model, li)
        cached.get(module_device(down))

        def pre_hook(_m: nn.Module, args: tuple[Any, ...], cached: _PerDevice = cached) -> Any:
            x = args[0].clone()
            x[..., cached.get(x.device)] *= beta
            return (x, *args[1:])
        handles.append(down.register_forward_pre_hook(pre_hook))
    with _hooks(handles):
        yield


# --------------------------------------------------------------------------------------------------------------
# Declarative interventions (for configs and the pipeline)


@dataclass(frozen=True)
class Steer:
    """Add ``alpha * vector`` at ``layers`` (same vector at each)."""

    vector: Tensor
    layers: tuple[int, ...]
    alpha: float = 1.0
    positions: Positions = "all"


@dataclass(frozen=True)
class Ablate:
    """Remove ``direction`` (one ``[D]`` vector at ``layers``, default all; or ``{layer: [D]}``)."""

    direction: Tensor | Mapping[int, Tensor]
    layers: tuple[int, ...] | None = None


@dataclass(frozen=True)
class ScaleNeurons:
    neurons: Mapping[int, Sequence[int]] = field(default_factory=dict)
    beta: float = 0.0


Intervention = Steer | Ablate | ScaleNeurons


@contextlib.contextmanager
def apply_interventions(model: nn.Module, interventions: Sequence[Intervention], *,
                        spec: ResolvedSpec | None = None) -> Iterator[None]:
    """Apply several interventions at once (they nest in the order given)."""
    sp = _spec(model, spec)
    with contextlib.ExitStack() as stack:
        for iv in interventions:
            if isinstance(iv, Steer):
                stack.enter_context(add_vectors(model, dict.fromkeys(iv.layers, iv.vector), alpha=iv.alpha,
                                                positions=iv.positions, spec=sp))
            elif isinstance(iv, Ablate):
                stack.enter_context(ablate_direction(model, iv.direction, iv.layers, spec=sp))
            elif isinstance(iv, ScaleNeurons):
                stack.enter_context(scale_neurons(model, iv.neurons, iv.beta, spec=sp))
            else:
                raise ConfigError(f"unknown intervention {iv!r}")
        yield


# --------------------------------------------------------------------------------------------------------------
# Per-row steering that changes between forward passes (the serving engine's continuous batching)


class RowSteering:
    """Per-row additions ``h[b] ← h[b] + d[b]`` whose deltas may change before every forward pass.

    A serving batch changes composition at every decoding step (requests join and leave), so the deltas cannot
    be fixed when the hooks are registered as in :func:`add_vectors`. :meth:`set` takes, per layer, a list of
    ``[B, D]`` float32 deltas ("slots") added one after the other — the same order and arithmetic as nested
    :func:`add_vectors` calls with ``alpha·v`` — so a row with one steer gets exactly the library's numbers,
    and a row whose slot is zero gets ``h + 0 = h`` bit for bit (an unsteered row in a steered batch).
    """

    def __init__(self) -> None:
        self._deltas: dict[int, list[_PerDevice]] = {}

    def set(self, deltas: Mapping[int, Sequence[Tensor]]) -> None:
        """Replace the deltas: ``{layer: [slot [B, D], ...]}`` (layers as 0-based indices already checked)."""
        out: dict[int, list[_PerDevice]] = {}
        for layer, slots in deltas.items():
            if slots:
                out[int(layer)] = [_PerDevice(s.detach().to(torch.float32)[:, None, :]) for s in slots]
        self._deltas = out

    def clear(self) -> None:
        self._deltas = {}

    @property
    def active_layers(self) -> list[int]:
        return sorted(self._deltas)

    def _apply(self, layer: int, out: Any) -> Any:
        slots = self._deltas.get(layer)
        if not slots:
            return None
        h = _hidden(out)
        for s in slots:
            d = s.get(h.device, h.dtype)
            if d.shape[0] != h.shape[0]:
                raise RuntimeError(f"row steering has {d.shape[0]} rows but the batch has {h.shape[0]}")
            h = h + d
        return _replace_hidden(out, h)


@contextlib.contextmanager
def steer_rows(model: nn.Module, *, spec: ResolvedSpec | None = None) -> Iterator[RowSteering]:
    """Register one hook per decoder layer that applies the current :class:`RowSteering` deltas (none at first).

    The hooks stay registered for the whole block; a layer with no deltas returns at once (a dictionary lookup
    per layer per forward), so an idle or unsteered batch runs the plain model.
    """
    sp = _spec(model, spec)
    rs = RowSteering()
    handles = []
    for li in range(sp.n_layers):
        def hook(_m: nn.Module, _inp: Any, out: Any, li: int = li) -> Any:
            return rs._apply(li, out)
        handles.append(sp.layer(model, li).register_forward_hook(hook))
    with _hooks(handles):
        yield rs


# --------------------------------------------------------------------------------------------------------------
# Replay from a layer: reuse everything below a steering layer across conditions


@dataclass
class LayerTrace:
    """One forward pass seen from decoder layer ``layer`` upward: its output ``hidden [B, T, D]`` and the exact
    arguments the model passed to every later decoder layer (attention masks, position embeddings, cache
    positions — whatever this architecture uses), minus the hidden state and the KV cache."""

    layer: int
    hidden: Tensor
    calls: list[tuple[int, tuple[Any, ...], dict[str, Any]]]
    cache_key: str | None = None  # the keyword this model's layers take their KV cache by


_CACHE_KWARGS = ("cache", "past_key_values", "past_key_value")


def cache_kwarg(module: nn.Module) -> str:
    """The keyword ``module.forward`` takes a KV cache by: ``cache`` (transformers ≥ 5.2x), else
    ``past_key_values`` (earlier releases and most custom models)."""
    import inspect

    try:
        params = inspect.signature(module.forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return next((k for k in _CACHE_KWARGS if k in params), "past_key_values")


@contextlib.contextmanager
def trace_from_layer(model: nn.Module, layer: int, *, spec: ResolvedSpec | None = None
                     ) -> Iterator[list[LayerTrace]]:
    """Record, for every forward pass in the block, layer ``layer``'s output and the calls of the layers after it
    (one :class:`LayerTrace` per forward, appended to the yielded list) for :func:`replay_from_layer`."""
    sp = _spec(model, spec)
    li = sp.check_layer(layer)
    traces: list[LayerTrace] = []
    handles = []

    def out_hook(_m: nn.Module, _inp: Any, out: Any) -> None:
        traces.append(LayerTrace(layer=li, hidden=_hidden(out).detach(), calls=[]))

    handles.append(sp.layer(model, li).register_forward_hook(out_hook))
    for j in range(li + 1, sp.n_layers):
        def pre(_m: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], j: int = j) -> None:
            kw = {k: v for k, v in kwargs.items() if k not in _CACHE_KWARGS and k != "hidden_states"}
            tr = traces[-1]
            if tr.cache_key is None:
                tr.cache_key = next((k for k in _CACHE_KWARGS if k in kwargs), None)
            tr.calls.append((j, tuple(args[1:]), kw))
        handles.append(sp.layer(model, j).register_forward_pre_hook(pre, with_kwargs=True))
    with _hooks(handles):
        yield traces


def can_replay(model: nn.Module, *, spec: ResolvedSpec | None = None) -> bool:
    """Whether :func:`replay_from_layer` reproduces this model's logits: decoder layers called one after the
    other, logits = unembed(final_norm(h)) (plus Gemma-style soft-capping); encoder-decoder or exotic heads no."""
    sp = _spec(model, spec)
    try:
        _get(model, sp.arch.final_norm)
        _get(model, sp.arch.unembed)
    except AttributeError:
        return False
    return sp.arch.family not in ("gpt2",) and not getattr(model.config, "is_encoder_decoder", False)


def replay_from_layer(model: nn.Module, trace: LayerTrace, hidden: Tensor, *, cache: Any = None,
                      positions: Tensor | slice | None = None, spec: ResolvedSpec | None = None) -> Tensor:
    """Run the decoder layers after ``trace.layer`` on ``hidden`` (the layer's output, e.g. ``trace.hidden +
    delta``) with the arguments the traced forward used, then the final norm and the unembedding → logits
    ``[B, T', V]`` at ``positions`` (default all; a slice such as ``slice(-1, None)`` saves work).

    ``cache``: a KV cache object whose layers after ``trace.layer`` this pass fills (or extends); the layers up to
    ``trace.layer`` are never run, so their entries are not needed. Exact: with ``hidden = trace.hidden`` it gives
    the traced forward's logits; with ``trace.hidden + δ`` what a steering hook adding δ at that layer gives
    (tested to float32 round-off), at ``(L − layer − 1) / L`` of the cost.
    """
    sp = _spec(model, spec)
    h = hidden
    for j, args, kwargs in trace.calls:
        kw = dict(kwargs)
        if cache is not None:
            kw[trace.cache_key or cache_kwarg(sp.layer(model, j))] = cache
        if "use_cache" in kw:
            kw["use_cache"] = cache is not None
        out = sp.layer(model, j)(h, *args, **kw)
        h = _hidden(out)
    if positions is not None:
        h = h[:, positions]
    h = _get(model, sp.arch.final_norm)(h)
    logits = _get(model, sp.arch.unembed)(h)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def new_cache(model: nn.Module) -> Any:
    """An empty KV cache of the kind ``model`` builds itself (sliding-window layers included)."""
    from transformers.cache_utils import DynamicCache

    return DynamicCache(config=model.config)


def steer_delta(interventions: Sequence[Intervention], d_model: int) -> tuple[int, Tensor] | None:
    """``(layer, δ)`` when ``interventions`` are only activation additions at one layer on every position (what
    :func:`replay_from_layer` can reproduce by adding δ to the traced residual); None otherwise. δ is ``[D]`` or
    ``[B, D]``, float32."""
    layers: set[int] = set()
    delta: Tensor | None = None
    for iv in interventions:
        if not isinstance(iv, Steer) or iv.positions != "all" or len(iv.layers) != 1:
            return None
        layers.add(int(iv.layers[0]))
        v = _as_vec(iv.vector, d_model, "steering vector").detach().to(torch.float32) * float(iv.alpha)
        delta = v if delta is None else delta + v
    if len(layers) != 1 or delta is None:
        return None
    return layers.pop(), delta
