"""Generation at scale on a tiny random Llama: batches halved on a real out-of-memory error, length-sorted
batches, and shards (subsets of the batch plan) whose union equals the single-process run."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator

import pytest
import torch
from test_devices import items_for, tiny_lm

from valuelens.errors import ModelError
from valuelens.generate import GenerationConfig, capture_responses, generate_to_file, is_oom, plan_batches
from valuelens.runio import read_jsonl


@contextlib.contextmanager
def memory_limit(model: torch.nn.Module, max_rows: int) -> Iterator[list[int]]:
    """Make every forward pass over more than ``max_rows`` sequences raise a real ``torch.OutOfMemoryError``
    (what CUDA raises when a batch does not fit). Yields the batch sizes that were refused."""
    refused: list[int] = []

    def hook(_m: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None and ids.shape[0] > max_rows:
            refused.append(int(ids.shape[0]))
            raise torch.OutOfMemoryError(f"CUDA out of memory. Tried to allocate a batch of {ids.shape[0]}")

    h = model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield refused
    finally:
        h.remove()


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def test_out_of_memory_halves_the_batch_and_loses_nothing(lm, tmp_path):
    items = items_for(lm, 13)
    cfg = GenerationConfig(max_new_tokens=6, batch_size=8, seed=2)
    ref = generate_to_file(lm, items, tmp_path / "ref.jsonl", cfg)
    with memory_limit(lm.model, 3) as refused:
        got = generate_to_file(lm, items, tmp_path / "oom.jsonl", cfg)
    # 8 → 4 → 2 on the first batch; the smaller size is then kept (the second batch is not refused at 8 again).
    assert refused == [8, 4]
    rows = read_jsonl(tmp_path / "oom.jsonl")
    assert [r["id"] for r in got] == [it.id for it in items]
    assert sorted(r["id"] for r in rows) == sorted(it.id for it in items)  # each once in the file
    assert {r["oom_split"] for r in rows} == {1, 2} and {r["batch"] for r in rows} == {0, 1}
    # Greedy decoding does not depend on the batch an item is in.
    assert [r["response_ids"] for r in got] == [r["response_ids"] for r in ref]
    assert all("oom_split" not in r for r in ref)


def test_out_of_memory_with_sampling_is_deterministic_and_resumable(lm, tmp_path):
    items = items_for(lm, 10, seed=1)
    cfg = GenerationConfig(max_new_tokens=5, batch_size=4, do_sample=True, seed=9)
    with memory_limit(lm.model, 2):
        a = generate_to_file(lm, items, tmp_path / "a.jsonl", cfg)

    class Crash(Exception):
        pass

    def crash(bi: int) -> None:
        if bi == 1:
            raise Crash

    with memory_limit(lm.model, 2), pytest.raises(Crash):
        generate_to_file(lm, items, tmp_path / "b.jsonl", cfg, on_batch=crash)
    assert len(read_jsonl(tmp_path / "b.jsonl")) == 8  # batches 0 and 1 written, then the process "died"
    with memory_limit(lm.model, 2):
        b = generate_to_file(lm, items, tmp_path / "b.jsonl", cfg)
    assert a == b and len(read_jsonl(tmp_path / "b.jsonl")) == 10


def test_a_single_prompt_that_does_not_fit_is_a_clear_error(lm, tmp_path):
    items = items_for(lm, 3)
    with memory_limit(lm.model, 0), pytest.raises(ModelError, match="out of memory generating one prompt"):
        generate_to_file(lm, items, tmp_path / "x.jsonl", GenerationConfig(max_new_tokens=3, batch_size=2))
    assert read_jsonl(tmp_path / "x.jsonl") == []


def test_other_runtime_errors_are_not_taken_for_out_of_memory(lm, tmp_path):
    assert is_oom(torch.OutOfMemoryError("x")) and is_oom(RuntimeError("MPS backend out of memory"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_capture_halves_on_out_of_memory_with_the_same_numbers(lm, tmp_path):
    items = items_for(lm, 9, seed=4)
    recs = generate_to_file(lm, items, tmp_path / "r.jsonl", GenerationConfig(max_new_tokens=4, batch_size=9))
    ref = {i: a for ids, acts in capture_responses(lm, recs, batch_size=8) for i, a in zip(ids, acts, strict=True)}
    with memory_limit(lm.model.model, 3) as refused:  # capture runs the decoder stack without the LM head
        got = {i: a for ids, acts in capture_responses(lm, recs, batch_size=8)
               for i, a in zip(ids, acts, strict=True)}
    assert refused and got.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], atol=1e-5, rtol=0)


def test_length_sorted_batches_pad_less_and_keep_item_order(lm, tmp_path):
    items = items_for(lm, 16, seed=3)
    plain = GenerationConfig(max_new_tokens=4, batch_size=4)
    srt = GenerationConfig(max_new_tokens=4, batch_size=4, sort_by_length=True)

    def padding(cfg: GenerationConfig) -> int:
        total = 0
        for b in plan_batches(lm, items, cfg):
            n = [len(lm.tokenizer(it.prompt.text, add_special_tokens=False).input_ids) for it in b]
            total += sum(max(n) - x for x in n)
        return total

    assert padding(srt) < padding(plain)
    a = generate_to_file(lm, items, tmp_path / "plain.jsonl", plain)
    b = generate_to_file(lm, items, tmp_path / "sorted.jsonl", srt)
    assert [r["id"] for r in b] == [it.id for it in items]
    assert [r["response_ids"] for r in a] == [r["response_ids"] for r in b]  # greedy: same answers


@pytest.mark.parametrize("sort_by_length", [False, True])
def test_shards_of_the_batch_plan_union_to_the_single_run(lm, tmp_path, sort_by_length):
    items = items_for(lm, 15, seed=5)
    cfg = GenerationConfig(max_new_tokens=5, batch_size=4, do_sample=True, seed=11, sort_by_length=sort_by_length)
    whole = generate_to_file(lm, items, tmp_path / "whole.jsonl", cfg)
    n_batches = len(plan_batches(lm, items, cfg))
    parts = [generate_to_file(lm, items, tmp_path / f"s{i}.jsonl", cfg, batches=range(i, n_batches, 2))
             for i in range(2)]
    union = {r["id"]: r for p in parts for r in p}
    assert sum(len(p) for p in parts) == len(items) == len(union)
    assert [union[r["id"]] for r in whole] == whole
    lines = [json.loads(x) for i in range(2) for x in (tmp_path / f"s{i}.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in lines) == sorted(it.id for it in items)
