"""Batched, seeded, resumable generation under any set of hooks, and response-token activation capture.

Resumability: items are cut into fixed batches from the full (ordered) item list, and each finished batch is
appended to a JSONL file in one write. On restart, complete batches are skipped; a batch that was only
partly written (the process died mid-write) is dropped and regenerated whole, so every response appears
exactly once and a resumed run equals an uninterrupted one (each batch's sampling seed depends only on the
run seed and the batch's index).

Batches are a plan over the *whole* item list (:func:`plan_batches`): item order, or sorted by prompt length
(``sort_by_length``: less left padding, so fewer wasted token positions per batch). A worker may generate any
subset of the plan's batches (``batches=``, how ``--shard`` and Ray split the work), and because composition
and seeds come from the plan, the union of the shards' records equals a single process's records.

Out of memory: a batch that raises ``torch.OutOfMemoryError`` is retried in halves (and the smaller size is
kept for the rest of the run); its records are still written together, once, so nothing is lost or duplicated.
A halved batch samples with seeds derived from its batch seed and the half's position, and its records say
so (``oom_split``: the size it ran at); batches that fit are generated exactly as before.

>>> from valuelens.generate import GenerationConfig
>>> GenerationConfig(max_new_tokens=32).do_sample
False
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError, ModelError
from .hooks import Intervention, apply_interventions, capture_residual, forward_capture
from .models import LoadedModel, RenderedPrompt, ResolvedSpec, autocast
from .progress import bar as tqdm
from .runio import JsonlWriter, atomic_write_text, read_jsonl

__all__ = [
    "GenItem",
    "GeneratedActs",
    "GenerationConfig",
    "capture_responses",
    "decode",
    "generate_batch",
    "generate_to_file",
    "is_oom",
    "plan_batches",
    "sample_next",
]


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings; recorded verbatim in every output record's manifest."""

    max_new_tokens: int = 96
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50  # 0: no top-k cut; 50 is transformers' default, which runs before valuelens' own loop used
    repetition_penalty: float = 1.0
    seed: int = 0
    batch_size: int = 8
    bf16: bool = False
    sort_by_length: bool = False  # batch prompts of similar token length together (less padding)
    # "hf" (model.generate with hooks), "vllm" (unsteered only; falls back to HF with the reason logged when
    # vLLM cannot run here) or "auto" (vLLM where it can run, HF otherwise). See valuelens.backends_vllm.
    backend: str = "hf"

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be >= 1")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        if self.do_sample and not self.temperature > 0:
            raise ConfigError("temperature must be > 0 when sampling")
        if self.top_k < 0 or not 0 < self.top_p <= 1:
            raise ConfigError("top_k must be >= 0 and top_p in (0, 1]")
        if self.backend not in ("hf", "vllm", "auto"):
            raise ConfigError(f"generation backend must be hf, vllm or auto, got {self.backend!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenItem:
    """One prompt to answer: a stable id, the rendered prompt and metadata copied into the output record.

    ``steer``: an optional ``[d_model]`` vector added to this item's residual stream at the ``steer_layer`` of
    :func:`generate_to_file` (prefill and every decoding step), so items steered differently — or not at all —
    share a batch; not written to the record (put what it means in ``meta``).
    """

    id: str
    prompt: RenderedPrompt
    meta: dict[str, Any]
    steer: torch.Tensor | None = field(default=None, compare=False, repr=False)


def _stop_ids(lm: LoadedModel) -> list[int]:
    tok = lm.tokenizer
    ids = {tok.eos_token_id}
    for t in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"):
        i = tok.convert_tokens_to_ids(t) if t in tok.get_vocab() else None
        if i is not None:
            ids.add(i)
    gen_eos = getattr(lm.model.generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif isinstance(gen_eos, list):
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


def sample_next(logits: Tensor, *, do_sample: bool, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                gen: torch.Generator | None = None) -> Tensor:
    """The next token per row from ``logits`` ``[B, V]``: the argmax, or (``do_sample``) a draw in transformers'
    order — temperature, then the ``top_k`` most likely tokens (0: all), then the top-p nucleus of those,
    renormalised — by inverse CDF with one uniform per row drawn on the CPU from ``gen`` (so a seed gives the
    same tokens on every device and a row alone in a batch the same tokens as in the server's loop).

    Why not ``model.generate``'s sampler: it sorts the whole vocabulary per row and step and draws an
    exponential per vocabulary entry; on 2 CPU cores that cost as much as the model's forward pass. Here the
    candidates are the 256 most likely tokens, and a row whose nucleus is wider than that (a flat distribution,
    ``top_k`` 0 or > 256) is sorted in full: the same distribution, exactly.

    >>> sample_next(torch.tensor([[0.0, 3.0, 1.0]]), do_sample=False).tolist()
    [1]
    """
    if not do_sample:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    vocab = probs.shape[-1]
    kk = min(top_k, vocab) if top_k > 0 else vocab
    if kk <= 256:  # the top-k set itself, renormalised (transformers masks the rest before top-p)
        top, idx = probs.topk(kk, dim=-1)
        return _nucleus_pick(top / top.sum(-1, keepdim=True), idx, top_p, gen)
    top, idx = probs.topk(256, dim=-1)  # sorted, most likely first
    mass = torch.ones_like(top[:, 0]) if kk == vocab else probs.topk(kk, dim=-1).values.sum(-1)
    fits = top.sum(-1) >= top_p * mass  # the nucleus lies inside the 256 most likely tokens
    out = torch.empty(probs.shape[0], dtype=torch.long, device=probs.device)
    if bool(fits.any()):
        out[fits] = _nucleus_pick(top[fits] / mass[fits, None], idx[fits], top_p, gen)
    if bool((~fits).any()):
        full, fidx = probs[~fits].sort(dim=-1, descending=True)
        full, fidx = full[:, :kk], fidx[:, :kk]
        out[~fits] = _nucleus_pick(full / full.sum(-1, keepdim=True), fidx, top_p, gen)
    return out


def _nucleus_pick(top: Tensor, idx: Tensor, top_p: float, gen: torch.Generator | None) -> Tensor:
    # Keep a token while the mass before it is below top_p (the smallest set reaching top_p; at least one).
    keep = (top.cumsum(-1) - top) < top_p
    p = top * keep
    c = p.cumsum(-1)
    u = torch.rand(top.shape[0], 1, generator=gen).to(top.device) * c[:, -1:]
    j = (c <= u).sum(-1).clamp(max=top.shape[-1] - 1)
    return idx.gather(-1, j[:, None])[:, 0]


def decode(model: torch.nn.Module, input_ids: Tensor, attention_mask: Tensor, cfg: GenerationConfig,
           stop: Sequence[int], *, seed: int, pad: int | None, capture: bool = False,
           spec: ResolvedSpec | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Batched KV-cached decoding of left-padded prompts ``[B, T]``: the generated ids ``[B, ≤ max_new_tokens]``
    (on the CPU; rows that stopped are padded with ``pad`` after their stop token). Runs under whatever hooks
    are active (the interventions see a prefill, then one-token decoding steps). The loop ends when every row
    has stopped.

    ``capture``: also return the mean residual stream over each row's **response tokens** at every layer,
    ``[B, L, D]`` float32 (zeros for an empty response) — what :func:`capture_responses` computes by re-running
    prompt + response, read off the decoding steps instead (a response token is fed one step after it is
    sampled, and the last one once more at the end if the row stopped on length). Equal to the re-run up to
    float round-off; it saves the whole second pass.
    """
    if capture and spec is None:
        raise ConfigError("decode(capture=True) needs the model's spec (LoadedModel.spec)")
    gen = torch.Generator().manual_seed(int(seed)) if cfg.do_sample else None
    am = attention_mask
    pos = (am.long().cumsum(-1) - 1).clamp(min=0)
    stops = torch.tensor(sorted(set(stop)), device=input_ids.device)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    fill = int(pad if pad is not None else stop[0])
    keep: dict[str, Any] = {"logits_to_keep": 1}  # no logits for the prompt's other positions
    with capture_residual(model, None, reduction="sum", spec=spec) if capture else contextlib.nullcontext() as rec:
        sums: Tensor | None = None
        counts = torch.zeros(input_ids.shape[0], dtype=torch.float32, device=input_ids.device)

        def step(ids: Tensor, response: Tensor | None, **kw: Any) -> Any:
            # ``response [B]``: which rows' fed token is a response token (None: the prompt, nothing counted)
            nonlocal sums, counts
            if rec is not None:
                rec.set_mask(torch.zeros(ids.shape, dtype=torch.bool, device=ids.device) if response is None
                             else response[:, None])
            res = model(input_ids=ids, attention_mask=am, position_ids=pos, use_cache=True, **kw)
            if rec is not None:
                got = rec.pop()
                assert isinstance(got, Tensor)
                if response is not None:
                    sums = got if sums is None else sums + got
                    counts = counts + response.float()
            return res

        try:
            out = step(input_ids, None, **keep)
        except TypeError:  # a model class without logits_to_keep
            keep = {}
            out = step(input_ids, None)
        cache = out.past_key_values
        steps: list[Tensor] = []
        for i in range(cfg.max_new_tokens):
            nxt = sample_next(out.logits[:, -1], do_sample=cfg.do_sample, temperature=cfg.temperature,
                              top_p=cfg.top_p, top_k=cfg.top_k, gen=gen)
            nxt = torch.where(done, torch.full_like(nxt, fill), nxt)
            steps.append(nxt)
            done = done | torch.isin(nxt, stops)
            last = bool(done.all()) or i == cfg.max_new_tokens - 1
            if last and (rec is None or bool(done.all())):
                break
            am = torch.cat([am, torch.ones_like(am[:, :1])], dim=-1)
            pos = pos[:, -1:] + 1
            # the fed token is a response token for every row not stopped (a stop token ends the response)
            out = step(nxt[:, None], ~done, past_key_values=cache, **keep)
            cache = out.past_key_values
            if last:  # fed only to read the last response tokens of rows that stopped on length
                break
    ids = torch.stack(steps, dim=1).cpu()
    if rec is None:
        return ids
    means = (sums / counts.clamp(min=1.0)[:, None, None] if sums is not None  # every response empty: zeros
             else torch.zeros(ids.shape[0], spec.n_layers, spec.d_model))
    return ids, means.float().cpu()


def generate_batch(lm: LoadedModel, prompts: Sequence[str], cfg: GenerationConfig, *,
                   interventions: Sequence[Intervention] = (), seed: int | None = None,
                   capture: bool = False) -> list[dict[str, Any]]:
    """Generate for one batch of rendered prompt texts; returns per-item text, token ids and finish reason.

    ``capture``: each record also gets ``acts`` — the mean residual over its response tokens at every layer,
    ``[L, D]`` float32, read off the decoding steps (:func:`decode`); not with a repetition penalty
    (transformers' own loop runs then, and no ``acts`` key is added)."""
    tok = lm.tokenizer
    enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    dev = lm.device
    inputs = {k: v.to(dev) for k, v in enc.items()}
    stop = _stop_ids(lm)
    kwargs: dict[str, Any] = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                                  eos_token_id=stop, pad_token_id=tok.pad_token_id,
                                  repetition_penalty=cfg.repetition_penalty)
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    # Fork every CUDA device's generator (a model spread over GPUs samples on the last one); none on a CPU.
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), torch.no_grad(), \
            autocast(dev, cfg.bf16), apply_interventions(lm.model, interventions, spec=lm.spec):
        torch.manual_seed(cfg.seed if seed is None else seed)
        acts: Tensor | None = None
        if cfg.repetition_penalty == 1.0:
            got = decode(lm.model, inputs["input_ids"], inputs["attention_mask"], cfg, stop,
                         seed=cfg.seed if seed is None else seed, pad=tok.pad_token_id, capture=capture,
                         spec=lm.spec)
            new, acts = got if isinstance(got, tuple) else (got, None)
        else:  # transformers' own loop applies the penalty
            out = lm.model.generate(**inputs, **kwargs)
            new = out[:, enc["input_ids"].shape[1]:].cpu()
    results = []
    for b, (row, p_ids, p_mask) in enumerate(zip(new.tolist(), enc["input_ids"], enc["attention_mask"],
                                                 strict=True)):
        ids: list[int] = []
        finish = "length"
        for t in row:
            if t in stop:
                finish = "stop"
                break
            ids.append(t)
        prompt_ids = p_ids[p_mask.bool()].tolist()
        results.append({"response": tok.decode(ids, skip_special_tokens=True).strip(), "response_ids": ids,
                        "prompt_ids": prompt_ids, "finish_reason": finish,
                        **({"acts": acts[b]} if acts is not None else {})})
    return results


def plan_batches(lm: LoadedModel, items: Sequence[GenItem], cfg: GenerationConfig) -> list[list[GenItem]]:
    """The batches of a generation run over ``items``: consecutive items, or with ``cfg.sort_by_length``
    items sorted by prompt token count (ties in item order). Depends only on the items and the config."""
    if not cfg.sort_by_length:
        return [list(items[i:i + cfg.batch_size]) for i in range(0, len(items), cfg.batch_size)]
    lengths = [len(x) for x in lm.tokenizer([it.prompt.text for it in items], add_special_tokens=False).input_ids]
    order = sorted(range(len(items)), key=lambda i: (lengths[i], i))
    return [[items[i] for i in order[s:s + cfg.batch_size]] for s in range(0, len(order), cfg.batch_size)]


def is_oom(exc: BaseException) -> bool:
    """Out of device memory: CUDA's ``torch.OutOfMemoryError``, or MPS's RuntimeError that says so."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower())


def _free_device_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    mps = getattr(torch, "mps", None)
    if mps is not None and getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        mps.empty_cache()


def _sub_seed(seed: int, start: int, size: int) -> int:
    """Seed of the part ``[start, start + size)`` of a batch that ran out of memory (deterministic)."""
    return (seed * 1_000_033 + start * 7_919 + size) % (2 ** 63 - 1)


class _Adaptive:
    """The largest batch that has fit so far; halved on every out-of-memory error and kept for the run."""

    def __init__(self, size: int) -> None:
        self.size = size


def _generate_adaptive(lm: LoadedModel, prompts: Sequence[str], cfg: GenerationConfig, seed: int,
                       interventions: Sequence[Intervention], limit: _Adaptive,
                       row_steer: tuple[int, torch.Tensor] | None = None, capture: bool = False
                       ) -> list[dict[str, Any]]:
    """Generate one planned batch, in parts of at most ``limit.size`` prompts, halving on out-of-memory.
    ``row_steer``: ``(layer, [B, D] deltas)`` added per row (sliced along with the prompts)."""
    from .hooks import Steer

    results: list[dict[str, Any]] = []
    start = 0
    while start < len(prompts):
        size = min(limit.size, len(prompts) - start)
        whole = size == len(prompts)
        ivs = list(interventions)
        if row_steer is not None:
            ivs.append(Steer(row_steer[1][start:start + size], (row_steer[0],), 1.0))
        try:
            res = generate_batch(lm, prompts[start:start + size], cfg, interventions=ivs,
                                 seed=seed if whole else _sub_seed(seed, start, size), capture=capture)
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not is_oom(exc):
                raise
            _free_device_memory()
            if size == 1:
                raise ModelError(f"out of memory generating one prompt on {lm.device} (max_new_tokens "
                                 f"{cfg.max_new_tokens}); lower max_new_tokens or spread the model with "
                                 "--device-map auto") from None
            limit.size = size // 2
            print(f"valuelens: out of memory at batch size {size} on {lm.device}; continuing with {limit.size}")
            continue
        if not whole:
            for r in res:
                r["oom_split"] = size
        results.extend(res)
        start += size
    return results


def generate_to_file(lm: LoadedModel, items: Sequence[GenItem], out_path: str | Path, cfg: GenerationConfig, *,
                     interventions: Sequence[Intervention] = (), desc: str = "generating",
                     on_batch: Callable[[int], None] | None = None,
                     batches: Sequence[int] | None = None, steer_layer: int | None = None,
                     capture_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Generate a response for every item into ``out_path`` (JSONL), resuming from what is already there.

    Returns the records in item order. ``batches``: generate only these batches of the plan over all
    ``items`` (see :func:`plan_batches`) — what a shard does; their records are identical to the same batches
    in a single-process run. ``on_batch(i)`` is called after batch i is durably written (tests use it to
    simulate a crash). ``steer_layer``: the layer where items' own ``steer`` vectors are added (needed when any
    item has one; items without one in the same batch get a zero row, i.e. the plain model).
    ``capture_dir``: also write each batch's response-token mean residuals (every layer, read off the decoding
    steps) to ``capture_dir/batch-NNNNN.safetensors`` (read back with :class:`GeneratedActs`) — the activations
    stage then needs no second pass. Skipped where generation cannot capture (vLLM, a repetition penalty).
    """
    ids = [it.id for it in items]
    if any(it.steer is not None for it in items) and steer_layer is None:
        raise ConfigError("items carry steering vectors: give steer_layer")
    if len(set(ids)) != len(ids):
        raise ConfigError("generation items must have unique ids")
    out_path = Path(out_path)
    plan = plan_batches(lm, items, cfg)
    selected = range(len(plan)) if batches is None else sorted(set(batches))
    if selected and not 0 <= min(selected) <= max(selected) < len(plan):
        raise ConfigError(f"batch index out of range: the plan has {len(plan)} batches")
    mine = {bi: plan[bi] for bi in selected}
    if batches is not None:
        wanted = {it.id for b in mine.values() for it in b}
        ids = [i for i in ids if i in wanted]
    done = {r["id"]: r for r in read_jsonl(out_path)}
    # Drop records of partly written batches (and unknown ids) so they are regenerated whole.
    keep_ids: set[str] = set()
    for b in mine.values():
        if all(it.id in done for it in b):
            keep_ids.update(it.id for it in b)
    if set(done) - keep_ids:
        kept = [r for r in read_jsonl(out_path) if r["id"] in keep_ids]
        atomic_write_text(out_path, "".join(_json_line(r) for r in kept))
        done = {r["id"]: r for r in kept}
    todo = [(bi, b) for bi, b in mine.items() if not all(it.id in done for it in b)]
    n_todo = sum(len(b) for _, b in todo)
    limit = _Adaptive(cfg.batch_size)
    steered = bool(interventions) or any(it.steer is not None for it in items)
    fast = _vllm_generator(lm, cfg, steered) if n_todo else None
    with fast or contextlib.nullcontext(), JsonlWriter(out_path) as writer, \
            tqdm(total=n_todo, desc=desc, unit="resp", disable=n_todo == 0, leave=False) as bar:
        for bi, batch in todo:
            if fast is not None:
                res = fast.generate([it.prompt.text for it in batch], cfg, cfg.seed * 1_000_003 + bi, _stop_ids(lm))
                records = [{"id": it.id, **it.meta, "prompt": it.prompt.to_dict(), **r, "batch": bi}
                           for it, r in zip(batch, res, strict=True)]
                done.update((r["id"], r) for r in records)
                writer.write_many(records)
                bar.update(len(batch))
                if on_batch is not None:
                    on_batch(bi)
                continue
            row_steer = None
            if steer_layer is not None and any(it.steer is not None for it in batch):
                d = lm.spec.d_model
                row_steer = (steer_layer, torch.stack([it.steer.detach().float().reshape(d) if it.steer is not None
                                                       else torch.zeros(d) for it in batch]))
            res = _generate_adaptive(lm, [it.prompt.text for it in batch], cfg, cfg.seed * 1_000_003 + bi,
                                     interventions, limit, row_steer, capture=capture_dir is not None)
            acts = [r.pop("acts", None) for r in res]
            if capture_dir is not None and all(a is not None for a in acts):
                _write_generated_acts(Path(capture_dir) / f"batch-{bi:05d}.safetensors", lm,
                                      [(it.id, r["response_ids"], a) for it, r, a in zip(batch, res, acts,
                                                                                         strict=True)])
            records = []
            for it, r in zip(batch, res, strict=True):
                rec = {"id": it.id, **it.meta, "prompt": it.prompt.to_dict(), **r, "batch": bi}
                records.append(rec)
                done[it.id] = rec
            writer.write_many(records)
            bar.update(len(batch))
            if on_batch is not None:
                on_batch(bi)
    return [done[i] for i in ids]


def _tokens_key(ids: Sequence[int]) -> str:
    """A short fingerprint of a response's token ids (side files are used only for the exact same tokens)."""
    import hashlib

    return hashlib.sha1(",".join(map(str, ids)).encode()).hexdigest()[:16]


def _write_generated_acts(path: Path, lm: LoadedModel, rows: Sequence[tuple[str, list[int], Tensor | None]]
                          ) -> None:
    """One generation batch's response means (rows with an empty response are left out), atomically."""
    import json

    from safetensors.torch import save_file

    from .runio import atomic_path

    keep = [(i, t, a) for i, t, a in rows if t and a is not None]
    if not keep:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"ids": json.dumps([i for i, _, _ in keep]), "tokens": json.dumps([_tokens_key(t) for _, t, _ in keep]),
            "model_hash": lm.model_hash, "reduction": "mean over response tokens (during generation)",
            "layers": json.dumps(list(range(lm.spec.n_layers)))}
    with atomic_path(path) as tmp:
        save_file({"acts": torch.stack([a for _, _, a in keep]).float().contiguous()}, str(tmp), metadata=meta)


class GeneratedActs:
    """The response means generation wrote into ``folder`` (:func:`generate_to_file` with ``capture_dir``),
    indexed once from the files' metadata; :meth:`get` loads only the rows asked for.

    A row is used only where its file's model hash and its response's exact tokens match the record (a
    regenerated or foreign response is left out, and the caller captures it by a forward pass)."""

    def __init__(self, folder: str | Path, model_hash: str) -> None:
        import json

        from safetensors import safe_open

        self.index: dict[str, tuple[Path, int, str]] = {}  # id -> (file, row, tokens fingerprint)
        folder = Path(folder)
        for f in sorted(folder.glob("batch-*.safetensors")) if folder.is_dir() else []:
            try:
                with safe_open(str(f), framework="pt") as fh:
                    meta = fh.metadata() or {}
                if meta.get("model_hash") != model_hash:
                    continue
                for k, (i, t) in enumerate(zip(json.loads(meta["ids"]), json.loads(meta["tokens"]), strict=True)):
                    self.index[i] = (f, k, str(t))
            except (OSError, KeyError, ValueError, TypeError):
                continue  # a damaged side file only costs a forward pass

    def get(self, records: Sequence[dict[str, Any]]) -> dict[str, Tensor]:
        """``{id: [L, D] float32}`` for the records (``id``, ``response_ids``) this folder holds."""
        from safetensors import safe_open

        by_file: dict[Path, list[tuple[str, int]]] = {}
        for r in records:
            hit = self.index.get(r["id"])
            if hit is not None and hit[2] == _tokens_key(r["response_ids"]):
                by_file.setdefault(hit[0], []).append((r["id"], hit[1]))
        out: dict[str, Tensor] = {}
        for f, rows in by_file.items():
            try:
                with safe_open(str(f), framework="pt") as fh:
                    sl = fh.get_slice("acts")
                    for i, k in rows:
                        out[i] = sl[k:k + 1][0]
            except (OSError, ValueError):
                continue
        return out


def _vllm_generator(lm: LoadedModel, cfg: GenerationConfig, steered: bool) -> Any:
    """A vLLM generator when the config asks for one and it can run here; else None, with the reason logged
    (the run then generates on HF, as it would with ``backend="hf"``)."""
    if cfg.backend == "hf":
        return None
    from .backends_vllm import VLLMGenerator, vllm_unavailable
    from .progress import log

    reason = vllm_unavailable(lm, steered=steered)
    if reason is not None:
        log(f"valuelens: generating with HF transformers, not vLLM: {reason}")
        return None
    return VLLMGenerator(lm)


def _json_line(r: dict[str, Any]) -> str:
    import json

    return json.dumps(r, ensure_ascii=False) + "\n"


def capture_responses(lm: LoadedModel, records: Sequence[dict[str, Any]], *, layers: Sequence[int] | None = None,
                      batch_size: int = 16, bf16: bool = False, neurons: bool = False,
                      desc: str = "activations") -> Iterator[tuple[list[str], Tensor]]:
    """Mean residual stream over **response tokens only** for generated records, batch by batch.

    Re-runs ``prompt_ids + response_ids`` (the exact generated tokens, not a re-tokenisation) with left padding
    and yields ``(ids, acts [B, L, D])`` (or neuron activations ``[B, L, d_mlp]``). Records with an empty
    response give zeros and should be filtered by the caller.
    """
    pad = lm.tokenizer.pad_token_id
    order = sorted(range(len(records)), key=lambda i: len(records[i]["prompt_ids"]) + len(records[i]["response_ids"]))
    size = batch_size
    s = 0
    with tqdm(total=len(records), desc=desc, unit="resp", leave=False) as bar:
        while s < len(order):
            idx = order[s:s + size]
            seqs = [records[i]["prompt_ids"] + records[i]["response_ids"] for i in idx]
            t = max(len(x) for x in seqs)
            input_ids = torch.full((len(idx), t), pad, dtype=torch.long)
            attn = torch.zeros((len(idx), t), dtype=torch.long)
            resp = torch.zeros((len(idx), t), dtype=torch.bool)
            for row, i in enumerate(idx):
                seq = seqs[row]
                n_resp = len(records[i]["response_ids"])
                input_ids[row, t - len(seq):] = torch.tensor(seq, dtype=torch.long)
                attn[row, t - len(seq):] = 1
                if n_resp:
                    resp[row, t - n_resp:] = True
            try:
                acts = forward_capture(lm.model, input_ids, attn, token_mask=resp, layers=layers, spec=lm.spec,
                                       bf16=bf16, neurons=neurons)
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                # Out of device memory: retry this batch in halves (each item's numbers do not depend on it).
                if not is_oom(exc) or len(idx) == 1:
                    raise
                _free_device_memory()
                size = len(idx) // 2
                print(f"valuelens: out of memory capturing {len(idx)} responses on {lm.device}; continuing with {size}")
                continue
            assert isinstance(acts, Tensor)
            yield [records[i]["id"] for i in idx], acts
            bar.update(len(idx))
            s += len(idx)
