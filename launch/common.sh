# Shared by the launchers: flag parsing helpers, preset loading and dry-run execution.
# `run_or_print CMD...` prints the exact command (shell-quoted) under --dry-run, else runs it.

DRY_RUN=0

die() { echo "error: $*" >&2; exit 2; }

run_or_print() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '%q ' "$@"; printf '\n'
  else
    "$@"
  fi
}

# load_preset NAME -> exports the variables of launch/xla_flags/NAME.env, and prints them as `export` lines.
load_preset() {
  local f
  f="$(dirname "${BASH_SOURCE[0]}")/xla_flags/$1.env"
  [ -f "$f" ] || die "unknown XLA preset '$1' (have: $(cd "$(dirname "$f")" && ls *.env | sed 's/\.env//' | tr '\n' ' '))"
  set -a; # shellcheck disable=SC1090
  source "$f"; set +a
  PRESET_EXPORTS="$(grep -v '^#' "$f" | grep '=' | sed 's/^/export /' | tr '\n' ';')"
}
