#!/usr/bin/env bash
# Sourced by scripts/install.sh and scripts/test_latest.sh. venv_install VENV [--upgrade] ARGS... installs ARGS
# (requirements, -e ".[extras]", -c FILE) into VENV with uv, pip-installed into the venv first (a fresh demo-mode
# install: its packages ~70 s with pip, ~11 s with uv here), or with pip when DUALFASHION_INSTALLER=pip or when uv fails.
# uv reads none of pip's configuration: scripts/pip_to_uv.py passes pip's find-links, index URLs and constraint
# files on, and --index-strategy unsafe-best-match picks across indexes as pip does.
UV_VERSION="0.13.8"

_uv_install() {
  local venv="$1"; shift
  if ! "$venv/bin/uv" --version 2>/dev/null | grep -q " $UV_VERSION"; then
    "$venv/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION" || return 1
  fi
  local pip_settings
  pip_settings="$("$venv/bin/python" "$(dirname "${BASH_SOURCE[0]}")/pip_to_uv.py")" || return 1
  local -a settings=()
  if [ -n "$pip_settings" ]; then mapfile -t settings <<< "$pip_settings"; fi
  "$venv/bin/uv" pip install -q --python "$venv/bin/python" --index-strategy unsafe-best-match \
    "${settings[@]}" "$@"
}

venv_install() {
  local venv="$1"; shift
  local -a upgrade=()
  if [ "${1:-}" = --upgrade ]; then upgrade=(--upgrade); shift; fi
  if [ "${DUALFASHION_INSTALLER:-uv}" = uv ]; then
    if _uv_install "$venv" "${upgrade[@]}" "$@"; then return 0; fi
    echo "venv_install: uv could not install '$*'; installing with pip instead (slower)" >&2
  elif [ "${DUALFASHION_INSTALLER}" != pip ]; then
    echo "venv_install: DUALFASHION_INSTALLER must be uv or pip, got '${DUALFASHION_INSTALLER}'" >&2; return 2
  fi
  local -a pip=("$venv/bin/pip" install -q --disable-pip-version-check --no-compile)
  if [ "${#upgrade[@]}" -gt 0 ]; then pip+=(--upgrade --upgrade-strategy eager); fi
  "${pip[@]}" "$@"
}
