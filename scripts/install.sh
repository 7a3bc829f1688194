#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/demo.sh: creates .venv (or $VENV), installs the pinned set and the
# real-weight metric material into the venv (scripts/test_material.sh).
# usage: source scripts/install.sh [demo|test]
set -euo pipefail
VENV="${VENV:-$PWD/.venv}"
MODE="${1:-demo}"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then "$PY" -m venv "$VENV"; fi
PIP=("$VENV/bin/pip" install -q --disable-pip-version-check -c constraints.txt)
# torch first and pinned exactly: any other version pulls a multi-GB CUDA build on CPU machines.
"${PIP[@]}" torch==2.13.0
"${PIP[@]}" -e ".[test,convert]"
# The demo's FID / LPIPS / CLIP-BPE files; `test` adds the parity-only references.
VENV="$VENV" bash scripts/test_material.sh "$([ "$MODE" = test ] && echo test || echo metrics)"
export VENV
