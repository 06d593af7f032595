"""Benchmark the steering server: tokens/s of 8 concurrent clients steered vs unsteered, and vs 8 sequential requests.

    .venv/bin/python benchmarks/bench_serve.py --model smollm2 --json out.json     # SmolLM2, ~5 min
    .venv/bin/python benchmarks/bench_serve.py --tiny                               # seconds (smoke test)

A real HTTP server (:class:`valuelens.serving.server.SteeringServer`, the same code as ``valuelens serve``) on
loopback in this process; clients are threads sending OpenAI-style JSON over HTTP. Every request is greedy with
``ignore_eos`` and a fixed ``max_tokens``, so each scenario generates the same number of tokens. Scenarios, all
timed inside every repeat in rotated order (the machine is shared, see ``_common.py``):

* ``8 concurrent, unsteered`` — the baseline: 8 clients at once, continuous batching;
* ``8 concurrent, steered`` — the same 8 requests, each with ``"steer"`` (a value vector at the run's layer);
* ``8 concurrent, mixed`` — 4 steered + 4 unsteered in the same batches (per-row interventions);
* ``8 sequential, unsteered`` — one request at a time (what a server without batching does);
* ``library generate_batch (batch 8)`` — no HTTP, no server: valuelens's own batched ``generate`` (reference).

Reported: median seconds, tokens/s, and the median per-repeat ratio of each scenario's tokens/s to the
unsteered concurrent baseline; also tokens per CPU-second of this process (all its threads) and that ratio,
which drifts much less than wall time when other jobs share the cores. Goal: steered / unsteered ≥ 0.95.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import finish, interleaved, machine_note, median, table


def _setup(args: argparse.Namespace) -> tuple[Any, Any]:
    import torch

    from valuelens.serving.artifacts import VectorArtifact
    from valuelens.vectors import ValueVectors

    if args.tiny:
        from valuelens.testing import tiny_chat_lm

        lm = tiny_chat_lm(seed=0)
        g = torch.Generator().manual_seed(0)
        vv = ValueVectors(model_hash=lm.model_hash, n_layers=lm.spec.n_layers, d_model=lm.spec.d_model,
                          layers=list(range(lm.spec.n_layers)))
        vv.set("Benevolence", "prompted", torch.randn(lm.spec.n_layers, lm.spec.d_model, generator=g))
        art = VectorArtifact(vv, model_id="tiny", default_layer=2, residual_norms=[5.0] * lm.spec.n_layers)
        return lm, art
    from valuelens.evals.capability import residual_norms
    from valuelens.evals.items import load_heldout_text
    from valuelens.models import load_model
    from valuelens.serving.quick import quick_vectors

    lm = load_model(args.model)
    if args.vectors:
        return lm, VectorArtifact.load(args.vectors)
    paras = [p for p in load_heldout_text().split("\n\n") if p.strip()][:4]
    norms = [float(x) for x in residual_norms(lm, paras, max_length=64)]
    mid = lm.spec.n_layers // 2
    return lm, quick_vectors(lm, ("Benevolence",), n_queries=4, layers=[mid], default_layer=mid, norms=norms)


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--vectors", default=None, help="a run or vector folder (default: quick prompt-contrast vectors)")
    ap.add_argument("--tiny", action="store_true", help="random 4-layer model (smoke test)")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--alpha", type=float, default=0.2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch

    from valuelens.datasets import data_path
    from valuelens.generate import GenerationConfig, generate_batch
    from valuelens.serving.server import ServerConfig, SteeringServer
    from valuelens.serving.steering import SteerBank

    if args.threads:
        torch.set_num_threads(args.threads)
    lm, art = _setup(args)
    queries = [json.loads(x)["text"] for x in data_path("queries.jsonl").read_text().splitlines() if x.strip()]
    qs = queries[: args.clients]
    value = art.values[0]
    bank = SteerBank(art, art.residual_norms, lm.spec.n_layers, max_alpha=10.0)
    srv = SteeringServer(lm, bank, ServerConfig(model_name="m", port=0, max_tokens_limit=args.max_tokens,
                                                default_top_k=0),
                         max_batch=args.clients, batch_window=0.02).start()
    n_tok = args.clients * args.max_tokens

    def body(q: str, steered: bool) -> dict[str, Any]:
        b: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": q}], "temperature": 0,
                             "max_tokens": args.max_tokens, "ignore_eos": True}
        if steered:
            b["steer"] = {"value": value, "alpha": args.alpha}
        return b

    def concurrent(kinds: list[bool]) -> list[dict[str, Any]]:
        out: list[Any] = [None] * len(kinds)

        def go(i: int) -> None:
            out[i] = _post(srv.url, body(qs[i], kinds[i]))
        ts = [threading.Thread(target=go, args=(i,)) for i in range(len(kinds))]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return out

    def sequential() -> list[dict[str, Any]]:
        return [_post(srv.url, body(q, False)) for q in qs]

    texts = [lm.chat.render(q).text for q in qs]
    cfg = GenerationConfig(max_new_tokens=args.max_tokens, batch_size=len(texts))

    def library() -> Any:
        # reference: valuelens's own batched generate (stops at EOS, so it may generate fewer tokens)
        return generate_batch(lm, texts, cfg)

    c = args.clients
    cpu: dict[str, list[float]] = {}

    def cpu_timed(name: str, fn: Any) -> Any:
        # Process CPU seconds (all threads: model, HTTP, clients): on a machine shared with other jobs this cost
        # drifts far less than wall time, so its ratio is the steadier estimate of the steering overhead.
        def run() -> Any:
            t0 = time.process_time()
            out = fn()
            cpu.setdefault(name, []).append(time.process_time() - t0)
            return out
        return run

    methods = {
        "8 concurrent, unsteered": lambda: concurrent([False] * c),
        "8 concurrent, steered": lambda: concurrent([True] * c),
        "8 concurrent, mixed": lambda: concurrent([i % 2 == 1 for i in range(c)]),
        "8 sequential, unsteered": sequential,
        "library generate_batch (batch 8)": library,
    }
    methods = {k: cpu_timed(k, f) for k, f in methods.items()}
    note = machine_note()
    try:
        times, results = interleaved(methods, args.repeats,
                                     progress=lambda m: print(m, file=sys.stderr, flush=True))
    finally:
        srv.close()
    lib_tokens = sum(len(r["response_ids"]) for r in results["library generate_batch (batch 8)"])
    tokens = {k: n_tok for k in methods}
    tokens["library generate_batch (batch 8)"] = lib_tokens
    for k in ("8 concurrent, unsteered", "8 concurrent, steered", "8 concurrent, mixed", "8 sequential, unsteered"):
        got = sum(r["usage"]["completion_tokens"] for r in results[k])
        assert got == n_tok, (k, got, n_tok)
    base = "8 concurrent, unsteered"
    rows, out_rows = [], []
    for k in methods:
        tps = [tokens[k] / t for t in times[k]]
        ratio = median([tokens[k] / t / (tokens[base] / b) for t, b in zip(times[k], times[base], strict=True)])
        cpu_k, cpu_b = cpu[k][1:], cpu[base][1:]  # the first call of each was the untimed warm-up
        cpu_ratio = median([tokens[k] / t / (tokens[base] / b) for t, b in zip(cpu_k, cpu_b, strict=True)])
        rows.append([k, tokens[k], median(times[k]), median(tps), ratio, tokens[k] / median(cpu_k), cpu_ratio])
        out_rows.append({"scenario": k, "tokens": tokens[k], "median_s": median(times[k]), "tokens_per_s": median(tps),
                         "ratio_vs_unsteered_concurrent": ratio, "tokens_per_cpu_s": tokens[k] / median(cpu_k),
                         "cpu_ratio_vs_unsteered_concurrent": cpu_ratio})
    steered_rows = [r["valuelens"]["batch_rows_max"] for r in results["8 concurrent, steered"]]
    text = "\n".join([
        f"## Steering server: {args.clients} clients × {args.max_tokens} tokens "
        f"({'tiny random model' if args.tiny else args.model}, greedy, ignore_eos)", "",
        table(["scenario", "tokens", "median s", "tokens/s", "ratio vs unsteered concurrent", "tokens/CPU-s",
               "CPU ratio"], rows), "",
        f"steered / unsteered (goal ≥ 0.95): {out_rows[1]['ratio_vs_unsteered_concurrent']:.3f} wall-clock, "
        f"{out_rows[1]['cpu_ratio_vs_unsteered_concurrent']:.3f} per CPU-second",
        f"concurrent / sequential: {1 / out_rows[3]['ratio_vs_unsteered_concurrent']:.2f}× wall-clock, "
        f"{1 / out_rows[3]['cpu_ratio_vs_unsteered_concurrent']:.2f}× per CPU-second",
        f"rows per batch seen by steered requests: max {max(steered_rows)}",
        f"machine: {note['cpu_count']} cores, torch threads {note['torch_threads']}, load at start "
        f"{note['load_average_at_start']} — absolute seconds depend on the machine's load; ratios are per repeat.",
    ])
    res = {"machine": note, "args": {k: str(v) for k, v in vars(args).items()}, "rows": out_rows,
           "steered_over_unsteered": out_rows[1]["ratio_vs_unsteered_concurrent"],
           "steered_over_unsteered_cpu": out_rows[1]["cpu_ratio_vs_unsteered_concurrent"],
           "concurrent_over_sequential": 1 / out_rows[3]["ratio_vs_unsteered_concurrent"]}
    return finish(res, text, args.json)


if __name__ == "__main__":
    main()
