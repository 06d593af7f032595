"""Continuous batching of generation requests, each row with its own steering (the server's model loop).

One thread owns the model. Requests wait in a queue; the loop admits them into the running batch (up to
``max_batch`` rows), runs their prefill together, merges their KV cache into the batch's (left padding, masked),
and then decodes one token for every row per step. A row leaves the batch as soon as it stops (end-of-turn token,
a stop string, ``max_tokens``, or its client went away) and its slot is free for the next request at the next
step — no request waits for a whole batch to finish.

Steering is per row: :func:`valuelens.hooks.steer_rows` keeps one hook per layer, and before each forward the
loop sets the ``[B, D]`` deltas of the rows in the batch (zeros for unsteered rows, which leaves their numbers
bit for bit unchanged). A row's arithmetic is that of the library: prefill + every decoding step steered,
``alpha · vector`` added in float32 at the steered layer, position ids from the attention mask as in
``generate``, the library's sampler (:func:`valuelens.generate.sample_next`: temperature, top-k, top-p) with a
per-request ``torch.Generator`` seeded with the request's seed — so a greedy request returns what :func:`valuelens.generate.generate_batch` returns, and a seeded
sampled request alone in the batch draws the same tokens.

Models whose KV cache is not a plain per-layer key/value tensor (sliding-window or linear-attention layers) are
served with *dynamic* batching instead: waiting requests start together once the running batch has drained.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..generate import sample_next
from ..models import LoadedModel, autocast

__all__ = ["Engine", "Job", "Sampling"]


@dataclass(frozen=True)
class Sampling:
    """Decoding settings of one request. ``temperature == 0`` is greedy (argmax), as in OpenAI's API."""

    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    ignore_eos: bool = False  # keep generating past end-of-turn tokens (fixed-length benchmarks)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass(eq=False)
class Job:
    """One request inside the engine: its prompt, settings, steering and the events it sends back.

    Events on :attr:`events` (read by the HTTP thread): ``("delta", text)`` for each new piece of text,
    then ``("done", finish_reason)``, or ``("error", status, message)``.
    """

    prompt_ids: list[int]
    sampling: Sampling
    steers: Sequence[Any] = ()  # ResolvedSteer
    events: queue.Queue[tuple[Any, ...]] = field(default_factory=queue.Queue)
    ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    max_batch: int = 0  # the most rows this request shared a step with
    cancelled: bool = False
    seed_used: int | None = None
    serial: int = 0  # set by Engine.submit: unique per engine (ids of freed objects can repeat)
    _sent: int = 0
    _gen: torch.Generator | None = None
    _counts: dict[int, int] = field(default_factory=dict)

    def cancel(self) -> None:
        """The client went away: the row leaves the batch at the next step."""
        self.cancelled = True


class _Batch:
    """The running batch: rows, their KV cache, attention mask, and the token each row feeds next."""

    def __init__(self) -> None:
        self.jobs: list[Job] = []
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # [B, T] long
        self.next_ids: torch.Tensor | None = None  # [B]

    def __len__(self) -> int:
        return len(self.jobs)


