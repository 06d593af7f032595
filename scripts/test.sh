#!/usr/bin/env bash
# Run the whole test suite: lint, unit tests (tiny random models) and integration tests (embedded SmolLM2).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
