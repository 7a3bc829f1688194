#!/usr/bin/env bash
# Sourced by scripts/install.sh and scripts/test_latest.sh. venv_install VENV [--upgrade] [--compile] ARGS... installs ARGS
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

# --compile writes the installed modules' .pyc files (uv --compile-bytecode; pip's default): worth it where many
# Python processes start (the test suite), as PYTHONDONTWRITEBYTECODE=1 (set on some machines, this project's CI
# among them) makes every process recompile each module it imports (~4 s per `train` start here); without it none.
venv_install() {
  local venv="$1"; shift
  local -a uv_opts=() pip_opts=(--no-compile)
  while [ "$#" -gt 0 ]; do
    case "$1" in
      --upgrade) uv_opts+=(--upgrade); pip_opts+=(--upgrade --upgrade-strategy eager); shift;;
      --compile) uv_opts+=(--compile-bytecode); pip_opts=("${pip_opts[@]/--no-compile}"); shift;;
      *) break;;
    esac
  done
  if [ "${DUALFASHION_INSTALLER:-uv}" = uv ]; then
    if _uv_install "$venv" "${uv_opts[@]}" "$@"; then return 0; fi
    echo "venv_install: uv could not install '$*'; installing with pip instead (slower)" >&2
  elif [ "${DUALFASHION_INSTALLER}" != pip ]; then
    echo "venv_install: DUALFASHION_INSTALLER must be uv or pip, got '${DUALFASHION_INSTALLER}'" >&2; return 2
  fi
  local -a pip=("$venv/bin/pip" install -q --disable-pip-version-check)
  local o
  for o in "${pip_opts[@]}"; do [ -n "$o" ] && pip+=("$o"); done
  "${pip[@]}" "$@"
}
