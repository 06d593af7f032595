"""Check valuelens on your model and device: hooks correct, throughput and memory vs plain ``generate``.

One command for a user with a GPU (or several, or a Mac)::

    python benchmarks/gpu_check.py --model meta-llama/Llama-3.1-8B-Instruct --device cuda
    python benchmarks/gpu_check.py --model Qwen/Qwen2.5-72B-Instruct --device-map auto     # split over GPUs
    python benchmarks/gpu_check.py --model smollm2 --device cpu                            # the CPU part, here
    python benchmarks/gpu_check.py --tiny --split                                          # seconds (smoke test)

It loads the model the way ``valuelens --device/--dtype/--device-map`` does and prints three tables:

1. **Hooks** (pass/fail with the numbers): capture of every layer's mean residual vs ``output_hidden_states``;
   steering with α = 0 gives exactly plain ``generate``'s tokens; steering shifts layer l's output by exactly
   α·v; batched steered generation equals one prompt at a time (left padding); directional ablation leaves no
   component along the direction at any layer; neuron scaling with β = 0 zeroes exactly those neurons. On a
   model spread over devices every layer's hook runs on that layer's device.
2. **Throughput**: tokens/s of plain ``model.generate`` (greedy, fixed length, batch ``--batch-size``) and the
   ratio of steered, ablated and neuron-scaled generation to it, measured interleaved in the same run; capture
   (``forward_capture``) vs a forward with ``output_hidden_states``.
3. **Memory**: peak device memory (CUDA: ``max_memory_allocated``; CPU: peak RSS growth) of each, relative to
   plain ``generate``.

Tolerances: float32 compares to 1e-4 (absolute, scaled by the activations' size); bf16/fp16 by cosine ≥ 0.999
(and steered-vs-plain token equality, which half precision keeps at α = 0). ``--split`` (with ``--tiny``)
offloads half the layers through accelerate, the CPU stand-in for a model spread over GPUs.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from torch import Tensor

import _common as C
from valuelens.hooks import (
    ablate_direction,
    add_vectors,
    capture_neurons,
    forward_capture,
    left_pad_position_ids,
    scale_neurons,
)
from valuelens.models import LoadedModel, module_device


def _log(msg: str) -> None:
    print(f"[gpu_check] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------------------------
# Model


def load(args: argparse.Namespace, workdir: Path) -> LoadedModel:
    from valuelens.models import ChatRenderer, get_arch_spec, load_model

    if not args.tiny:
        return load_model(args.model, device=args.device, dtype=args.dtype, device_map=args.device_map)
    from valuelens.testing import tiny_llama

    folder = workdir / "tiny-llama"
    tiny_llama().save_pretrained(folder)
    C.tiny_tokenizer().save_pretrained(folder)
    if args.split:
        half = {f"model.layers.{i}": ("cpu" if i < 2 else "disk") for i in range(4)}
        dm: dict[str, Any] | None = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", **half,
                                     "model.norm": "cpu", "lm_head": "cpu"}
        os.environ["VALUELENS_CACHE"] = str(workdir / "cache")
    else:
        dm = args.device_map
    lm = load_model(str(folder), device=args.device or "cpu", dtype=args.dtype, device_map=dm)
    lm.model.generation_config.pad_token_id = 0
    lm.chat = ChatRenderer(lm.tokenizer, allow_plain=True)
    lm.spec = get_arch_spec(lm.model)
    return lm


def prompts(lm: LoadedModel, n: int, tiny: bool) -> list[list[int]]:
    bm = C.BenchModel(lm.model, lm.tokenizer, lm.spec, "", "")
    return C.bench_token_ids(bm, n, tiny=tiny)


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps":
        torch.mps.synchronize()


def _half(lm: LoadedModel) -> bool:
    return next(p for p in lm.model.parameters()).dtype in (torch.bfloat16, torch.float16)


# --------------------------------------------------------------------------------------------------------------
# 1. Hooks


def _close(a: Tensor, b: Tensor, half: bool) -> tuple[bool, float, float]:
    """(pass, max |Δ|, min cosine over rows) with the tolerance of the model's precision."""
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    diff = float((a - b).abs().max())
    cos = float(torch.nn.functional.cosine_similarity(a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1]),
                                                      dim=-1).min())
    scale = float(b.abs().max().clamp(min=1.0))
    return (cos >= 0.999 if half else diff <= 1e-4 * scale), diff, cos


