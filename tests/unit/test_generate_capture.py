"""Activations read off the decoding steps equal a re-run of prompt + response (what the activations stage did
alone before): in ``decode``, through ``generate_to_file``'s side files, and in the extract run on the tiny model."""

from __future__ import annotations

import json

import pytest
import torch

from valuelens.generate import (
    GeneratedActs,
    GenerationConfig,
    GenItem,
    _stop_ids,
    capture_responses,
    decode,
    generate_to_file,
)
from valuelens.testing import tiny_chat_lm

QUERIES = ["Should I move abroad?", "Hi", "Is it fine to skip a family tradition this year?", "Tell me a joke",
           "What should I value most in a job offer?"]


@pytest.fixture(scope="module")
def lm():  # type: ignore[no-untyped-def]
    return tiny_chat_lm()


def _rerun(lm, records):  # type: ignore[no-untyped-def]
    out = {}
    for ids, acts in capture_responses(lm, records, batch_size=3):
        out.update(zip(ids, acts, strict=True))
    return out


@pytest.mark.parametrize("do_sample", [False, True])
def test_decode_capture_equals_a_rerun_of_prompt_and_response(lm, do_sample: bool) -> None:
    enc = lm.tokenizer([lm.chat.render(q).text for q in QUERIES], return_tensors="pt", padding=True,
                       add_special_tokens=False)
    cfg = GenerationConfig(max_new_tokens=9, do_sample=do_sample, temperature=1.0, top_p=0.95, seed=2)
    pad = lm.tokenizer.pad_token_id
    with torch.no_grad():
        free = decode(lm.model, enc["input_ids"], enc["attention_mask"], cfg, _stop_ids(lm), seed=2, pad=pad)
    # Stop on tokens some rows sample midway, so rows end at different steps and others run to the length limit.
    stop = sorted({int(free[0, 3]), int(free[2, 5])})
    with torch.no_grad():
        ids, means = decode(lm.model, enc["input_ids"], enc["attention_mask"], cfg, stop, seed=2, pad=pad,
                            capture=True, spec=lm.spec)
        plain = decode(lm.model, enc["input_ids"], enc["attention_mask"], cfg, stop, seed=2, pad=pad)
    assert torch.equal(ids, plain)  # capturing changes nothing about the tokens
    records = []
    for b, row in enumerate(ids.tolist()):
        resp = []
        for t in row:
            if t in stop:
                break
            resp.append(t)
        prompt = enc["input_ids"][b][enc["attention_mask"][b].bool()].tolist()
        records.append({"id": str(b), "prompt_ids": prompt, "response_ids": resp})
    lengths = [len(r["response_ids"]) for r in records]
    assert min(lengths) < 9 and max(lengths) == 9, lengths  # both ways of ending are exercised
    assert means.shape == (len(QUERIES), lm.spec.n_layers, lm.spec.d_model)
    ref = _rerun(lm, [r for r in records if r["response_ids"]])
    for b, r in enumerate(records):
        if r["response_ids"]:
            torch.testing.assert_close(means[b], ref[str(b)].float(), atol=2e-5, rtol=1e-4)
        else:
            assert not means[b].any()


def test_decode_capture_needs_the_spec(lm) -> None:
    enc = lm.tokenizer([lm.chat.render("Hi").text], return_tensors="pt", add_special_tokens=False)
    with pytest.raises(Exception, match="needs the model's spec"):
        decode(lm.model, enc["input_ids"], enc["attention_mask"], GenerationConfig(max_new_tokens=2),
               _stop_ids(lm), seed=0, pad=0, capture=True)


def test_generate_to_file_side_files_round_trip(lm, tmp_path) -> None:
    items = [GenItem(id=f"q{i}", prompt=lm.chat.render(q), meta={}) for i, q in enumerate(QUERIES)]
    cfg = GenerationConfig(max_new_tokens=6, do_sample=True, temperature=1.0, seed=5, batch_size=2)
    recs = generate_to_file(lm, items, tmp_path / "r.jsonl", cfg, capture_dir=tmp_path / "acts")
    assert all("acts" not in json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines())
    assert len(list((tmp_path / "acts").glob("batch-*.safetensors"))) == 3
    nonempty = [r for r in recs if r["response_ids"]]
    got = GeneratedActs(tmp_path / "acts", lm.model_hash).get(nonempty)
    assert set(got) == {r["id"] for r in nonempty}
    ref = _rerun(lm, nonempty)
    for i, a in got.items():
        torch.testing.assert_close(a, ref[i].float(), atol=2e-5, rtol=1e-4)
    # A record whose response changed since (other tokens), or another model's files: not used.
    changed = [{**nonempty[0], "response_ids": nonempty[0]["response_ids"] + [5]}]
    assert GeneratedActs(tmp_path / "acts", lm.model_hash).get(changed) == {}
    assert GeneratedActs(tmp_path / "acts", "another-model").get(nonempty) == {}
    assert GeneratedActs(tmp_path / "missing", lm.model_hash).get(nonempty) == {}