def _mergeable(cache: Any) -> bool:
    """True when every cache layer is a plain growing key/value pair we can pad, concatenate and slice."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(la) is DynamicLayer and getattr(la, "keys", None) is not None
                                for la in layers)


def _pad_left(x: torch.Tensor, n: int, dim: int) -> torch.Tensor:
    if n == 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([torch.zeros(shape, dtype=x.dtype, device=x.device), x], dim=dim)


class Engine:
    """The model loop. ``submit`` a :class:`Job`; read its events. Thread-safe; one model thread.

    ``max_batch``: rows decoded together. ``batch_window``: seconds an idle engine waits after the first request
    for others to start with it. ``max_queue``: waiting requests beyond which :meth:`submit` refuses (the server
    answers 503). ``bf16``: run under bfloat16 autocast (faster on CPUs with bf16 instructions; numbers drift
    from float32 after a few dozen tokens).
    """

    def __init__(self, lm: LoadedModel, *, max_batch: int = 16, batch_window: float = 0.01, max_queue: int = 256,
                 bf16: bool = False) -> None:
        from ..generate import _stop_ids

        self.lm = lm
        self.max_batch = max(1, int(max_batch))
        self.batch_window = float(batch_window)
        self.max_queue = int(max_queue)
        self.bf16 = bf16
        self.stop_ids = set(_stop_ids(lm))
        self.waiting: queue.Queue[Job] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._lock = threading.Lock()
        self.stats = {"steps": 0, "tokens": 0, "requests": 0, "max_rows": 0, "errors": 0}
        self._can_merge: bool | None = None
        self._delta_key: tuple[int, ...] = ()
        self._serial = 0
        self._delta_out: dict[int, list[torch.Tensor]] = {}

    # -- lifecycle ---------------------------------------------------------------------------------------------
    def start(self) -> Engine:
        if self._thread is None:
            self._running.set()
            self._thread = threading.Thread(target=self._loop, name="valuelens-engine", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._running.clear()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def submit(self, job: Job) -> Job:
        from .steering import RequestError

        if self.waiting.qsize() >= self.max_queue:
            raise RequestError("the server is busy (request queue full); retry later", status=503,
                               type="server_error", code="overloaded")
        if job.sampling.seed is None and not job.sampling.greedy:
            job.seed_used = int.from_bytes(os.urandom(6), "little")
        else:
            job.seed_used = job.sampling.seed
        if not job.sampling.greedy:
            job._gen = torch.Generator(device="cpu").manual_seed(int(job.seed_used or 0))
        with self._lock:
            self._serial += 1
            job.serial = self._serial
        self.waiting.put(job)
        return job

    # -- the loop ----------------------------------------------------------------------------------------------
    def _loop(self) -> None:
        from ..hooks import steer_rows

        model = self.lm.model
        batch = _Batch()
        with torch.no_grad(), steer_rows(model, spec=self.lm.spec) as rows:
            while self._running.is_set():
                try:
                    new = self._admit(batch)
                    if new:
                        self._prefill(batch, new, rows)
                    if batch.jobs:
                        self._decode(batch, rows)
                except Exception as exc:  # a failing step fails its rows, never the server
                    self.stats["errors"] += 1
                    msg = f"generation failed: {type(exc).__name__}: {str(exc)[:300]}"
                    for j in batch.jobs:
                        j.events.put(("error", 500, msg))
                    batch = _Batch()
                    rows.clear()

    def _admit(self, batch: _Batch) -> list[Job]:
        """Requests to start now: block while idle; join the running batch only when caches can merge."""
        if not batch.jobs:
            try:
                first = self.waiting.get(timeout=0.1)
            except queue.Empty:
                return []
            new = [first]
            deadline = time.monotonic() + self.batch_window
            while len(new) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                try:
                    new.append(self.waiting.get(timeout=left))
                except queue.Empty:
                    break
        else:
            if self._can_merge is False:
                return []
            new = []
            while len(batch.jobs) + len(new) < self.max_batch:
                try:
                    new.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
        live = []
        for j in new:
            if j.cancelled:
                continue
            live.append(j)
        self.stats["requests"] += len(live)
        return live

    def _set_deltas(self, jobs: Sequence[Job], rows: Any) -> None:
        """Per-layer slot tensors ``[B, D]`` for these rows (zero rows where a job has no steer there).

        Built once per batch composition: most decoding steps reuse the previous step's tensors.
        """
        key = tuple(j.serial for j in jobs)
        if key == self._delta_key:
            if self._delta_out:
                rows.set(self._delta_out)
            return
        self._delta_key = key
        self._delta_out = self._build_deltas(jobs)
        if self._delta_out:
            rows.set(self._delta_out)

    def _build_deltas(self, jobs: Sequence[Job]) -> dict[int, list[torch.Tensor]]:
        by_layer: dict[int, list[list[torch.Tensor | None]]] = {}
        for r, j in enumerate(jobs):
            seen: dict[int, int] = {}
            for st in j.steers:
                k = seen.get(st.layer, 0)
                seen[st.layer] = k + 1
                slots = by_layer.setdefault(st.layer, [])
                while len(slots) <= k:
                    slots.append([None] * len(jobs))
                slots[k][r] = st.delta
        dev = self.lm.device
        d = self.lm.spec.d_model
        out: dict[int, list[torch.Tensor]] = {}
        for layer, slots in by_layer.items():
            out[layer] = [torch.stack([x if x is not None else torch.zeros(d) for x in slot]).to(dev)
                          for slot in slots]
        return out

    def _forward(self, ids: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, cache: Any, rows: Any
                 ) -> torch.Tensor:
        dev = self.lm.device
        try:
            with autocast(dev, self.bf16):
                out = self.lm.model(input_ids=ids.to(dev), attention_mask=mask.to(dev), position_ids=pos.to(dev),
                                    cache=cache, use_cache=True, logits_to_keep=1)
        finally:
            rows.clear()  # the deltas belong to this forward only (the model stays usable by other code)
        return out.logits[:, -1].to(copy=True, dtype=torch.float32, device="cpu")

    def _prefill(self, batch: _Batch, new: list[Job], rows: Any) -> None:
        from transformers.cache_utils import DynamicCache

        t = max(len(j.prompt_ids) for j in new)
        pad = self.lm.tokenizer.pad_token_id or 0
        ids = torch.full((len(new), t), int(pad), dtype=torch.long)
        mask = torch.zeros((len(new), t), dtype=torch.long)
        for r, j in enumerate(new):
            n = len(j.prompt_ids)
            ids[r, t - n:] = torch.tensor(j.prompt_ids, dtype=torch.long)
            mask[r, t - n:] = 1
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        cache = DynamicCache(config=self.lm.model.config)
        self._set_deltas(new, rows)
        logits = self._forward(ids, mask, pos, cache, rows)
        if self._can_merge is None:
            self._can_merge = _mergeable(cache)
        first = self._pick(new, logits)
        start = len(batch.jobs)
        if not batch.jobs:
            batch.jobs, batch.cache, batch.mask, batch.next_ids = list(new), cache, mask, first
        else:
            self._merge(batch, new, cache, mask, first)
        self._emit(batch, first, start)

    def _merge(self, batch: _Batch, new: list[Job], cache: Any, mask: torch.Tensor, first: torch.Tensor) -> None:
        """Append the prefilled rows to the running batch, left-padding whichever side is shorter."""
        assert batch.mask is not None and batch.next_ids is not None
        t_old, t_new = batch.mask.shape[1], mask.shape[1]
        t = max(t_old, t_new)
        for lo, ln in zip(batch.cache.layers, cache.layers, strict=True):
            lo.keys = torch.cat([_pad_left(lo.keys, t - t_old, 2), _pad_left(ln.keys, t - t_new, 2)], dim=0)
            lo.values = torch.cat([_pad_left(lo.values, t - t_old, 2), _pad_left(ln.values, t - t_new, 2)], dim=0)
        batch.mask = torch.cat([_pad_left(batch.mask, t - t_old, 1), _pad_left(mask, t - t_new, 1)], dim=0)
        batch.jobs.extend(new)
        batch.next_ids = torch.cat([batch.next_ids, first])

    def _decode(self, batch: _Batch, rows: Any) -> None:
        assert batch.mask is not None and batch.next_ids is not None
        b = len(batch.jobs)
        batch.mask = torch.cat([batch.mask, torch.ones((b, 1), dtype=torch.long)], dim=1)
        pos = batch.mask.sum(-1, keepdim=True) - 1
        self._set_deltas(batch.jobs, rows)
        logits = self._forward(batch.next_ids[:, None], batch.mask, pos, batch.cache, rows)
        nxt = self._pick(batch.jobs, logits)
        batch.next_ids = nxt
        self._emit(batch, nxt)

    def _pick(self, jobs: Sequence[Job], logits: torch.Tensor) -> torch.Tensor:
        """Next token per row: argmax for greedy rows; HF's warpers + the row's own generator otherwise."""
        b = len(jobs)
        self.stats["max_rows"] = max(self.stats["max_rows"], b)
        out = torch.argmax(logits, dim=-1)
        for r, j in enumerate(jobs):
            j.max_batch = max(j.max_batch, b)
            s = j.sampling
            if s.greedy and not (s.presence_penalty or s.frequency_penalty):
                continue
            scores = logits[r:r + 1].clone()
            if (s.presence_penalty or s.frequency_penalty) and j._counts:
                idx = torch.tensor(list(j._counts), dtype=torch.long)
                cnt = torch.tensor(list(j._counts.values()), dtype=torch.float32)
                scores[0, idx] -= s.frequency_penalty * cnt + s.presence_penalty
            if s.greedy:
                out[r] = torch.argmax(scores, dim=-1)[0]
                continue
            out[r] = sample_next(scores, do_sample=True, temperature=s.temperature, top_p=s.top_p, top_k=s.top_k,
                                 gen=j._gen)[0]
        return out

    def _emit(self, batch: _Batch, toks: torch.Tensor, start: int = 0) -> None:
        """Record the new token of rows ``start…`` (``toks[r - start]``), send their new text, drop finished rows."""
        tok = self.lm.tokenizer
        keep: list[int] = list(range(start))
        for r, j in enumerate(batch.jobs):
            if r < start:
                continue
            t = int(toks[r - start])
            self.stats["tokens"] += 1
            if j.cancelled:
                j.finish_reason = "cancelled"
                continue
            if t in self.stop_ids and not j.sampling.ignore_eos:
                self._finish(j, "stop", tok)
                continue
            j.ids.append(t)
            j._counts[t] = j._counts.get(t, 0) + 1
            if self._send(j, tok, final=False):
                continue
            if len(j.ids) >= j.sampling.max_tokens:
                self._finish(j, "length", tok)
                continue
            keep.append(r)
        self.stats["steps"] += start == 0
        if len(keep) == len(batch.jobs):
            return
        if not keep:
            batch.jobs, batch.cache, batch.mask, batch.next_ids = [], None, None, None
            return
        idx = torch.tensor(keep, dtype=torch.long)
        assert batch.mask is not None and batch.next_ids is not None
        mask = batch.mask[idx]
        if self._can_merge:
            # Columns that are padding in every remaining row are dropped: the batch never grows wider than needed.
            lead = int((mask.sum(0) == 0).long().cumprod(0).sum())
            for la in batch.cache.layers:
                dev = la.keys.device
                la.keys = la.keys[idx.to(dev), :, lead:]
                la.values = la.values[idx.to(dev), :, lead:]
            batch.mask = mask[:, lead:]
        else:  # other cache layouts: the cache's own row selection, no trimming
            batch.cache.batch_select_indices(idx.to(self.lm.device))
            batch.mask = mask
        batch.jobs = [batch.jobs[i] for i in keep]
        batch.next_ids = batch.next_ids[idx]

    def _send(self, j: Job, tok: Any, *, final: bool) -> bool:
        """Send the text not yet sent (holding back a possible stop-string prefix); True if a stop string hit."""
        text = tok.decode(j.ids, skip_special_tokens=True)
        hit = None
        for s in j.sampling.stop:
            i = text.find(s, max(0, j._sent - len(s)))
            if i >= 0 and (hit is None or i < hit):
                hit = i
        if hit is not None:
            text = text[:hit]
            final = True
        end = len(text)
        if not final:
            if text.endswith("\ufffd"):  # an incomplete UTF-8 character: wait for the next token
                end = len(text.rstrip("\ufffd"))
            for s in j.sampling.stop:  # hold back a suffix that may start a stop string
                for k in range(min(len(s) - 1, end), 0, -1):
                    if text[:end].endswith(s[:k]):
                        end -= k
                        break
        if end > j._sent:
            j.events.put(("delta", text[j._sent:end]))
            j._sent = end
        if hit is not None:
            j.finish_reason = "stop"
            j.events.put(("done", "stop"))
            return True
        return False

    def _finish(self, j: Job, reason: str, tok: Any) -> None:
        if self._send(j, tok, final=True):
            return
        j.finish_reason = reason
        j.events.put(("done", reason))


@contextlib.contextmanager
def running(engine: Engine) -> Any:
    """Start the engine for the duration of a block."""
    engine.start()
    try:
        yield engine
    finally:
        engine.stop()
