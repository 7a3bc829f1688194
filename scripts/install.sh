#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/demo.sh: creates .venv (or $VENV), installs the pinned set (with uv:
# scripts/venv_install.sh) and the real-weight metric material into the venv (scripts/test_material.sh); `test`
# also installs Debian's chromium + chromium-driver for the browser test when missing (root, apt-get).
# usage: source scripts/install.sh [demo|test]
set -euo pipefail
VENV="${VENV:-$PWD/.venv}"
MODE="${1:-demo}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then "$PY" -m venv "$VENV"; fi
source "$(dirname "${BASH_SOURCE[0]}")/venv_install.sh"  # uv (pip when it fails or DUALFASHION_INSTALLER=pip)
# `test` byte-compiles the venv (the suite starts ~100 Python processes; see venv_install --compile)
COMPILE=(); if [ "$MODE" = test ]; then COMPILE=(--compile); fi
# torch first and pinned exactly: any other version pulls a multi-GB CUDA build on CPU machines.
venv_install "$VENV" "${COMPILE[@]}" -c constraints.txt torch==2.13.0
# the demo needs only the core package (its metric material below uses torch once); `test` adds the extras
if [ "$MODE" = test ]; then
  venv_install "$VENV" "${COMPILE[@]}" -c constraints.txt -e ".[test,convert]"
  "$VENV/bin/python" -m compileall -q -j 0 dualfashion_jax > /dev/null  # the editable package's own .pyc
else venv_install "$VENV" -c constraints.txt -e .; fi
# The demo's FID / LPIPS / CLIP-BPE files; `test` adds the parity-only references.
VENV="$VENV" bash scripts/test_material.sh "$([ "$MODE" = test ] && echo test || echo metrics)"
# `test`: the browser test (tests/test_web_browser.py) drives Debian's headless Chromium through chromedriver.
if [ "$MODE" = test ] && ! { command -v chromium && command -v chromedriver; } >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; } \
      >/dev/null || echo "install.sh: apt-get could not install chromium + chromium-driver; the browser test skips" >&2
  else
    echo "install.sh: chromium + chromium-driver are missing and need root + apt-get; the browser test skips" >&2
  fi
fi
export VENV
