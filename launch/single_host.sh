#!/usr/bin/env bash
# Single host (one GPU box, one TPU VM, or CPU): runs `dualfashion-jax train` with an XLA preset.
#   launch/single_host.sh --config configs/stage1.py:sd3_medium --workdir /ckpt/s1 [--preset h100|v5p|v6e|cpu]
#                         [--dry-run] [-- extra train flags]
set -euo pipefail
source "$(dirname "$0")/common.sh"
CONFIG="" WORKDIR="" PRESET="cpu" EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --preset) PRESET="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown flag $1 (see the header of $0)" ;;
  esac
done
[ -n "$CONFIG" ] || die "--config is required"
[ -n "$WORKDIR" ] || die "--workdir is required"
load_preset "$PRESET"
[ "$DRY_RUN" = 1 ] && echo "# preset $PRESET: $PRESET_EXPORTS"
run_or_print dualfashion-jax train --config "$CONFIG" --workdir "$WORKDIR" "${EXTRA[@]}"
