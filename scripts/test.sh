#!/usr/bin/env bash
# Installs the project with its test + PyTorch-reference extras (exact pins) and runs the whole test suite.
# This is the README's test command and exactly what CI (.ci/run) calls; then scripts/test_latest.sh
# (SKIP_LATEST=1 skips that second environment; its install runs in the background during the pinned suite).
# Two pytest-xdist workers, whole files per worker (module fixtures are built once): XLA compiles single-threaded,
# so a second worker fills the other core; PYTEST_WORKERS=0 runs in-process (e.g. for -s / pdb), more workers
# need ~6 GB of memory each.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh test
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
LATEST_LOG="$(mktemp)"
trap 'rm -f "$LATEST_LOG"' EXIT
latest_pid=""
if [ -z "${SKIP_LATEST:-}" ]; then
  LATEST_PHASE=install bash scripts/test_latest.sh > "$LATEST_LOG" 2>&1 &
  latest_pid=$!
fi
set +e
WORKERS="${PYTEST_WORKERS:-2}"
XDIST=(); [ "$WORKERS" != 0 ] && XDIST=(-n "$WORKERS" --dist loadfile)
"$VENV/bin/python" -m pytest -q -rs --durations=25 "${XDIST[@]}" "$@"  # the 25 slowest: where CI time goes
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; rc=1; fi
# setup.py's bounds are tested too: the tokenizer tests and the fast demo with the newest allowed versions.
if [ -n "$latest_pid" ]; then
  install_rc=0; wait "$latest_pid" || install_rc=$?
  cat "$LATEST_LOG"
  if [ "$install_rc" -ne 0 ]; then echo "test_latest: the install failed (rc $install_rc)"; [ "$rc" -eq 0 ] && rc=1; fi
  if [ "$rc" -eq 0 ]; then LATEST_PHASE=tests bash scripts/test_latest.sh || rc=$?; fi
fi
exit "$rc"
