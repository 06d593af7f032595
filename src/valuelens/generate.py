"""Batched, seeded, resumable generation under any set of hooks, and response-token activation capture.

Resumability: items are cut into fixed batches from the full (ordered) item list, and each finished batch is
appended to a JSONL file in one write. On restart, complete batches are skipped; a batch that was only
partly written (the process died mid-write) is dropped and regenerated whole, so every response appears
exactly once and a resumed run equals an uninterrupted one (each batch's sampling seed depends only on the
run seed and the batch's index).

>>> from valuelens.generate import GenerationConfig
>>> GenerationConfig(max_new_tokens=32).do_sample
False
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from .errors import ConfigError
from .hooks import Intervention, apply_interventions, forward_capture
from .models import LoadedModel, RenderedPrompt
from .runio import JsonlWriter, atomic_write_text, read_jsonl

__all__ = ["GenItem", "GenerationConfig", "capture_responses", "generate_batch", "generate_to_file"]


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling settings; recorded verbatim in every output record's manifest."""

    max_new_tokens: int = 96
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    repetition_penalty: float = 1.0
    seed: int = 0
    batch_size: int = 8
    bf16: bool = False

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ConfigError("max_new_tokens must be >= 1")
        if self.batch_size < 1:
            raise ConfigError("batch_size must be >= 1")
        if self.do_sample and not self.temperature > 0:
            raise ConfigError("temperature must be > 0 when sampling")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class GenItem:
    """One prompt to answer: a stable id, the rendered prompt and metadata copied into the output record."""

    id: str
    prompt: RenderedPrompt
    meta: dict[str, Any]


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


def generate_batch(lm: LoadedModel, prompts: Sequence[str], cfg: GenerationConfig, *,
                   interventions: Sequence[Intervention] = (), seed: int | None = None) -> list[dict[str, Any]]:
    """Generate for one batch of rendered prompt texts; returns per-item text, token ids and finish reason."""
    tok = lm.tokenizer
    enc = tok(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    stop = _stop_ids(lm)
    kwargs: dict[str, Any] = dict(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                                  eos_token_id=stop, pad_token_id=tok.pad_token_id,
                                  repetition_penalty=cfg.repetition_penalty)
    if cfg.do_sample:
        kwargs.update(temperature=cfg.temperature, top_p=cfg.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()
    with torch.random.fork_rng(), torch.no_grad(), autocast, \
            apply_interventions(lm.model, interventions, spec=lm.spec):
        torch.manual_seed(cfg.seed if seed is None else seed)
        out = lm.model.generate(**enc, **kwargs)
    new = out[:, enc["input_ids"].shape[1]:]
    results = []
    for row, p_ids, p_mask in zip(new.tolist(), enc["input_ids"], enc["attention_mask"], strict=True):
        ids: list[int] = []
        finish = "length"
        for t in row:
            if t in stop:
                finish = "stop"
                break
            ids.append(t)
        prompt_ids = p_ids[p_mask.bool()].tolist()
        results.append({"response": tok.decode(ids, skip_special_tokens=True).strip(), "response_ids": ids,
                        "prompt_ids": prompt_ids, "finish_reason": finish})
    return results


def _batches(items: Sequence[GenItem], size: int) -> list[list[GenItem]]:
    return [list(items[i:i + size]) for i in range(0, len(items), size)]


def generate_to_file(lm: LoadedModel, items: Sequence[GenItem], out_path: str | Path, cfg: GenerationConfig, *,
                     interventions: Sequence[Intervention] = (), desc: str = "generating",
                     on_batch: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Generate a response for every item into ``out_path`` (JSONL), resuming from what is already there.

    Returns all records in item order. ``on_batch(i)`` is called after batch i is durably written (tests use it
    to simulate a crash).
    """
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise ConfigError("generation items must have unique ids")
    out_path = Path(out_path)
    batches = _batches(items, cfg.batch_size)
    done = {r["id"]: r for r in read_jsonl(out_path)}
    # Drop records of partly written batches (and unknown ids) so they are regenerated whole.
    keep_ids: set[str] = set()
    for b in batches:
        if all(it.id in done for it in b):
            keep_ids.update(it.id for it in b)
    if set(done) - keep_ids:
        kept = [r for r in read_jsonl(out_path) if r["id"] in keep_ids]
        atomic_write_text(out_path, "".join(_json_line(r) for r in kept))
        done = {r["id"]: r for r in kept}
    todo = [(bi, b) for bi, b in enumerate(batches) if not all(it.id in done for it in b)]
    n_todo = sum(len(b) for _, b in todo)
    with JsonlWriter(out_path) as writer, tqdm(total=n_todo, desc=desc, unit="resp", disable=n_todo == 0,
                                               leave=False) as bar:
        for bi, batch in todo:
            res = generate_batch(lm, [it.prompt.text for it in batch], cfg, interventions=interventions,
                                 seed=cfg.seed * 1_000_003 + bi)
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
    with tqdm(total=len(records), desc=desc, unit="resp", leave=False) as bar:
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
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
            acts = forward_capture(lm.model, input_ids, attn, token_mask=resp, layers=layers, spec=lm.spec,
                                   bf16=bf16, neurons=neurons)
            assert isinstance(acts, Tensor)
            yield [records[i]["id"] for i in idx], acts
            bar.update(len(idx))