def test_extract_takes_activations_from_generation(tmp_path, tiny_folder) -> None:
    from safetensors import safe_open

    from valuelens.extract import ExtractConfig, iter_activation_chunks, load_responses, run_extract
    from valuelens.models import load_model

    cfg = ExtractConfig.from_dict(dict(
        model=str(tiny_folder), values=["Benevolence", "Power"], n_intrinsic=6, n_prompted_per_value=3,
        max_new_tokens=6, batch_size=4, chunk_size=5, judge="lexicon", judge_options={"min_hits": 1},
        label_mode="rank", min_count=1, gen_bf16=False, seed=1))
    run = tmp_path / "run"
    run_extract(run, cfg)
    assert not (run / "responses" / "acts").exists()  # removed once every chunk was written
    recs = {r["id"]: r for r in load_responses(run) if r["response_ids"]}
    lm = load_model(str(tiny_folder))
    ref = _rerun(lm, list(recs.values()))
    n = 0
    for ids, acts in iter_activation_chunks(run):
        for i, a in zip(ids, acts, strict=True):
            torch.testing.assert_close(a, ref[i].float(), atol=2e-5, rtol=1e-4)
            n += 1
    assert n == len(recs)
    from_gen = 0
    for f in sorted((run / "activations").glob("chunk-*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            from_gen += int((fh.metadata() or {})["from_generation"])
    assert from_gen == len(recs)  # no response needed a second pass


@pytest.mark.parametrize(("gen_bf16", "capture_bf16", "fused"), [(True, "auto", True), (False, True, False)])
def test_capture_precision_follows_generation(tmp_path, tiny_folder, gen_bf16: bool, capture_bf16: bool | str,
                                             fused: bool) -> None:
    """capture_bf16="auto" captures in the generation's precision, so bf16 generation needs no second pass;
    a forced mismatch re-runs every response (in the capture's precision), and each chunk says which it was."""
    from safetensors import safe_open

    from valuelens.extract import ExtractConfig, iter_activation_chunks, load_responses, run_extract
    from valuelens.models import load_model

    cfg = ExtractConfig.from_dict(dict(
        model=str(tiny_folder), values=["Benevolence", "Power"], n_intrinsic=4, n_prompted_per_value=2,
        max_new_tokens=5, batch_size=4, chunk_size=32, judge="lexicon", judge_options={"min_hits": 1},
        label_mode="rank", min_count=1, gen_bf16=gen_bf16, capture_bf16=capture_bf16, seed=1))
    assert cfg.capture_in_bf16() is True
    run = tmp_path / "run"
    run_extract(run, cfg)
    recs = {r["id"]: r for r in load_responses(run) if r["response_ids"]}
    lm = load_model(str(tiny_folder))
    ref = {}
    for ids, acts in capture_responses(lm, list(recs.values()), batch_size=cfg.capture_batch_size, bf16=True):
        ref.update(zip(ids, acts, strict=True))
    ref32 = _rerun(lm, list(recs.values()))
    err16 = err32 = 0.0
    for ids, acts in iter_activation_chunks(run):
        for i, a in zip(ids, acts, strict=True):
            err16 = max(err16, float((a - ref[i].float()).abs().max()))
            err32 = max(err32, float((a - ref32[i].float()).abs().max()))
    scale = max(float(a.abs().max()) for a in ref32.values())
    if not fused:
        assert err16 < 1e-5 * scale  # the bf16 re-run itself (one chunk, one batch: the same padding)
    assert err16 < 2e-2 * scale  # bf16 round-off, not another computation
    assert err32 > 1e-6 * scale  # and not the float32 numbers (the precision really changed)
    from_gen = dtypes = 0
    for f in sorted((run / "activations").glob("chunk-*.safetensors")):
        with safe_open(str(f), framework="pt") as fh:
            meta = fh.metadata() or {}
            from_gen += int(meta["from_generation"])
            dtypes += meta["compute_dtype"] == "bfloat16 autocast"
    assert from_gen == (len(recs) if fused else 0)
    assert dtypes == len(list((run / "activations").glob("chunk-*.safetensors")))
