"""Time the main job (`valuelens run`) stage by stage, as a fresh machine runs it, against the reference timings.

    .venv/bin/python benchmarks/bench_run.py                     # fresh detector cache, default config
    .venv/bin/python benchmarks/bench_run.py --keep-detector     # reuse this machine's trained detector
    .venv/bin/python benchmarks/bench_run.py --quick --json out.json

``--fresh`` (the default) points ``$VALUELENS_CACHE`` at an empty temporary folder, so the detector is trained
and the GGUF is dequantised exactly as on a new machine. The baseline is the first fresh-machine run measured on
2 cores before the analysis package (issue 10): detector 9.1 min, extract 6.7, analyze 13.5, total 29.3 (on a
CPU with native bf16; see ``valuelens.precision`` for what bf16 costs where it is emulated). Every stage's time
comes from the run's own manifests (``manifest-run.json``, ``manifest.json``, ``manifest-analyze.json``), so
the numbers here are the numbers in the run folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REFERENCE_MIN = {"detector": 9.1, "extract": 6.7, "analyze": 13.5, "total": 29.3}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="time `valuelens run --quick` instead")
    ap.add_argument("--keep-detector", action="store_true", help="reuse $VALUELENS_CACHE (no fresh training)")
    ap.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    ap.add_argument("--model", default=None)
    ap.add_argument("--json", default=None, help="write the figures as JSON")
    ap.add_argument("--valuelens", default=str(REPO / ".venv" / "bin" / "valuelens"))
    args = ap.parse_args(argv)

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    tmp = tempfile.mkdtemp(prefix="bench-run-")
    if not args.keep_detector:
        env["VALUELENS_CACHE"] = str(Path(tmp) / "cache")
    out = Path(args.out) if args.out else Path(tmp) / "run"
    cmd = [args.valuelens, "run", "--out", str(out)] + (["--quick"] if args.quick else []) + \
        (["--model", args.model] if args.model else [])
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.time() - t0
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-4000:])
        raise SystemExit(f"bench_run: `{' '.join(cmd)}` failed with status {proc.returncode}")
    run_m = json.loads((out / "manifest-run.json").read_text())
    ext_m = json.loads((out / "manifest.json").read_text())
    ana_m = json.loads((out / "manifest-analyze.json").read_text())
    stages = {k: float(v) / 60 for k, v in run_m.get("timings_s", {}).items()}
    stages["total"] = wall / 60
    res = {"command": " ".join(cmd), "fresh_cache": not args.keep_detector, "wall_min": round(wall / 60, 2),
           "stages_min": {k: round(v, 2) for k, v in stages.items()},
           "extract_stages_s": ext_m.get("timings_s", {}), "analyze_sections_s": ana_m.get("timings_s", {}),
           "cpu_count": os.cpu_count(), "threads": os.environ.get("OMP_NUM_THREADS", "default")}
    print(f"valuelens run{' --quick' if args.quick else ''}: {wall / 60:.1f} min wall "
          f"({'fresh cache' if not args.keep_detector else 'detector cached'}), {os.cpu_count()} cores")
    print(f"{'stage':<12} {'minutes':>8} {'reference':>10} {'ratio':>7}")
    for k in ("detector", "extract", "analyze", "total"):
        if k in stages:
            ref = REFERENCE_MIN[k]
            print(f"{k:<12} {stages[k]:>8.2f} {ref:>10.1f} {stages[k] / ref:>7.2f}")
    print("extract stages (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res["extract_stages_s"].items()))
    print("analyze sections (s): " + ", ".join(f"{k} {v:.0f}" for k, v in res["analyze_sections_s"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
