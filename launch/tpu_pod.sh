#!/usr/bin/env bash
# TPU pod slice: runs the SAME command on every host with `gcloud compute tpus tpu-vm ssh --worker=all`.
# Each host calls jax.distributed.initialize() (TPU metadata gives coordinator/process ids automatically).
#   launch/tpu_pod.sh --tpu NAME --zone ZONE [--project P] --config configs/stage1.py:sd3_medium \
#                     --workdir gs://bucket/run [--preset v5p|v6e] [--repo-dir ~/dualfashion_jax] [--setup] [--dry-run]
#   launch/tpu_pod.sh --tpu NAME --zone ZONE --generate -- --task pfitb --checkpoint gs://b/run --out /shared/pfitb
#     (generation: rows dealt over the hosts; --out must be a folder every host writes to)
# --slices N: multi-slice hybrid mesh, the `data` axis across N slices, fsdp/tensor inside (config.mesh.dcn_data).
# --setup first installs the project on every worker (git checkout must already be there: rsync/clone it).
set -euo pipefail
source "$(dirname "$0")/common.sh"
SLICES="" MODE="train" TPU="" ZONE="" PROJECT="" CONFIG="" WORKDIR="" PRESET="v5p" REPO_DIR="~/dualfashion_jax" SETUP=0 EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --tpu) TPU="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --preset) PRESET="$2"; shift 2 ;;
    --repo-dir) REPO_DIR="$2"; shift 2 ;;
    --setup) SETUP=1; shift ;;
    --generate) MODE="generate"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --slices) SLICES="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown flag $1 (see the header of $0)" ;;
  esac
done
REQUIRED=(TPU ZONE); [ "$MODE" = train ] && REQUIRED+=(CONFIG WORKDIR)
for v in "${REQUIRED[@]}"; do [ -n "${!v}" ] || die "--$(echo "$v" | tr 'A-Z' 'a-z') is required"; done
[ "$MODE" = train ] || [ ${#EXTRA[@]} -gt 0 ] || die "--generate needs the generate flags after --"
load_preset "$PRESET"
GCLOUD=(gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all)
[ -n "$PROJECT" ] && GCLOUD+=(--project "$PROJECT")
if [ "$SETUP" = 1 ]; then
  run_or_print "${GCLOUD[@]}" --command "cd $REPO_DIR && python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e '.[tpu]'"
fi
REMOTE="cd $REPO_DIR && ${PRESET_EXPORTS} export DUALFASHION_DISTRIBUTED=1; .venv/bin/dualfashion-jax"
if [ "$MODE" = train ]; then REMOTE+=" train --config $CONFIG --workdir $WORKDIR"; else REMOTE+=" generate"; fi
[ "$MODE" = train ] && [ -n "$SLICES" ] && REMOTE+=" --config.mesh.dcn_data=$SLICES"
[ ${#EXTRA[@]} -gt 0 ] && REMOTE+=" ${EXTRA[*]}"
run_or_print "${GCLOUD[@]}" --command "$REMOTE"
