#!/usr/bin/env bash
# Multi-node GPU under SLURM: one process per node (all local GPUs), coordinator = first node of the job.
# Submit:   sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 launch/gpu_slurm.sh --config C --workdir W
# Generation (PFITB/GOR rows dealt over the nodes; --out must be shared):
#   sbatch ... launch/gpu_slurm.sh --generate -- --task pfitb --checkpoint W --out /shared/results/pfitb
# Dry run (no SLURM needed; simulates a job):
#   launch/gpu_slurm.sh --dry-run --nodes node[01-04] --config C --workdir W
# --dcn-data N: hybrid mesh, the `data` axis across N nodes and fsdp/tensor inside each (config.mesh.dcn_data).
# Each task exports JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID, which
# dualfashion_jax.training.distributed reads before jax.distributed.initialize().
#SBATCH --job-name=dualfashion
#SBATCH --ntasks-per-node=1
#SBATCH --exclusive
set -euo pipefail
source "$(dirname "$0")/common.sh"
DCN_DATA="" MODE="train" CONFIG="" WORKDIR="" PRESET="h100" PORT="${JAX_COORDINATOR_PORT:-12345}" NODES="${SLURM_JOB_NODELIST:-}" EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG="$2"; shift 2 ;;
    --workdir) WORKDIR="$2"; shift 2 ;;
    --preset) PRESET="$2"; shift 2 ;;
    --port) PORT="$2"; shift 2 ;;
    --nodes) NODES="$2"; shift 2 ;;
    --generate) MODE="generate"; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    --dcn-data) DCN_DATA="$2"; shift 2 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown flag $1 (see the header of $0)" ;;
  esac
done
if [ "$MODE" = train ]; then
  [ -n "$CONFIG" ] || die "--config is required"
  [ -n "$WORKDIR" ] || die "--workdir is required"
  CMD=(dualfashion-jax train --config "$CONFIG" --workdir "$WORKDIR")
  [ -n "$DCN_DATA" ] && CMD+=("--config.mesh.dcn_data=$DCN_DATA")
  CMD+=("${EXTRA[@]}")
else
  [ ${#EXTRA[@]} -gt 0 ] || die "--generate needs the generate flags after -- (e.g. -- --task pfitb --checkpoint W --out O)"
  CMD=(dualfashion-jax generate "${EXTRA[@]}")
fi
[ -n "$NODES" ] || die "not inside a SLURM allocation (SLURM_JOB_NODELIST unset) and no --nodes given"
load_preset "$PRESET"

# Expand a SLURM nodelist: scontrol when available, else a small expander for name[01-04,07] forms.
expand_nodes() {
  if command -v scontrol >/dev/null 2>&1 && [ "$DRY_RUN" = 0 ]; then scontrol show hostnames "$1"; return; fi
  python3 - "$1" <<'PY'
import re, sys
out = []
for part in re.findall(r"[^,\[]+(?:\[[^\]]*\])?", sys.argv[1]):
    m = re.fullmatch(r"(.*)\[(.*)\]", part)
    if not m:
        out.append(part); continue
    for r in m.group(2).split(","):
        a, _, b = r.partition("-")
        for i in range(int(a), int(b or a) + 1):
            out.append(f"{m.group(1)}{i:0{len(a)}d}")
print("\n".join(out))
PY
}
mapfile -t HOSTS < <(expand_nodes "$NODES")
N=${#HOSTS[@]}
COORD="${HOSTS[0]}:$PORT"
if [ "$DRY_RUN" = 1 ]; then
  echo "# $N node(s); coordinator $COORD; preset $PRESET: $PRESET_EXPORTS"
  for i in "${!HOSTS[@]}"; do
    printf '# on %s:\n' "${HOSTS[$i]}"
    run_or_print env JAX_COORDINATOR_ADDRESS="$COORD" JAX_NUM_PROCESSES="$N" JAX_PROCESS_ID="$i" "${CMD[@]}"
  done
  exit 0
fi
export JAX_COORDINATOR_ADDRESS="$COORD" JAX_NUM_PROCESSES="$N"
# srun starts one task per node; each reads its rank from SLURM_PROCID.
srun --ntasks="$N" --ntasks-per-node=1 bash -c 'export JAX_PROCESS_ID=$SLURM_PROCID; exec "$@"' _ "${CMD[@]}"
