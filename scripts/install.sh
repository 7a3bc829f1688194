#!/usr/bin/env bash
# Sourced by scripts/test.sh and scripts/demo.sh: creates .venv (or $VENV) and installs the pinned set.
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
if [ "$MODE" = "test" ] && [ -f scripts/test_material.sh ]; then bash scripts/test_material.sh; fi
export VENV
