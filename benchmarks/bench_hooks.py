"""Benchmark valuelens hooks against output_hidden_states, nnsight and TransformerLens, in one run.

    .venv/bin/python benchmarks/bench_hooks.py --model smollm2 --n-prompts 64 --json out.json
    .venv/bin/python benchmarks/bench_hooks.py --tiny            # seconds, random 4-layer model (smoke test)

Three parts, all on the same prompts (the shipped value-laden queries, chat-rendered, left-padded batches):

1. **Capture** of every layer's residual stream, mean over each prompt's tokens: ``forward_capture`` (fp32 and
   bf16 autocast) vs ``model(..., output_hidden_states=True)`` (the baseline: full logits, as users call it) vs
   nnsight (``LanguageModel``, saving every layer's output) vs TransformerLens (``TransformerBridge`` +
   ``run_with_cache`` on all ``hook_resid_post``). Checks max |Δ| of the means vs the baseline and the bf16 cosine.
2. **Steered generation** (batch 8, greedy, fixed length, EOS disabled): ``add_vectors`` at a middle layer around
   ``model.generate`` vs plain ``model.generate`` vs nnsight and TransformerLens steering, fp32 and bf16 autocast.
3. **Memory**: peak-RSS growth while ``forward_capture`` streams 1×, 2×, 4× the prompts (must stay flat).

nnsight and TransformerLens each get their own deep copy of the model (both modify what they wrap). Methods run
interleaved inside every repeat; the table gives median seconds and the median of per-repeat ratios. Absolute
times depend on the machine's load at the time; ratios are the comparable figures.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from torch import Tensor

import _common as C
from valuelens.hooks import add_vectors, forward_capture, left_pad_position_ids

PEERS = ("nnsight", "tl")


def _log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def _bf16() -> contextlib.AbstractContextManager[Any]:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _masked_mean(h: Tensor, am: Tensor) -> Tensor:
    m = am.to(torch.float32).unsqueeze(-1)
    return (h.float() * m).sum(1) / m.sum(1).clamp(min=1.0)


def _peers(arg: str) -> list[str]:
    if arg in ("", "none"):
        return []
    out = [p.strip() for p in arg.split(",") if p.strip()]
    bad = [p for p in out if p not in PEERS]
    if bad:
        raise SystemExit(f"unknown peer(s) {bad}; choose from {PEERS} or 'none'")
    return out


def _available(peers: Sequence[str]) -> dict[str, str | None]:
    """peer → None if importable, else the reason it is skipped."""
    status: dict[str, str | None] = {}
    for p in peers:
        mod = "nnsight" if p == "nnsight" else "transformer_lens"
        try:
            __import__(mod)
            status[p] = None
        except Exception as exc:  # not installed: the table says so instead of failing
            status[p] = f"{mod} not importable ({type(exc).__name__}); pip install -e '.[bench]'"
    return status


def _wrap_nnsight(model: torch.nn.Module, tok: Any) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from nnsight import LanguageModel

        return LanguageModel(copy.deepcopy(model), tokenizer=tok)


def _wrap_tl(model: torch.nn.Module, tok: Any, name: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from transformer_lens.model_bridge import TransformerBridge

        return TransformerBridge.boot_transformers(name, hf_model=copy.deepcopy(model), tokenizer=tok)


# --------------------------------------------------------------------------------------------------------------
# 1. Capture


def bench_capture(bm: C.BenchModel, data: list[tuple[Tensor, Tensor]], peers: dict[str, Any],
                  repeats: int) -> dict[str, Any]:
    model, spec = bm.model, bm.spec
    n_layers = spec.n_layers

    def hf(data: list[tuple[Tensor, Tensor]], bf16: bool = False) -> Callable[[], Tensor]:
        def run() -> Tensor:
            outs = []
            with torch.no_grad(), (_bf16() if bf16 else contextlib.nullcontext()):
                for ids, am in data:
                    hs = model(input_ids=ids, attention_mask=am, position_ids=left_pad_position_ids(am),
                               output_hidden_states=True).hidden_states
                    outs.append(torch.stack([_masked_mean(h, am) for h in hs[1:]], dim=1))
            return torch.cat(outs)
        return run

    def ours(data: list[tuple[Tensor, Tensor]], bf16: bool = False) -> Callable[[], Tensor]:
        def run() -> Tensor:
            return torch.cat([forward_capture(model, ids, am, spec=spec, bf16=bf16) for ids, am in data])
        return run

    def nns(data: list[tuple[Tensor, Tensor]]) -> Callable[[], Tensor]:
        lm = peers["nnsight"]

        def run() -> Tensor:
            outs = []
            for ids, am in data:
                saved: list[Any] = []
                with torch.no_grad(), lm.trace({"input_ids": ids, "attention_mask": am},
                                               position_ids=left_pad_position_ids(am)):
                    for li in range(n_layers):
                        saved.append(lm.model.layers[li].output.save())
                hs = [s[0] if isinstance(s, tuple) else s for s in saved]
                outs.append(torch.stack([_masked_mean(h, am) for h in hs], dim=1))
            return torch.cat(outs)
        return run

    names = [f"blocks.{li}.hook_resid_post" for li in range(n_layers)]
    wanted = set(names)

    def tl(data: list[tuple[Tensor, Tensor]]) -> Callable[[], Tensor]:
        br = peers["tl"]

        def run() -> Tensor:
            outs = []
            for ids, am in data:
                with torch.no_grad():
                    _, cache = br.run_with_cache(ids, attention_mask=am, position_ids=left_pad_position_ids(am),
                                                 names_filter=lambda n: n in wanted)
                outs.append(torch.stack([_masked_mean(cache[n], am) for n in names], dim=1))
                del cache
            return torch.cat(outs)
        return run

    def make(d: list[tuple[Tensor, Tensor]]) -> dict[str, Callable[[], Tensor]]:
        ms: dict[str, Callable[[], Tensor]] = {
            "output_hidden_states": hf(d),
            "valuelens forward_capture": ours(d),
            "output_hidden_states bf16": hf(d, True),
            "valuelens forward_capture bf16": ours(d, True),
        }
        if "nnsight" in peers:
            ms["nnsight trace"] = nns(d)
        if "tl" in peers:
            ms["TransformerLens run_with_cache"] = tl(d)
        return ms

    methods = make(data)
    warm = make(data[:1])  # one batch per method warms allocators and caches without a whole extra pass
    times, results = C.interleaved(methods, repeats, warmups=warm, progress=lambda s: _log("capture " + s))
    base = "output_hidden_states"
    ref = results[base]
    ref_bf16 = results["output_hidden_states bf16"]
    rows = []
    for name in methods:
        out = results[name]
        bf16 = name.endswith("bf16")
        entry: dict[str, Any] = {
            "method": name, "dtype": "bf16 autocast" if bf16 else "fp32",
            "median_s": C.median(times[name]), "min_s": min(times[name]), "times_s": times[name],
            "ratio_vs_baseline": C.paired_ratio(times, name, base),
        }
        if bf16:
            cos = torch.nn.functional.cosine_similarity(out.float(), ref.float(), dim=-1)
            entry["min_cosine_vs_fp32"] = float(cos.min())
            entry["max_abs_diff_vs_baseline"] = None
            if name != "output_hidden_states bf16":
                entry["max_abs_diff_vs_baseline_bf16"] = float((out - ref_bf16).abs().max())
        else:
            entry["max_abs_diff_vs_baseline"] = float((out - ref).abs().max())
            entry["max_rel_diff_vs_baseline"] = float((out - ref).abs().max() / ref.abs().max())
            entry["min_cosine_vs_fp32"] = None
        rows.append(entry)
    return {"rows": rows, "baseline": base, "n_texts": int(sum(ids.shape[0] for ids, _ in data)),
            "n_tokens": int(sum(am.sum() for _, am in data)), "layers": n_layers}


# --------------------------------------------------------------------------------------------------------------
# 2. Steered generation


def hook_cost_us(bm: C.BenchModel, layer: int, vec: Tensor, alpha: float, h: Tensor, n: int = 2000) -> float:
    """Direct cost in µs of one steering-hook call incl. PyTorch's hook dispatch, on a decode-step tensor ``h``.

    The hooks ``add_vectors`` registers are copied onto an ``nn.Identity`` and timed against the bare identity
    (best of 5), which is free of the load noise that dominates whole-generation timings.
    """
    import time

    layer_mod = bm.spec.layer(bm.model, layer)
    before_f, before_p = set(layer_mod._forward_hooks), set(bm.model._forward_pre_hooks)
    bare, hooked = torch.nn.Identity(), torch.nn.Identity()
    with add_vectors(bm.model, {layer: vec}, alpha=alpha, spec=bm.spec):
        for k, fn in layer_mod._forward_hooks.items():
            if k not in before_f:
                hooked.register_forward_hook(fn)
        for k, fn in bm.model._forward_pre_hooks.items():
            if k not in before_p:
                hooked.register_forward_pre_hook(fn, with_kwargs=True)

    def best(mod: torch.nn.Module) -> float:
        ts = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(n):
                mod(h)
            ts.append((time.perf_counter() - t0) / n)
        return min(ts)

    with torch.no_grad():
        return max(0.0, best(hooked) - best(bare)) * 1e6


def bench_generate(bm: C.BenchModel, ids: Tensor, am: Tensor, peers: dict[str, Any], repeats: int,
                   max_new_tokens: int, layer: int, alpha: float, vec: Tensor) -> dict[str, Any]:
    model, spec, tok = bm.model, bm.spec, bm.tokenizer
    pad = tok.pad_token_id
    gen_kw = dict(do_sample=False, pad_token_id=pad, eos_token_id=None, temperature=None, top_p=None, top_k=None)
    delta = (alpha * vec).to(torch.float32)

    def ctx(bf16: bool) -> contextlib.ExitStack:
        st = contextlib.ExitStack()
        st.enter_context(torch.no_grad())
        if bf16:
            st.enter_context(_bf16())
        return st

    def plain(bf16: bool, n: int) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with ctx(bf16):
                return model.generate(input_ids=ids, attention_mask=am, max_new_tokens=n, **gen_kw)
        return run

    def ours(bf16: bool, n: int) -> Callable[[], Tensor]:
        def run() -> Tensor:
            with ctx(bf16), add_vectors(model, {layer: vec}, alpha=alpha, spec=spec):
                return model.generate(input_ids=ids, attention_mask=am, max_new_tokens=n, **gen_kw)
        return run

    def nns(bf16: bool, n: int) -> Callable[[], Tensor]:
        lm = peers["nnsight"]

        def run() -> Tensor:
            with ctx(bf16), lm.generate({"input_ids": ids, "attention_mask": am}, max_new_tokens=n,
                                        **gen_kw) as tracer:
                # bounded loop: code after an unbounded tracer.all() would never run in nnsight 0.8
                for _step in tracer.iter[0:n]:
                    lm.model.layers[layer].output[:] += delta
                out = tracer.result.save()
            return out
        return run

    def tl(bf16: bool, n: int) -> Callable[[], Tensor]:
        br = peers["tl"]
        hook_name = f"blocks.{layer}.hook_resid_post"

        def steer(x: Tensor, hook: Any) -> Tensor:
            return x + delta.to(x.dtype)

        def run() -> Tensor:
            with ctx(bf16), br.hooks(fwd_hooks=[(hook_name, steer)]):
                return br.generate(ids, max_new_tokens=n, do_sample=False, stop_at_eos=False,
                                   attention_mask=am, padding_side="left", verbose=False)
        return run

    out: dict[str, Any] = {"rows": [], "batch": int(ids.shape[0]), "prompt_len": int(ids.shape[1]),
                           "max_new_tokens": max_new_tokens, "layer": layer, "alpha": alpha}
    for bf16 in (False, True):
        dt = "bf16 autocast" if bf16 else "fp32"

        def make(n: int, bf16: bool = bf16) -> dict[str, Callable[[], Tensor]]:
            ms = {"plain generate": plain(bf16, n), "valuelens add_vectors": ours(bf16, n)}
            if "nnsight" in peers:
                ms["nnsight steering"] = nns(bf16, n)
            if "tl" in peers:
                ms["TransformerLens steering"] = tl(bf16, n)
            return ms

        methods = make(max_new_tokens)
        times, results = C.interleaved(methods, repeats, warmups=make(min(4, max_new_tokens)),
                                       progress=lambda s, dt=dt: _log(f"generate {dt} {s}"))
        ours_tokens = results["valuelens add_vectors"]
        # the residual stream stays float32 under autocast (fp32 embeddings + bf16 block outputs → fp32)
        h = torch.randn(ids.shape[0], 1, bm.spec.d_model)
        cost = hook_cost_us(bm, layer, vec, alpha, h)
        step_s = C.median(times["plain generate"]) / max_new_tokens
        out.setdefault("hook_cost", []).append({"dtype": dt, "us_per_step": cost, "plain_s_per_token_step": step_s,
                                                "overhead_pct": cost * 1e-6 / step_s * 100})
        for name in methods:
            toks = results[name]
            n_new = int(toks.shape[1] - ids.shape[1])
            out["rows"].append({
                "method": name, "dtype": dt, "median_s": C.median(times[name]), "min_s": min(times[name]),
                "times_s": times[name], "ratio_vs_plain": C.paired_ratio(times, name, "plain generate"),
                "new_tokens": n_new,
                "same_tokens_as_valuelens": None if name == "plain generate" else bool(
                    toks.shape == ours_tokens.shape and torch.equal(toks, ours_tokens)),
                "steered_differs_from_plain": None if name == "plain generate" else bool(
                    toks.shape != results["plain generate"].shape or not torch.equal(toks, results["plain generate"])),
            })
    return out


# --------------------------------------------------------------------------------------------------------------
# 3. Memory


def stream_capture(bm: C.BenchModel, seqs: list[list[int]], batch_size: int, factor: int) -> dict[str, float]:
    """Stream ``factor`` × the prompts through ``forward_capture``, keeping only running sums; peak-RSS growth."""
    pad = bm.tokenizer.pad_token_id
    warm = C.batches(seqs[:batch_size], batch_size, pad)[0]
    forward_capture(bm.model, *warm, spec=bm.spec)  # allocator warm-up, so growth measures the streaming only
    import gc

    gc.collect()
    exact = C.reset_peak_rss()
    start = C.rss_mb()
    peak_before = C.peak_rss_mb()
    total = torch.zeros(bm.spec.n_layers, bm.spec.d_model, dtype=torch.float64)
    n = 0
    for _ in range(factor):
        for ids, am in C.batches(seqs, batch_size, pad):
            acts = forward_capture(bm.model, ids, am, spec=bm.spec)
            total += acts.sum(0).double()
            n += acts.shape[0]
    peak = C.peak_rss_mb()
    return {"factor": factor, "texts": n, "rss_start_mb": start, "peak_mb": peak,
            "growth_mb": peak - (start if exact else peak_before), "peak_reset": exact}


def bench_memory(args: argparse.Namespace, bm: C.BenchModel, seqs: list[list[int]]) -> dict[str, Any]:
    rows = []
    for factor in (1, 2, 4):
        if args.memory == "subprocess":
            cmd = [sys.executable, __file__, "--memory-worker", str(factor), "--model", args.model,
                   "--n-prompts", str(args.n_prompts), "--batch-size", str(args.batch_size),
                   "--threads", str(torch.get_num_threads())]
            if args.tiny:
                cmd.append("--tiny")
            res = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if res.returncode != 0:
                raise RuntimeError(f"memory worker failed:\n{res.stderr[-2000:]}")
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
        else:
            rows.append(stream_capture(bm, seqs, args.batch_size, factor))
        _log(f"memory {factor}x: growth {rows[-1]['growth_mb']:.1f} MB")
    growth = [r["growth_mb"] for r in rows]
    # "flat": 4× the texts costs at most 25 MB (allocator noise) more than 1× the texts.
    return {"rows": rows, "mode": args.memory, "flat": bool(growth[-1] - growth[0] <= 25.0)}


# --------------------------------------------------------------------------------------------------------------
# Report


def _pct(r: float) -> str:
    return f"{(r - 1) * 100:+.1f} %"


def report(res: dict[str, Any]) -> str:
    lines = []
    m = res["machine"]
    lines.append(f"valuelens hook benchmark — {res['model']} — {m['date_utc']}")
    lines.append(f"machine: {m['cpu_count']} CPUs, torch threads {m['torch_threads']}, load average at start "
                 f"{m['load_average_at_start']}; torch {m['torch']}, transformers {m['transformers']}")
    lines.append("absolute seconds depend on the machine's load at the time (other jobs share the cores); ratios "
                 "are medians of per-repeat ratios with all methods interleaved in each repeat.")
    for p, why in res["skipped_peers"].items():
        lines.append(f"skipped {p}: {why}")
    cap = res.get("capture")
    if cap:
        lines.append("")
        lines.append(f"## Capture: all {cap['layers']} layers, mean over tokens, {cap['n_texts']} texts "
                     f"({cap['n_tokens']} tokens), batch {res['args']['batch_size']}, {res['args']['repeats']} repeat(s)")
        rows = [[r["method"], r["dtype"], r["median_s"], f"{r['ratio_vs_baseline']:.2f}x",
                 r["max_abs_diff_vs_baseline"], r["min_cosine_vs_fp32"]] for r in cap["rows"]]
        lines.append(C.table(["method", "dtype", "median s", "ratio vs output_hidden_states fp32",
                              "max |Δ| vs baseline (fp32)", "min cosine vs fp32"], rows))
    gen = res.get("generate")
    if gen:
        lines.append("")
        lines.append(f"## Steered generation: batch {gen['batch']}, prompt length {gen['prompt_len']} (left-padded), "
                     f"{gen['max_new_tokens']} new tokens, greedy, EOS off, α·v at layer {gen['layer']}")
        rows = [[r["method"], r["dtype"], r["median_s"], f"{r['ratio_vs_plain']:.3f}x",
                 "—" if r["method"] == "plain generate" else _pct(r["ratio_vs_plain"]), r["new_tokens"],
                 "—" if r["same_tokens_as_valuelens"] is None else r["same_tokens_as_valuelens"]]
                for r in gen["rows"]]
        lines.append(C.table(["method", "dtype", "median s", "ratio vs plain (same dtype)", "overhead",
                              "new tokens", "same tokens as valuelens"], rows))
        for hc in gen.get("hook_cost", []):
            lines.append(f"valuelens steering hook, direct cost ({hc['dtype']}): {hc['us_per_step']:.1f} µs per "
                         f"forward incl. hook dispatch = {hc['overhead_pct']:.3f} % of a plain generation step "
                         f"({hc['plain_s_per_token_step'] * 1000:.0f} ms/token)")
    mem = res.get("memory")
    if mem:
        lines.append("")
        lines.append(f"## Memory: forward_capture streaming 1x/2x/4x the texts (peak-RSS growth, {mem['mode']})")
        rows = [[f"{r['factor']}x", r["texts"], r["rss_start_mb"], r["peak_mb"], r["growth_mb"]] for r in mem["rows"]]
        lines.append(C.table(["texts", "n", "RSS at start MB", "peak MB", "peak growth MB"], rows))
        lines.append(f"flat: {'yes' if mem['flat'] else 'NO'}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2", help="short name, GGUF file, folder or hub id (default smollm2)")
    p.add_argument("--n-prompts", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32, help="capture batch size (default 32)")
    p.add_argument("--gen-batch", type=int, default=8, help="generation batch size (default 8)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per method, after one warm-up (median)")
    p.add_argument("--peers", default="nnsight,tl", help="comma list of nnsight,tl, or 'none'")
    p.add_argument("--parts", default="capture,generate,memory")
    p.add_argument("--memory", choices=("subprocess", "inprocess"), default=None,
                   help="measure memory in fresh processes (default) or in this one (default with --tiny)")
    p.add_argument("--alpha", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on a shared, oversubscribed machine 2 OpenMP threads stall at\n"
                        "every barrier — measured here 10-18 s vs 3.9 s for the same forward; use 2 on an idle one)")
    p.add_argument("--tiny", action="store_true", help="tiny random model, few prompts: a smoke run in seconds")
    p.add_argument("--json", type=Path, default=None, help="write all figures (and raw times) to this file")
    p.add_argument("--memory-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.tiny:
        if "--n-prompts" not in (argv if argv is not None else sys.argv):
            args.n_prompts = 12
        if "--batch-size" not in (argv if argv is not None else sys.argv):
            args.batch_size = 4
        if "--max-new-tokens" not in (argv if argv is not None else sys.argv):
            args.max_new_tokens = 6
        if "--gen-batch" not in (argv if argv is not None else sys.argv):
            args.gen_batch = 4
    if args.memory is None:
        args.memory = "inprocess" if args.tiny else "subprocess"
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    workdir = Path(tempfile.mkdtemp(prefix="vl-bench-"))
    bm = C.load_bench_model(args.model, tiny=args.tiny, workdir=workdir)
    seqs = C.bench_token_ids(bm, args.n_prompts, tiny=args.tiny)
    if args.memory_worker is not None:
        print(json.dumps(stream_capture(bm, seqs, args.batch_size, args.memory_worker)))
        return {}
    # Generation runs to a fixed length: no EOS anywhere (each peer copies this config).
    bm.model.generation_config.eos_token_id = None
    parts = {p.strip() for p in args.parts.split(",")}
    res: dict[str, Any] = {"model": bm.label, "args": {k: str(v) if isinstance(v, Path) else v
                                                        for k, v in vars(args).items()},
                           "machine": C.machine_note(), "command": " ".join([Path(sys.argv[0]).name, *(
                               argv if argv is not None else sys.argv[1:])])}
    status = _available(_peers(args.peers))
    res["skipped_peers"] = {p: why for p, why in status.items() if why}
    peers: dict[str, Any] = {}
    if status.get("nnsight") is None and "nnsight" in status:
        peers["nnsight"] = _wrap_nnsight(bm.model, bm.tokenizer)
    if status.get("tl") is None and "tl" in status:
        peers["tl"] = _wrap_tl(bm.model, bm.tokenizer, bm.name)
    pad = bm.tokenizer.pad_token_id
    if "capture" in parts:
        data = C.batches(seqs, args.batch_size, pad)
        res["capture"] = bench_capture(bm, data, peers, args.repeats)
    if "generate" in parts:
        ids, am = C.left_pad(seqs[:args.gen_batch], pad)
        layer = bm.spec.n_layers // 2
        # A direction at the scale of the residual stream at that layer, so steering visibly changes the text.
        h = forward_capture(bm.model, ids, am, layers=[layer], spec=bm.spec)[:, 0].norm(dim=-1).mean()
        g = torch.Generator().manual_seed(0)
        vec = torch.randn(bm.spec.d_model, generator=g)
        vec = vec / vec.norm() * float(h) / args.alpha
        res["generate"] = bench_generate(bm, ids, am, peers, args.repeats, args.max_new_tokens, layer,
                                         args.alpha, vec)
    if "memory" in parts:
        res["memory"] = bench_memory(args, bm, seqs)
    return C.finish(res, report(res), args.json)


if __name__ == "__main__":
    main()