def check_hooks(lm: LoadedModel, seqs: list[list[int]], batch: int, new_tokens: int) -> list[dict[str, Any]]:
    model, spec, dev = lm.model, lm.spec, lm.device
    pad = lm.tokenizer.pad_token_id
    half = _half(lm)
    ids, am = C.left_pad(seqs[:batch], pad)
    ids, am = ids.to(dev), am.to(dev)
    rows: list[dict[str, Any]] = []

    def row(name: str, ok: bool, detail: str) -> None:
        rows.append({"check": name, "pass": bool(ok), "detail": detail})
        _log(f"{'PASS' if ok else 'FAIL'} {name}: {detail}")

    # Capture vs output_hidden_states (hidden_states[l + 1] = output of layer l).
    with torch.no_grad():
        hs = model(input_ids=ids, attention_mask=am, position_ids=left_pad_position_ids(am),
                   output_hidden_states=True).hidden_states
    m = am.float().unsqueeze(-1)
    ref = torch.stack([(h.float().to(dev) * m).sum(1) / m.sum(1) for h in hs[1:]], dim=1)
    got = forward_capture(model, ids, am, spec=spec)
    ok, diff, cos = _close(got, ref, half)
    row("capture = output_hidden_states (all layers, mean over tokens)", ok, f"max |Δ| {diff:.2e}, min cos {cos:.6f}")

    layer = spec.n_layers // 2
    norm = float(ref[:, layer].norm(dim=-1).mean())
    g = torch.Generator().manual_seed(0)
    v = torch.randn(spec.d_model, generator=g)
    v = v / v.norm() * norm  # a direction at the residual stream's scale at that layer
    kw = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad,
              temperature=None, top_p=None, top_k=None)
    with torch.no_grad():
        plain = model.generate(input_ids=ids, attention_mask=am, **kw)
        with add_vectors(model, {layer: v}, alpha=0.0, spec=spec):
            zero = model.generate(input_ids=ids, attention_mask=am, **kw)
        with add_vectors(model, {layer: v}, alpha=0.5, spec=spec):
            steered = model.generate(input_ids=ids, attention_mask=am, **kw)
            one_by_one = [model.generate(input_ids=ids[i:i + 1, am[i].bool()], **kw)[0, -new_tokens:]
                          for i in range(ids.shape[0])]
    row("steering α=0 = plain generate (tokens)", torch.equal(plain, zero),
        f"{int((plain == zero).all(dim=1).sum())}/{ids.shape[0]} sequences identical")
    row("steering α=0.5 changes the tokens", not torch.equal(plain, steered),
        f"{int((plain != steered).any(dim=1).sum())}/{ids.shape[0]} sequences changed")
    same = sum(torch.equal(a, b) for a, b in zip(one_by_one, steered[:, -new_tokens:], strict=True))
    row("steered batch (left-padded) = one prompt at a time", same == ids.shape[0] or (half and same >= 1),
        f"{same}/{ids.shape[0]} identical" + (" (half precision: padding may change rounding)" if half else ""))

    # forward_capture registers its recorder after the steering hook, so it sees the steered layer output.
    with add_vectors(model, {layer: v}, alpha=0.5, spec=spec):
        shifted = forward_capture(model, ids, am, layers=[layer], spec=spec)[:, 0]
    base = forward_capture(model, ids, am, layers=[layer], spec=spec)[:, 0]
    ok, diff, cos = _close(shifted - base, (0.5 * v).to(shifted.device).expand_as(base), half)
    row(f"steering shifts layer {layer} by exactly α·v", ok, f"max |Δ| {diff:.2e}, cos {cos:.6f}")

    d = torch.randn(spec.d_model, generator=g)
    unit = (d / d.norm()).to(dev)
    with ablate_direction(model, d, spec=spec):
        abl = forward_capture(model, ids, am, spec=spec)
    resid = float((abl.float() @ unit.float().to(abl.device)).abs().max())
    size = float(abl.float().norm(dim=-1).mean())
    row("ablation leaves no component along the direction (every layer)", resid <= (1e-2 if half else 1e-4) * size,
        f"max |⟨h, d̂⟩| {resid:.2e} (mean ‖h‖ {size:.1f})")

    idx = [0, 3, spec.d_mlp - 1]
    with scale_neurons(model, {layer: idx}, 0.0, spec=spec), capture_neurons(model, [layer], spec=spec,
                                                                               reduction="all") as nrec:
        nrec.set_mask(am.bool())
        with torch.no_grad():
            model(input_ids=ids, attention_mask=am, position_ids=left_pad_position_ids(am))
        acts = nrec.pop()
    # The scaling pre-hook was registered first, so the recorder sees the scaled input of the down projection.
    zeroed = max(float(a[:, 0, idx].abs().max()) for a in acts)
    others = max(float(a[:, 0].abs().max()) for a in acts)
    row("neuron scaling β=0 zeroes exactly those neurons", zeroed == 0.0 and others > 0,
        f"max |act| of scaled neurons {zeroed:.1e}, of all {others:.2f}")
    placement = {str(module_device(layer_mod)) for layer_mod in spec.layers(model)}
    row("layers' execution devices", True, ", ".join(sorted(placement)))
    return rows


