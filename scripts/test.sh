#!/usr/bin/env bash
# Run the whole test suite: lint, unit tests (tiny random models) and integration tests (embedded SmolLM2).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# Headless Chromium (Debian package) renders the HTML report in a test; installed here, not by setup.sh, so
# that the first command (setup + the main job) does not wait for it. Needs root or sudo; a no-op when present.
bash scripts/install_chromium.sh || echo "test: could not install chromium; the report rendering test will fail" >&2
.venv/bin/ruff check src tests benchmarks
.venv/bin/python -m pytest -q "$@"
