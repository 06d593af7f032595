#!/usr/bin/env bash
# Install headless Chromium (Debian package `chromium`) for the report rendering test
# (tests/integration/test_report_chromium.py). Idempotent: does nothing when chromium is already on PATH.
# Needs root (CI runs as root); otherwise run it with sudo.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "chromium already installed: $(command -v chromium)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install_chromium.sh: need root (or sudo) to apt-get install chromium" >&2; exit 1; }
  SUDO=sudo
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y chromium
command -v chromium >/dev/null 2>&1 || { echo "install_chromium.sh: chromium still not on PATH" >&2; exit 1; }
echo "chromium installed: $(chromium --version 2>/dev/null || command -v chromium)"