# --------------------------------------------------------------------------------------------------------------
# 2-3. Throughput and memory


def _peak(dev: torch.device, fn: Callable[[], Any]) -> float:
    """Peak memory growth in MiB while ``fn`` runs (CUDA allocator peak; CPU: peak RSS)."""
    import gc

    gc.collect()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        fn()
        torch.cuda.synchronize(dev)
        return (torch.cuda.max_memory_allocated(dev) - before) / 2**20
    if not C.reset_peak_rss():
        return float("nan")
    before = C.rss_mb()
    fn()
    return C.peak_rss_mb() - before


def bench(lm: LoadedModel, seqs: list[list[int]], batch: int, new_tokens: int, repeats: int,
          capture_batch: int) -> dict[str, Any]:
    model, spec, dev = lm.model, lm.spec, lm.device
    pad = lm.tokenizer.pad_token_id
    ids, am = (t.to(dev) for t in C.left_pad(seqs[:batch], pad))
    layer = spec.n_layers // 2
    g = torch.Generator().manual_seed(1)
    v = torch.randn(spec.d_model, generator=g)
    kw = dict(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad,
              temperature=None, top_p=None, top_k=None)

    def gen(ctx: Callable[[], contextlib.AbstractContextManager[Any]]) -> Callable[[], Any]:
        def run() -> Any:
            with torch.no_grad(), ctx():
                out = model.generate(input_ids=ids, attention_mask=am, **kw)
            _sync(dev)
            return out
        return run

    neurons = {layer: list(range(0, spec.d_mlp, 7))}
    methods = {
        "plain generate": gen(contextlib.nullcontext),
        "steered (add_vectors, 1 layer)": gen(lambda: add_vectors(model, {layer: v}, alpha=0.1, spec=spec)),
        "ablated (every layer)": gen(lambda: ablate_direction(model, v, spec=spec)),
        "neurons scaled (β=0.5)": gen(lambda: scale_neurons(model, neurons, 0.5, spec=spec)),
    }
    times, _ = C.interleaved(methods, repeats, progress=lambda s: _log(f"generate {s}"))
    n_tok = ids.shape[0] * new_tokens
    gen_rows = [{"method": k, "median_s": C.median(t), "tokens_per_s": n_tok / C.median(t),
                 "ratio_vs_plain": C.paired_ratio(times, k, "plain generate"),
                 "peak_mib": _peak(dev, methods[k])} for k, t in times.items()]
    base_mem = gen_rows[0]["peak_mib"]
    for r in gen_rows:
        r["memory_ratio_vs_plain"] = r["peak_mib"] / base_mem if base_mem and base_mem == base_mem else float("nan")

    cids, cam = (t.to(dev) for t in C.left_pad(seqs[:capture_batch], pad))

    def hidden() -> Any:
        with torch.no_grad():
            out = model(input_ids=cids, attention_mask=cam, position_ids=left_pad_position_ids(cam),
                        output_hidden_states=True)
        _sync(dev)
        return out.hidden_states[-1].shape

    def ours() -> Any:
        out = forward_capture(model, cids, cam, spec=spec)
        _sync(dev)
        return out.shape

    cmethods = {"forward with output_hidden_states": hidden, "valuelens forward_capture (all layers)": ours}
    ctimes, _ = C.interleaved(cmethods, repeats, progress=lambda s: _log(f"capture {s}"))
    n_ctok = int(cam.sum())
    cap_rows = [{"method": k, "median_s": C.median(t), "tokens_per_s": n_ctok / C.median(t),
                 "ratio_vs_output_hidden_states": C.paired_ratio(ctimes, k, "forward with output_hidden_states"),
                 "peak_mib": _peak(dev, cmethods[k])} for k, t in ctimes.items()]
    return {"generate": gen_rows, "capture": cap_rows, "batch": int(ids.shape[0]), "new_tokens": new_tokens,
            "capture_batch": int(cids.shape[0]), "capture_tokens": n_ctok}


