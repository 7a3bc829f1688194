#!/usr/bin/env bash
# Installs the project (exact pins) and runs the whole demo on the built-in synthetic dataset, CPU only:
# data -> stage 1 -> stage 2 -> stage 3 -> PFITB + GOR generation -> evaluation table.
# This is the README's main command. Output folder: $1 (default demo_out/); further arguments go to `demo` (e.g. --fast).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh demo
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "$VENV/bin/dualfashion-jax" demo --out "${1:-demo_out}" "${@:2}"
