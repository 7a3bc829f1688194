#!/usr/bin/env bash
# Installs the project with its test + PyTorch-reference extras (exact pins) and runs the whole test suite.
# This is the README's test command and exactly what CI (.ci/run) calls; then scripts/test_latest.sh
# (SKIP_LATEST=1 skips that second environment).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +e
"$VENV/bin/python" -m pytest -q -rs "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
# setup.py's bounds are tested too: the tokenizer tests and the fast demo with the newest allowed versions.
if [ "$rc" -eq 0 ] && [ -z "${SKIP_LATEST:-}" ]; then bash scripts/test_latest.sh || rc=$?; fi
exit "$rc"
