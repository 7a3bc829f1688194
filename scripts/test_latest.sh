#!/usr/bin/env bash
# Tests setup.py's bounds: a second venv (.venv-latest or $VENV_LATEST) gets the NEWEST versions setup.py allows
# (no constraints.txt; torch==2.13.0 first, as any other torch pulls a multi-GB CUDA build), then runs the
# tokenizer tests and the fast demo test in it. Reuses the venv and upgrades it on later runs.
# Usage: bash scripts/test_latest.sh [extra pytest args]
# LATEST_PHASE=install | tests runs one half (scripts/test.sh installs while the pinned suite runs); default both.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_LATEST="${VENV_LATEST:-$PWD/.venv-latest}"
PY="${PYTHON:-python3}"
PHASE="${LATEST_PHASE:-all}"
case "$PHASE" in all|install|tests) ;; *) echo "LATEST_PHASE: expected all, install or tests, got '$PHASE'" >&2; exit 2;; esac
if [ "$PHASE" != tests ]; then
  TORCH_PIN="$(mktemp)"
  trap 'rm -f "$TORCH_PIN"' EXIT
  echo "torch==2.13.0" > "$TORCH_PIN"
  t0=$SECONDS
  if [ ! -x "$VENV_LATEST/bin/python" ]; then "$PY" -m venv "$VENV_LATEST"; fi
  source scripts/venv_install.sh  # uv, or pip (DUALFASHION_INSTALLER=pip or when uv fails)
  venv_install "$VENV_LATEST" -c "$TORCH_PIN" torch==2.13.0
  venv_install "$VENV_LATEST" --upgrade -c "$TORCH_PIN" -e ".[test]"  # every dependency to its newest allowed
  "$VENV_LATEST/bin/python" - <<'PYEOF'
from importlib import metadata
print("[test_latest] " + ", ".join(f"{p} {metadata.version(p)}" for p in
      ("transformers", "tokenizers", "sentencepiece", "jax", "flax", "optax", "orbax-checkpoint", "grain", "numpy")))
PYEOF
  VENV="$VENV_LATEST" bash scripts/test_material.sh metrics  # the fast demo's real-weight FID / LPIPS
  echo "[test_latest] install: $((SECONDS - t0)) s"
fi
[ "$PHASE" = install ] && exit 0
if [ ! -x "$VENV_LATEST/bin/python" ]; then echo "test_latest: no venv at $VENV_LATEST (run LATEST_PHASE=install)" >&2; exit 1; fi
t1=$SECONDS
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# XLA as a user has it (tests/conftest.py: 1 device, LLVM -O2, default matmul precision), the settings of the
# pinned suite's fresh-machine demo test, which copied its compiled programs into the suite's cache: the fast demo
# below loads them (these tests took 163-204 s compiling everything themselves)
export DUALFASHION_TEST_XLA=user
set +e
# the fast demo end to end (the fresh-machine / rerun / ledger tests are version-independent and run in the pinned suite)
"$VENV_LATEST/bin/python" -m pytest -q -rs tests/test_tokenizer.py tests/test_demo.py \
    -k "not empty_home and not rerun and not redone and not other_plan" "$@"
rc=$?
set -e
echo "[test_latest] tests: $((SECONDS - t1)) s (rc $rc)"
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests"; exit 1; fi
exit "$rc"