# --------------------------------------------------------------------------------------------------------------


def report(res: dict[str, Any]) -> str:
    lines = [f"# gpu_check: {res['model']} on {res['device']} ({res['dtype']})", "",
             f"placement: {res['placement']}", "", "## Hooks",
             C.table(["check", "result", "numbers"],
                     [[r["check"], "PASS" if r["pass"] else "FAIL", r["detail"]] for r in res["hooks"]])]
    if "bench" in res:
        b = res["bench"]
        lines += ["", f"## Generation throughput (batch {b['batch']}, {b['new_tokens']} new tokens, greedy)",
                  C.table(["method", "median s", "tokens/s", "ratio vs plain generate", "peak MiB",
                           "memory vs plain"],
                          [[r["method"], r["median_s"], r["tokens_per_s"], r["ratio_vs_plain"], r["peak_mib"],
                            r["memory_ratio_vs_plain"]] for r in b["generate"]]),
                  "", f"## Capture ({b['capture_batch']} prompts, {b['capture_tokens']} tokens, all layers)",
                  C.table(["method", "median s", "tokens/s", "ratio vs output_hidden_states", "peak MiB"],
                          [[r["method"], r["median_s"], r["tokens_per_s"], r["ratio_vs_output_hidden_states"],
                            r["peak_mib"]] for r in b["capture"]])]
    n_fail = sum(not r["pass"] for r in res["hooks"])
    lines += ["", f"hooks: {'all checks passed' if not n_fail else f'{n_fail} check(s) FAILED'}; ratios are "
              "medians of per-repeat ratios measured interleaved in this run (absolute seconds depend on the "
              "machine's load)."]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2", help="short name, GGUF file, folder or hub id (default smollm2)")
    p.add_argument("--device", default=None, help="auto | cpu | cuda | cuda:N | mps (default auto)")
    p.add_argument("--dtype", default=None, help="auto | float32 | bfloat16 | float16 (default auto)")
    p.add_argument("--device-map", default=None, help="auto | balanced | sequential: spread over devices")
    p.add_argument("--n-prompts", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=8, help="generation batch (default 8)")
    p.add_argument("--capture-batch", type=int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--no-bench", action="store_true", help="hook checks only")
    p.add_argument("--tiny", action="store_true", help="tiny random model on the CPU: a smoke run in seconds")
    p.add_argument("--split", action="store_true", help="with --tiny: offload half the layers (accelerate)")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tiny:
        args.n_prompts = min(args.n_prompts, 16)
    workdir = Path(tempfile.mkdtemp(prefix="vl-gpu-check-"))
    t0 = time.time()
    lm = load(args, workdir)
    _log(f"loaded {lm.name} in {time.time() - t0:.1f} s on {lm.device}")
    seqs = prompts(lm, args.n_prompts, args.tiny)
    placement = lm.info.get("device_modules") or {str(lm.device): "whole model"}
    res: dict[str, Any] = {"model": lm.name, "device": str(lm.device), "dtype": lm.info.get("dtype"),
                           "placement": placement, "machine": C.machine_note(),
                           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    new_tokens = min(args.max_new_tokens, 8) if args.tiny else args.max_new_tokens
    res["hooks"] = check_hooks(lm, seqs, min(args.batch_size, len(seqs)), min(new_tokens, 12))
    if not args.no_bench:
        res["bench"] = bench(lm, seqs, min(args.batch_size, len(seqs)), new_tokens, args.repeats,
                             min(args.capture_batch, len(seqs)))
    res["all_passed"] = all(r["pass"] for r in res["hooks"])
    return C.finish(res, report(res), args.json)


if __name__ == "__main__":
    out = main()
    sys.exit(0 if out.get("all_passed") else 1)
