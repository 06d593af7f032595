"""Ray on this machine: extract wall time with 1 and 2 workers (ratio), and Ray's per-task scheduling overhead.

    .venv/bin/python benchmarks/bench_ray.py --json ray.json               # SmolLM2, a small extract config
    .venv/bin/python benchmarks/bench_ray.py --tiny                        # tiny random model, a smoke run

Measured in one run, each in a fresh run folder:

1. **Scheduling overhead**: a local Ray of 2 CPUs, warm workers; ``n`` no-op tasks submitted at once (mean
   time per task, i.e. throughput cost) and one at a time (round-trip latency of one task).
2. **Extract wall time**: the same config (``--n-intrinsic`` queries + ``--n-prompted`` per value, lexicon judge,
   so judging costs nothing) run by one process (baseline), by Ray with 1 worker and by Ray with 2 workers.
   Ray times are given with and without the start-up of the local Ray instance (``ray.init``/``shutdown``,
   paid once per command). The ratio 2 workers / 1 worker is the speed-up from a second worker on this machine;
   Ray (1 worker) / one process is Ray's cost (worker start-up, model load per worker, task hops). Records are
   checked equal across the three runs.

On 2 cores shared with other jobs, the 2-worker speed-up is bounded by the cores actually free; absolute
seconds depend on the load, the ratios are the figures to compare (runs are interleaved over repeats).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker, as Ray gives its workers
sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C


def _log(msg: str) -> None:
    print(f"[bench_ray] {msg}", file=sys.stderr, flush=True)


def overhead(n: int) -> dict[str, float]:
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False,
             object_store_memory=256 * 2**20)
    try:
        @ray.remote
        def noop(i: int) -> int:
            return i

        ray.get([noop.remote(i) for i in range(20)])  # start and warm both workers
        t0 = time.perf_counter()
        ray.get([noop.remote(i) for i in range(n)])
        batch = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for i in range(min(n, 100)):
            ray.get(noop.remote(i))
        single = (time.perf_counter() - t0) / min(n, 100)
    finally:
        ray.shutdown()
    return {"tasks": n, "ms_per_task_batched": batch * 1e3, "ms_round_trip_one_task": single * 1e3}


def _config(args: argparse.Namespace, model: str) -> dict[str, Any]:
    return dict(model=model, values=["Benevolence", "Power", "Tradition"], n_intrinsic=args.n_intrinsic,
                n_prompted_per_value=args.n_prompted, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                chunk_size=8, capture_batch_size=8, judge="lexicon", judge_options={"min_hits": 1},
                label_mode="rank", min_count=1, gen_bf16=False, seed=0)


def extract_runs(args: argparse.Namespace, model: str, work: Path) -> dict[str, Any]:
    import torch

    from valuelens.distributed import RayOptions, run_extract_ray
    from valuelens.extract import ExtractConfig, load_responses, run_extract
    from valuelens.models import load_model

    torch.set_num_threads(1)
    cfg = _config(args, model)
    lm = load_model(model)
    times: dict[str, list[float]] = {"one process": [], "ray 1 worker": [], "ray 2 workers": []}
    stage_sums: dict[str, list[float]] = {"ray 1 worker": [], "ray 2 workers": []}
    records: dict[str, Any] = {}
    for r in range(args.repeats):
        order = list(times)[r % 3:] + list(times)[:r % 3]
        for name in order:
            out = work / f"{name.replace(' ', '-')}-{r}"
            shutil.rmtree(out, ignore_errors=True)
            t0 = time.perf_counter()
            if name == "one process":
                run_extract(out, ExtractConfig.from_dict(cfg), lm=lm)
            else:
                cpus = 1 if name == "ray 1 worker" else 2
                run_extract_ray(out, ExtractConfig.from_dict(cfg), opts=RayOptions(local_cpus=cpus, shards=cpus))
                m = json.loads((out / "manifest-ray.json").read_text())["ray"]
                stage_sums[name].append(sum(s["wall_s"] for s in m["stages"].values()))
            times[name].append(time.perf_counter() - t0)
            records.setdefault(name, load_responses(out))
            _log(f"repeat {r + 1}/{args.repeats} {name}: {times[name][-1]:.1f} s")
    same = all(records[k] == records["one process"] for k in records)
    rows = []
    for name, ts in times.items():
        rows.append({"method": name, "median_s": C.median(ts), "times_s": ts,
                     "median_s_without_ray_start": C.median(stage_sums[name]) if name in stage_sums else None,
                     "ratio_vs_one_process": C.paired_ratio(times, name, "one process"),
                     "ratio_vs_ray_1_worker": C.paired_ratio(times, name, "ray 1 worker")})
    n_items = args.n_intrinsic + 3 * args.n_prompted
    return {"rows": rows, "items": n_items, "same_records": same,
            "speedup_2_vs_1_worker": 1 / C.paired_ratio(times, "ray 2 workers", "ray 1 worker"),
            "speedup_2_vs_1_worker_without_ray_start": C.median(stage_sums["ray 1 worker"]) /
            C.median(stage_sums["ray 2 workers"])}


def report(res: dict[str, Any]) -> str:
    o, e = res["overhead"], res["extract"]
    lines = ["# Ray on this machine", "", f"model: {res['model']}; {e['items']} responses, lexicon judge", "",
             "## Per-task scheduling overhead (local Ray, 2 CPUs, warm workers)",
             C.table(["measure", "ms"], [[f"{o['tasks']} no-op tasks submitted together, per task",
                                          o["ms_per_task_batched"]],
                                         ["one no-op task, submit → result", o["ms_round_trip_one_task"]]]),
             "", "## Extract wall time",
             C.table(["method", "median s", "median s without Ray start-up", "ratio vs one process",
                      "ratio vs Ray 1 worker"],
                     [[r["method"], r["median_s"], r["median_s_without_ray_start"], r["ratio_vs_one_process"],
                       r["ratio_vs_ray_1_worker"]] for r in e["rows"]]),
             "", f"2 workers vs 1: {e['speedup_2_vs_1_worker']:.2f}× faster end to end, "
                 f"{e['speedup_2_vs_1_worker_without_ray_start']:.2f}× without Ray's start-up; records identical "
                 f"across the three: {'yes' if e['same_records'] else 'NO'}.",
             "Ratios are medians of per-repeat ratios (runs interleaved); absolute seconds depend on the machine's "
             "load."]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--n-intrinsic", type=int, default=16)
    p.add_argument("--n-prompted", type=int, default=8, help="prompted responses per value (3 values)")
    p.add_argument("--max-new-tokens", type=int, default=24)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--tasks", type=int, default=500, help="no-op tasks for the overhead measurement")
    p.add_argument("--tiny", action="store_true", help="tiny random chat model, small config: a smoke run")
    p.add_argument("--json", type=Path, default=None)
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="vl-bench-ray-"))
    model = args.model
    if args.tiny:
        from valuelens.testing import tiny_chat_lm

        lm = tiny_chat_lm()
        lm.model.save_pretrained(work / "tiny")
        lm.tokenizer.save_pretrained(work / "tiny")
        model = str(work / "tiny")
        args.n_intrinsic, args.n_prompted, args.max_new_tokens, args.repeats = 8, 4, 6, 1
        args.tasks = min(args.tasks, 100)
    res: dict[str, Any] = {"model": "tiny random chat model" if args.tiny else model, "machine": C.machine_note(),
                           "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    _log("per-task overhead …")
    res["overhead"] = overhead(args.tasks)
    _log("extract runs …")
    res["extract"] = extract_runs(args, model, work)
    shutil.rmtree(work, ignore_errors=True)
    return C.finish(res, report(res), args.json)


if __name__ == "__main__":
    main()
