"""Benchmark ``valuelens extract`` on the embedded model: generation, activation capture, memory, full-run estimate.

    .venv/bin/python benchmarks/bench_extract.py --model smollm2 --n 16 --json out.json
    .venv/bin/python benchmarks/bench_extract.py --tiny          # seconds, random 4-layer model (smoke test)

One run, four parts (prompts are the items of a real extract run folder: chat-rendered shipped queries, intrinsic
and prompted for two values, made by the ``prepare`` stage):

0. **Extract generate stage**: ``run_extract(stages=["prepare", "generate"])`` for 4n responses (2n intrinsic,
   n prompted for each of two values) with the default sampling settings (bf16 autocast, temperature 0.7,
   top-p 0.9), ``--max-new-tokens`` and ``--batch-size``. These responses feed parts (b) and (c).
1. **(a) Generation** of n prompts, greedy, EOS on: ``generate_to_file`` (fp32 and bf16 autocast) vs plain
   ``model.generate`` with the same arguments in the same dtype (ratio = overhead of the resumable writer and
   valuelens' own decoding loop); and sampled as extract samples (fp32, temperature 0.7, top-p 0.9, top-k 50),
   where the ratio is mostly the sampler's (transformers sorts the whole vocabulary per row and step).
2. **(b) Activation capture**: ``capture_responses`` (mean residual over response tokens, every layer) over the
   4n responses, fp32 and bf16 autocast; responses/s and response tokens/s; min cosine bf16 vs fp32.
3. **(c) Memory**: the judge (lexicon), activations and vectors stages on run folders built from n, 2n, 4n of the
   responses (``chunk_size`` = n, so 1, 2, 4 activation chunks): peak-RSS growth (kernel ``VmHWM``, reset
   before each run, after a warm-up run) and the tracemalloc peak of Python objects.

Finally it estimates the time of the default full config (``ExtractConfig()``) from the measured throughputs.
Timed methods run interleaved in every repeat (see ``_common``); absolute seconds depend on the machine's load.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch

import _common as C
from valuelens.extract import ExtractConfig, load_responses, run_extract
from valuelens.generate import GenerationConfig, GenItem, _stop_ids, capture_responses, generate_to_file
from valuelens.models import LoadedModel, RenderedPrompt
from valuelens.precision import use_bf16
from valuelens.runio import atomic_write_text, read_jsonl

VALUES = ["Benevolence", "Power"]
TARGET_MIN = 20.0
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _bf16(on: bool) -> contextlib.AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16) if on else contextlib.nullcontext()


def load_lm(args: argparse.Namespace, workdir: Path) -> LoadedModel:
    if not args.tiny:
        from valuelens.models import load_model

        return load_model(args.model)
    from valuelens.models import ChatRenderer

    bm = C.load_bench_model("tiny", tiny=True, workdir=workdir)
    bm.tokenizer.chat_template = CHATML
    return LoadedModel(model=bm.model, tokenizer=bm.tokenizer, spec=bm.spec, chat=ChatRenderer(bm.tokenizer),
                       name="tiny", source="test", model_hash="tiny-random-llama")


def base_config(args: argparse.Namespace, n_total: int, **kw: Any) -> ExtractConfig:
    """Extract config with ``n_total`` responses: half intrinsic, a quarter prompted for each of two values."""
    return ExtractConfig.from_dict(dict(
        model=args.model, values=VALUES, n_intrinsic=n_total // 2, n_prompted_per_value=n_total // 4,
        max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, chunk_size=args.n,
        capture_batch_size=args.capture_batch_size, judge="lexicon", judge_options={"min_hits": 1},
        label_mode="rank", min_count=1, **kw))


def _n_tokens(recs: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """(response tokens, prompt + response tokens)."""
    resp = sum(len(r["response_ids"]) for r in recs)
    return resp, resp + sum(len(r["prompt_ids"]) for r in recs)


# --------------------------------------------------------------------------------------------------------------
# 0. The extract generate stage (default sampling settings): the responses everything else uses


def stage_generate(args: argparse.Namespace, lm: LoadedModel, workdir: Path) -> tuple[Path, dict[str, Any]]:
    run = workdir / "base"
    cfg = base_config(args, 4 * args.n)
    t0 = time.perf_counter()
    run_extract(run, cfg, stages=["prepare", "generate"], lm=lm)
    wall = time.perf_counter() - t0
    timings = json.loads((run / "manifest.json").read_text())["timings_s"]
    recs = load_responses(run)
    resp_tok, _ = _n_tokens(recs)
    s = float(timings["generate"])
    return run, {"responses": len(recs), "response_tokens": resp_tok, "generate_s": s, "wall_s": wall,
                 "responses_per_s": len(recs) / s, "tokens_per_s": resp_tok / s,
                 "empty": sum(not r["response_ids"] for r in recs),
                 "settings": {"do_sample": cfg.do_sample, "temperature": cfg.temperature, "top_p": cfg.top_p,
                              "bf16": cfg.gen_bf16, "batch_size": cfg.batch_size,
                              "max_new_tokens": cfg.max_new_tokens}}


# --------------------------------------------------------------------------------------------------------------
# (a) Generation: generate_to_file vs plain model.generate


def bench_generation(args: argparse.Namespace, lm: LoadedModel, run: Path, workdir: Path) -> dict[str, Any]:
    items = read_jsonl(run / "items.jsonl")
    step = max(1, len(items) // args.n)
    chosen = items[::step][:args.n]  # spread over intrinsic and prompted items
    gen_items = [GenItem(id=it["id"], prompt=RenderedPrompt(**it["prompt"]), meta={}) for it in chosen]
    texts = [g.prompt.text for g in gen_items]
    tok = lm.tokenizer
    stop = _stop_ids(lm)
    counter = [0]

    # Sampled as extract samples (temperature 0.7, top-p 0.9, transformers' default top-k 50): valuelens' own
    # decoding loop and sampler against model.generate's.
    sampled = dict(do_sample=True, temperature=0.7, top_p=0.9, top_k=50)

    def ours(bf16: bool, max_new: int, n: int, sample: bool = False) -> Callable[[], int]:
        cfg = GenerationConfig(max_new_tokens=max_new, batch_size=args.batch_size, bf16=bf16,
                               **(sampled if sample else {"do_sample": False}))

        def run_() -> int:
            counter[0] += 1
            out = workdir / f"gen-{counter[0]}.jsonl"
            recs = generate_to_file(lm, gen_items[:n], out, cfg, desc="bench generate")
            out.unlink()
            return sum(len(r["response_ids"]) for r in recs)
        return run_

    def plain(bf16: bool, max_new: int, n: int, sample: bool = False) -> Callable[[], int]:
        kw: dict[str, Any] = sampled if sample else dict(do_sample=False, temperature=None, top_p=None, top_k=None)

        def run_() -> int:
            total = 0
            for s in range(0, n, args.batch_size):
                enc = tok(texts[s:min(n, s + args.batch_size)], return_tensors="pt", padding=True,
                          add_special_tokens=False)
                with torch.no_grad(), _bf16(bf16):
                    out = lm.model.generate(**enc, max_new_tokens=max_new, eos_token_id=stop,
                                            pad_token_id=tok.pad_token_id, **kw)
                for row in out[:, enc["input_ids"].shape[1]:].tolist():
                    total += next((i for i, t in enumerate(row) if t in stop), len(row))
            return total
        return run_

    def make(max_new: int, n: int) -> dict[str, Callable[[], int]]:
        return {"plain generate fp32": plain(False, max_new, n), "generate_to_file fp32": ours(False, max_new, n),
                "plain generate bf16": plain(True, max_new, n), "generate_to_file bf16": ours(True, max_new, n),
                "plain generate sampled-fp32": plain(False, max_new, n, True),
                "generate_to_file sampled-fp32": ours(False, max_new, n, True)}

    times, results = C.interleaved(make(args.max_new_tokens, args.n), args.repeats,
                                   warmups=make(2, min(args.n, args.batch_size)),
                                   progress=lambda s: _log(f"generation {s}"))
    rows = []
    for name in times:
        dt = name.split()[-1]
        med = C.median(times[name])
        rows.append({"method": name, "dtype": dt, "median_s": med, "times_s": times[name],
                     "new_tokens": results[name], "responses_per_s": args.n / med, "tokens_per_s": results[name] / med,
                     "ratio_vs_plain_same_dtype": C.paired_ratio(times, name, f"plain generate {dt}"),
                     "ratio_vs_fp32": C.paired_ratio(times, name, name.replace("bf16", "fp32"))})
    return {"rows": rows, "n": args.n, "batch": args.batch_size, "max_new_tokens": args.max_new_tokens}


# --------------------------------------------------------------------------------------------------------------
# (b) Activation capture over response tokens


def bench_capture(args: argparse.Namespace, lm: LoadedModel, run: Path) -> dict[str, Any]:
    recs = [r for r in load_responses(run) if r["response_ids"]]
    resp_tok, all_tok = _n_tokens(recs)

    def cap(bf16: bool, part: Sequence[dict[str, Any]]) -> Callable[[], dict[str, torch.Tensor]]:
        def run_() -> dict[str, torch.Tensor]:
            out: dict[str, torch.Tensor] = {}
            for ids, acts in capture_responses(lm, part, batch_size=args.capture_batch_size, bf16=bf16):
                out.update(zip(ids, acts, strict=True))
            return out
        return run_

    methods = {"capture_responses fp32": cap(False, recs), "capture_responses bf16": cap(True, recs)}
    warm = {"capture_responses fp32": cap(False, recs[:2]), "capture_responses bf16": cap(True, recs[:2])}
    times, results = C.interleaved(methods, args.repeats, warmups=warm, progress=lambda s: _log(f"capture {s}"))
    a, b = results["capture_responses fp32"], results["capture_responses bf16"]
    cos = min(float(torch.nn.functional.cosine_similarity(a[i].float(), b[i].float(), dim=-1).min()) for i in a)
    rows = []
    for name in methods:
        med = C.median(times[name])
        rows.append({"method": name, "dtype": name.split()[-1], "median_s": med, "times_s": times[name],
                     "responses_per_s": len(recs) / med, "tokens_per_s": resp_tok / med,
                     "ratio_vs_fp32": C.paired_ratio(times, name, "capture_responses fp32"),
                     "min_cosine_vs_fp32": None if name.endswith("fp32") else cos})
    return {"rows": rows, "responses": len(recs), "response_tokens": resp_tok, "all_tokens": all_tok,
            "layers": lm.spec.n_layers, "batch": args.capture_batch_size}


# --------------------------------------------------------------------------------------------------------------
# (c) Memory of the judge + activations + vectors stages as the responses double


def subset_run(base: Path, dest: Path, frac: float) -> int:
    """A run folder holding the first ``frac`` of each (condition, value) group of ``base``'s items/responses."""
    items = read_jsonl(base / "items.jsonl")
    groups: dict[tuple[str, Any], list[dict[str, Any]]] = {}
    for it in items:
        groups.setdefault((it["condition"], it["target_value"]), []).append(it)
    keep = {it["id"] for g in groups.values() for it in g[:round(len(g) * frac)]}
    sub = [it for it in items if it["id"] in keep]
    resp = [r for r in load_responses(base) if r["id"] in keep]
    atomic_write_text(dest / "items.jsonl", "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in sub))
    atomic_write_text(dest / "responses" / "responses.shard-0-of-1.jsonl",
                      "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in resp))
    return len(sub)


def measure_stages(args: argparse.Namespace, lm: LoadedModel, base: Path, dest: Path, factor: int) -> dict[str, Any]:
    n = subset_run(base, dest, factor / 4)
    cfg = base_config(args, factor * args.n)
    # The hand-made folder is this config's run (extract refuses folders of unknown origin).
    atomic_write_text(dest / "config.json", json.dumps({"extract": cfg.to_dict()}))
    gc.collect()
    exact = C.reset_peak_rss()
    start, peak_before = C.rss_mb(), C.peak_rss_mb()
    tracemalloc.start()
    t0 = time.perf_counter()
    summary = run_extract(dest, cfg, stages=["judge", "activations", "vectors"], lm=lm)
    wall = time.perf_counter() - t0
    py_peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    peak = C.peak_rss_mb()
    timings = json.loads((dest / "manifest.json").read_text())["timings_s"]
    return {"factor": factor, "responses": n, "chunks": len(list((dest / "activations").glob("chunk-*"))),
            "rss_start_mb": start, "peak_mb": peak, "growth_mb": peak - (start if exact else peak_before),
            "tracemalloc_peak_mb": py_peak, "peak_reset": exact, "wall_s": wall, "timings_s": timings,
            "values_with_vectors": summary.get("values_with_both", [])}


def bench_memory(args: argparse.Namespace, lm: LoadedModel, base: Path, workdir: Path) -> dict[str, Any]:
    measure_stages(args, lm, base, workdir / "mem-warmup", 1)  # allocator, judge and matplotlib warm-up
    rows = []
    for factor in (1, 2, 4):
        rows.append(measure_stages(args, lm, base, workdir / f"mem-{factor}", factor))
        _log(f"memory {factor}x: RSS growth {rows[-1]['growth_mb']:.1f} MB, "
             f"tracemalloc peak {rows[-1]['tracemalloc_peak_mb']:.1f} MB")
    growth = [r["growth_mb"] for r in rows]
    # "flat" as in bench_hooks: 4× the responses costs at most 25 MB (allocator noise) more than 1×.
    return {"rows": rows, "flat": bool(growth[-1] - growth[0] <= 25.0),
            "rss_ratio_4x_vs_1x": (growth[-1] / growth[0]) if growth[0] > 1.0 else None,
            "tracemalloc_ratio_4x_vs_1x": rows[-1]["tracemalloc_peak_mb"] / max(rows[0]["tracemalloc_peak_mb"], 1e-9)}


# --------------------------------------------------------------------------------------------------------------
# Estimate of the default full config


def estimate(args: argparse.Namespace, res: dict[str, Any]) -> dict[str, Any]:
    d = ExtractConfig()
    n_full = d.n_intrinsic + len(d.values) * d.n_prompted_per_value
    scale = d.max_new_tokens / args.max_new_tokens  # rough: generation time ∝ decoding steps
    gen = res["stage"]
    cap = {r["dtype"]: r for r in res["capture"]["rows"]}["bf16" if d.capture_in_bf16() else "fp32"]
    mem4 = res["memory"]["rows"][-1]
    gen_stage = n_full / gen["responses_per_s"] * scale
    # Generation records the response means while decoding when it runs in the capture's precision (the
    # generate stage measured above includes that); only otherwise does the activations stage re-run them.
    fused = d.fused_capture()
    act_key = "activations (read off the decoding steps: inside generate)" if fused else "activations"
    parts = {
        "generate (at the extract stage's sampled bf16 throughput)": gen_stage,
        "judge (lexicon; the default judge is the detector, or the LLM judge if none is trained: not included)":
            mem4["timings_s"].get("judge", 0.0) / mem4["responses"] * n_full,
        act_key: 0.0 if fused else n_full / cap["responses_per_s"],
        "vectors + figures (measured at 4n; mostly fixed cost)": mem4["timings_s"].get("vectors", 0.0),
    }
    total = sum(parts.values())
    # Alternatives from the other measurements of this run: generation at the interleaved (a) bf16 throughput
    # (greedy; the same decoding steps when answers run to the token limit), and capture under bf16 autocast.
    a_bf16 = {r["method"]: r for r in res["generation"]["rows"]}["generate_to_file bf16"]
    gen_a = n_full / a_bf16["responses_per_s"] * scale
    cap16 = n_full / {r["dtype"]: r for r in res["capture"]["rows"]}["bf16"]["responses_per_s"]
    alt = {"generate at (a) generate_to_file bf16 throughput": total - gen_stage + gen_a,
           "... and capture_bf16=True": total - gen_stage + gen_a - parts[act_key]
           + (0.0 if use_bf16(d.gen_bf16) else cap16)}
    return {"responses": n_full, "values": len(d.values), "max_new_tokens": d.max_new_tokens,
            "gen_bf16": d.gen_bf16, "capture_bf16": d.capture_in_bf16(), "scaled_from_max_new_tokens": args.max_new_tokens,
            "parts_s": parts, "total_s": total, "total_min": total / 60, "alternatives_min": {
                k: v / 60 for k, v in alt.items()}, "target_min": TARGET_MIN, "meets_target": total / 60 <= TARGET_MIN}


# --------------------------------------------------------------------------------------------------------------
# Report


def report(res: dict[str, Any]) -> str:
    m, lines = res["machine"], []
    lines.append(f"valuelens extract benchmark — {res['model']} — {m['date_utc']}")
    lines.append(f"machine: {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, load average at start "
                 f"{m['load_average_at_start']}; torch {m['torch']}, transformers {m['transformers']}")
    lines.append("absolute seconds depend on the machine's load at the time (other jobs share the cores); ratios "
                 "are medians of per-repeat ratios with all methods interleaved in each repeat.")
    st = res["stage"]
    s = st["settings"]
    lines.append("")
    lines.append(f"## Extract generate stage: {st['responses']} responses, sampled (T={s['temperature']}, "
                 f"top-p {s['top_p']}), bf16 autocast {s['bf16']}, batch {s['batch_size']}, "
                 f"≤ {s['max_new_tokens']} new tokens")
    lines.append(C.table(["responses", "response tokens", "empty", "seconds", "responses/s", "tokens/s"],
                         [[st["responses"], st["response_tokens"], st["empty"], st["generate_s"],
                           st["responses_per_s"], st["tokens_per_s"]]]))
    g = res["generation"]
    lines.append("")
    lines.append(f"## Generation (a): {g['n']} prompts, batch {g['batch']}, greedy, ≤ {g['max_new_tokens']} new "
                 f"tokens, EOS on, {res['args']['repeats']} repeat(s)")
    lines.append(C.table(["method", "dtype", "median s", "new tokens", "responses/s", "tokens/s",
                          "ratio vs plain (same dtype)", "ratio vs fp32"],
                         [[r["method"], r["dtype"], r["median_s"], r["new_tokens"], r["responses_per_s"],
                           r["tokens_per_s"], f"{r['ratio_vs_plain_same_dtype']:.3f}x", f"{r['ratio_vs_fp32']:.2f}x"]
                          for r in g["rows"]]))
    c = res["capture"]
    lines.append("")
    lines.append(f"## Activation capture (b): {c['responses']} responses ({c['response_tokens']} response tokens, "
                 f"{c['all_tokens']} with prompts), all {c['layers']} layers, batch {c['batch']}")
    lines.append(C.table(["method", "dtype", "median s", "responses/s", "response tokens/s", "ratio vs fp32",
                          "min cosine vs fp32"],
                         [[r["method"], r["dtype"], r["median_s"], r["responses_per_s"], r["tokens_per_s"],
                           f"{r['ratio_vs_fp32']:.2f}x", r["min_cosine_vs_fp32"]] for r in c["rows"]]))
    mem = res["memory"]
    lines.append("")
    lines.append("## Memory (c): judge + activations + vectors stages on n, 2n, 4n responses (chunk = n)")
    lines.append(C.table(["responses", "chunks", "RSS at start MB", "peak-RSS growth MB", "tracemalloc peak MB",
                          "activations s", "vectors s", "values with vectors"],
                         [[r["responses"], r["chunks"], r["rss_start_mb"], r["growth_mb"], r["tracemalloc_peak_mb"],
                           r["timings_s"].get("activations"), r["timings_s"].get("vectors"),
                           len(r["values_with_vectors"])] for r in mem["rows"]]))
    rr = mem["rss_ratio_4x_vs_1x"]
    lines.append(f"ratios 4n vs n: peak-RSS growth {'n/a (growth at n < 1 MB)' if rr is None else f'{rr:.2f}x'}, "
                 f"tracemalloc peak {mem['tracemalloc_ratio_4x_vs_1x']:.2f}x")
    lines.append(f"flat: {'yes' if mem['flat'] else 'NO'}")
    e = res["estimate"]
    lines.append("")
    lines.append(f"## Estimate: default full config (ExtractConfig(): {e['responses']} responses = 240 intrinsic + "
                 f"{e['values']} values x 48 prompted, {e['max_new_tokens']} new tokens, gen bf16 {e['gen_bf16']}, "
                 f"capture bf16 {e['capture_bf16']})")
    if e["scaled_from_max_new_tokens"] != e["max_new_tokens"]:
        lines.append(f"(generation scaled from {e['scaled_from_max_new_tokens']} to {e['max_new_tokens']} new tokens)")
    lines.append(C.table(["stage", "estimated minutes"], [[k, v / 60] for k, v in e["parts_s"].items()]
                         + [["total", e["total_min"]]]
                         + [[f"total, {k}", v] for k, v in e["alternatives_min"].items()]))
    lines.append(f"target ≤ {e['target_min']:.0f} min on 2 cores: {'met' if e['meets_target'] else 'MISSED'} "
                 f"({e['total_min']:.1f} min estimated from the generate stage at this load; "
                 + ", ".join(f"{v:.1f} min {k}" for k, v in e["alternatives_min"].items()) + ")")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2", help="short name, GGUF file, folder or hub id (default smollm2)")
    p.add_argument("--n", type=int, default=16, help="base number of responses n (memory: n, 2n, 4n; default 16)")
    p.add_argument("--max-new-tokens", type=int, default=64, help="default 64, as ExtractConfig()")
    p.add_argument("--batch-size", type=int, default=8, help="generation batch size (default 8)")
    p.add_argument("--capture-batch-size", type=int, default=16, help="default 16, as ExtractConfig()")
    p.add_argument("--repeats", type=int, default=1, help="timed repeats per method in (a) and (b), after a warm-up")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared, oversubscribed machine 2 OpenMP threads stall;\n"
                        "use 2 on an idle one)")
    p.add_argument("--tiny", action="store_true", help="tiny random model, few responses: a smoke run in seconds")
    p.add_argument("--json", type=Path, default=None, help="write all figures (and raw times) to this file")
    args = p.parse_args(argv)
    given = argv if argv is not None else sys.argv
    if args.tiny:
        if "--n" not in given:
            args.n = 4
        if "--max-new-tokens" not in given:
            args.max_new_tokens = 6
        if "--batch-size" not in given:
            args.batch_size = 4
    if args.n < 4 or args.n % 4:
        raise SystemExit("--n must be a multiple of 4 (≥ 4): the runs split n into intrinsic and two values")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="vl-bench-extract-") as tmp:
        workdir = Path(tmp)
        lm = load_lm(args, workdir)
        res: dict[str, Any] = {
            "model": f"{lm.name} ({lm.model_hash[:12]})",
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "machine": C.machine_note(),
            "command": " ".join([Path(sys.argv[0]).name if argv is None else "bench_extract.py",
                                 *(argv if argv is not None else sys.argv[1:])])}
        _log(f"generate stage: {4 * args.n} responses")
        run, res["stage"] = stage_generate(args, lm, workdir)
        res["generation"] = bench_generation(args, lm, run, workdir)
        res["capture"] = bench_capture(args, lm, run)
        res["memory"] = bench_memory(args, lm, run, workdir)
        res["estimate"] = estimate(args, res)
    return C.finish(res, report(res), args.json)


if __name__ == "__main__":
    main()
