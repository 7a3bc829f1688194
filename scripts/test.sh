#!/usr/bin/env bash
# Installs the project with its test + PyTorch-reference extras (exact pins) and runs the whole test suite.
# This is the README's test command and exactly what CI (.ci/run) calls; then scripts/test_latest.sh
# (SKIP_LATEST=1 skips that second environment). Two pytest-xdist workers, whole files per worker (module fixtures
# are built once): XLA compiles single-threaded, so a second worker fills the other core; PYTEST_WORKERS=0 runs
# in-process (e.g. for -s / pdb), more workers need ~6 GB of memory each.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
set +e
WORKERS="${PYTEST_WORKERS:-2}"
XDIST=(); [ "$WORKERS" != 0 ] && XDIST=(-n "$WORKERS" --dist loadfile)
"$VENV/bin/python" -m pytest -q -rs "${XDIST[@]}" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
# setup.py's bounds are tested too: the tokenizer tests and the fast demo with the newest allowed versions.
if [ "$rc" -eq 0 ] && [ -z "${SKIP_LATEST:-}" ]; then bash scripts/test_latest.sh || rc=$?; fi
exit "$rc"
