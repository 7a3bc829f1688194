#!/usr/bin/env bash
# Installs the project with its test + PyTorch-reference extras (exact pins) and runs the whole test suite.
# This is the README's test command and exactly what CI (.ci/run) calls.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +e
"$VENV/bin/python" -m pytest -q -rs "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit "$rc"
